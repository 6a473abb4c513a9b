"""The Gaussian-process surrogate of f1 (the adapter's loss under a configuration) used by the search (METHOD.md §6).

The GP's inputs are configurations as ``(..., N)`` option indices into :data:`~coa_lora.quant.space.ALL_OPTIONS` (one
per target matrix, stored as float64 because BoTorch models take floating inputs). An :class:`OptionEncoding` input
transform turns them into features, so the acquisition function, the deterministic bits model and the local search
all work on the same lattice of indices. With ~5N ≈ 1,050 inputs on SmolLM2 and tens of observations, the encoding
and kernel decide whether the GP learns anything; :data:`ENCODINGS` are the candidates and
:func:`compare_encodings` measures them by k-fold held-out predictive quality (the paper does not state a kernel).

- ``ordinal``: 5N normalised option ordinals, one RBF with a single lengthscale (the official code's choice).
- ``field``: the same features, one lengthscale per option field (b, b0, s, B0, B1) shared by all matrices.
- ``bits``: each matrix's bits per weight (N features, normalised), one RBF lengthscale.
- ``categorical``: the 5N ordinals as categories, BoTorch's CategoricalKernel (Hamming-type), one lengthscale.
- ``damage``: two features, the configuration's log total damage under the allocator's (Fisher-weighted) table and
  its average bits, one RBF lengthscale each: the GP learns how the adapter's loss follows the allocator's proxy,
  so a configuration the proxy calls worse than the allocator's answer at the same bits is predicted worse (needs
  the table: ``fit_surrogate(..., damage=table.values, numels=layout.numels)``).
"""
from __future__ import annotations

import math
import time

import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.kernels.categorical import CategoricalKernel
from botorch.models.transforms.input import InputTransform
from botorch.models.transforms.outcome import Standardize
from gpytorch.constraints import GreaterThan
from gpytorch.kernels import Kernel, RBFKernel, ScaleKernel
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.priors import LogNormalPrior

from coa_lora.quant.space import ALL_OPTIONS, FIELD_VALUES, MAX_BITS, MIN_BITS

ENCODINGS = ("ordinal", "field", "bits", "categorical", "damage")
# Chosen on real SmolLM2 search logs (bench/gp_encodings.py, 5 runs, 45 proposals): "damage" ranks the f1 of the
# next round's proposals best (mean Spearman 0.92 against 0.52-0.73) and has the least k-fold error (1.66 vs
# 1.96-2.11); "field" had won on the tiny model's synthetic objective, and came last on the real next-round test.
DEFAULT_ENCODING = "damage"
N_FIELDS = len(FIELD_VALUES)

#: ``(432, 5)`` float64: each option's field ordinals divided by (number of values - 1), in [0, 1].
OPTION_ORDINALS = torch.tensor([o.ordinals() for o in ALL_OPTIONS], dtype=torch.float64) / torch.tensor(
    [len(v) - 1 for v in FIELD_VALUES.values()], dtype=torch.float64
)
#: ``(432,)`` float64 bits per weight of each option.
OPTION_BITS = torch.tensor([o.bits_per_weight for o in ALL_OPTIONS], dtype=torch.float64)


def _dim_scaled_prior(dims: int) -> LogNormalPrior:
    """BoTorch's dimension-scaled lengthscale prior (Hvarfner et al. 2024): typical lengthscale grows as sqrt(d), so a
    1,000-dimensional input does not start with every point uncorrelated with every other."""
    return LogNormalPrior(loc=math.sqrt(2) + 0.5 * math.log(dims), scale=math.sqrt(3))


class OptionEncoding(InputTransform):
    """Option indices → features by table lookup: ``(..., n, N)`` → ``(..., n, N·k)`` for a ``(432, k)`` table.

    Not learnable; applied in training, evaluation and fantasies alike, so the model's inputs stay option indices.
    """

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", torch.as_tensor(table, dtype=torch.float64))
        self.transform_on_train = True
        self.transform_on_eval = True
        self.transform_on_fantasize = True

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        return self.table.to(X)[X.round().long()].flatten(-2)


class FieldRBFKernel(Kernel):
    """RBF over target-major ``(N·F)`` features whose lengthscale depends only on the field (F lengthscales).

    ``k(x, x') = exp(-½ Σ_i Σ_f (x_if − x'_if)² / ℓ_f²)``: the data decide how much, say, the NF bits matter
    relative to the scale dtype, with 5 hyperparameters however many matrices the model has.
    """

    has_lengthscale = True

    def __init__(self, n_fields: int, **kwargs) -> None:
        super().__init__(ard_num_dims=n_fields, **kwargs)
        self.n_fields = n_fields

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, **params) -> torch.Tensor:
        ls = self.lengthscale.unsqueeze(-2)  # batch x 1 x 1 x F, broadcasts over points and matrices
        x1_ = (x1.unflatten(-1, (-1, self.n_fields)) / ls).flatten(-2)
        x2_ = (x2.unflatten(-1, (-1, self.n_fields)) / ls).flatten(-2)
        return self.covar_dist(x1_, x2_, square_dist=True, diag=diag).div(-2).exp()


class DamageEncoding(InputTransform):
    """Option indices → ``(log Σ_i D[i, x_i], average bits)``: ``(..., n, N)`` → ``(..., n, 2)``, both scaled to about
    [0, 1] over the table's range (log damage between the least and the most damaging uniform configuration)."""

    def __init__(self, damage: torch.Tensor, numels: torch.Tensor) -> None:
        super().__init__()
        damage = torch.as_tensor(damage, dtype=torch.float64).clamp_min(1e-300)
        w = torch.as_tensor(numels, dtype=torch.float64)
        self.register_buffer("damage", damage)
        self.register_buffer("weights", w / w.sum())
        uniform = damage.sum(0).log()
        self.lo, self.span = float(uniform.min()), float(uniform.max() - uniform.min()) or 1.0
        self.transform_on_train = self.transform_on_eval = self.transform_on_fantasize = True

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        idx = X.round().long()
        total = self.damage.to(X.device).gather(1, idx.reshape(-1, idx.shape[-1]).T).T.reshape(idx.shape).sum(-1)
        bits = (OPTION_BITS.to(X)[idx] * self.weights.to(X)).sum(-1)
        return torch.stack([(total.log() - self.lo) / self.span, (bits - MIN_BITS) / (MAX_BITS - MIN_BITS)], -1)


def encoding_transform(encoding: str, damage: torch.Tensor | None = None,
                       numels: torch.Tensor | None = None) -> InputTransform:
    """The input transform of ``encoding``."""
    if encoding == "damage":
        if damage is None or numels is None:
            raise ValueError("The 'damage' GP encoding needs the damage table and the matrices' sizes (damage=, "
                             "numels=); the search passes them when it has a workbench.")
        return DamageEncoding(damage, numels)
    if encoding == "bits":
        return OptionEncoding(((OPTION_BITS - MIN_BITS) / (MAX_BITS - MIN_BITS)).unsqueeze(-1))
    if encoding in ("ordinal", "field", "categorical"):
        return OptionEncoding(OPTION_ORDINALS)
    raise ValueError(f"Unknown GP encoding {encoding!r}; choose one of {ENCODINGS}.")


def encoding_kernel(encoding: str, n_targets: int) -> Kernel:
    """A fresh kernel for ``encoding`` on a model with ``n_targets`` matrices (never shared between models)."""
    if encoding == "damage":
        return ScaleKernel(RBFKernel(ard_num_dims=2))
    dims = n_targets * (1 if encoding == "bits" else N_FIELDS)
    if encoding in ("ordinal", "bits"):
        prior = _dim_scaled_prior(dims)
        base = RBFKernel(lengthscale_prior=prior,
                         lengthscale_constraint=GreaterThan(2.5e-2, transform=None, initial_value=prior.mode))
    elif encoding == "field":
        prior = _dim_scaled_prior(dims)
        base = FieldRBFKernel(N_FIELDS, lengthscale_prior=prior,
                              lengthscale_constraint=GreaterThan(2.5e-2, transform=None, initial_value=prior.mode))
    elif encoding == "categorical":
        base = CategoricalKernel()
    else:
        raise ValueError(f"Unknown GP encoding {encoding!r}; choose one of {ENCODINGS}.")
    return ScaleKernel(base)


def fit_surrogate(X: torch.Tensor, y: torch.Tensor, encoding: str = DEFAULT_ENCODING, seed: int = 0,
                  damage: torch.Tensor | None = None, numels: torch.Tensor | None = None) -> SingleTaskGP:
    """Fit a GP to observations ``y`` of configurations ``X``.

    Args:
        X: ``(n, N)`` option indices (any numeric dtype; converted to float64).
        y: ``(n,)`` objective values (the search passes −loss, the maximisation form).
        encoding: one of :data:`ENCODINGS`.
        seed: seeds the fit's random restarts, inside a forked RNG so the caller's global state is untouched.
        damage, numels: ``(N, 432)`` damage table and ``(N,)`` matrix sizes (the ``damage`` encoding only).

    Returns:
        A fitted ``SingleTaskGP`` in eval mode; its posterior is in the units of ``y``.
    """
    X = torch.as_tensor(X).to(torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1, 1)
    if X.ndim != 2 or X.shape[0] != y.shape[0] or X.shape[0] < 2:
        raise ValueError(f"A GP needs at least 2 observations as (n, N) inputs and n values, got {tuple(X.shape)} "
                         f"and {y.shape[0]}.")
    gp = SingleTaskGP(X, y, covar_module=encoding_kernel(encoding, X.shape[-1]),
                      input_transform=encoding_transform(encoding, damage, numels),
                      outcome_transform=Standardize(m=1))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
    return gp.eval()


def hyperparameters(gp: SingleTaskGP) -> dict:
    """The fitted GP's hyperparameters as plain floats (outcome-standardised units): ``outputscale``, ``noise``,
    ``mean`` and ``lengthscale`` (a list: one per field for ``field``, one for ``ordinal``/``bits``)."""
    kernel = gp.covar_module
    base = kernel.base_kernel
    with torch.no_grad():
        return _hyperparameters(gp, kernel, base)


def _hyperparameters(gp: SingleTaskGP, kernel, base) -> dict:
    out = {"outputscale": float(kernel.outputscale), "noise": float(gp.likelihood.noise.reshape(-1)[0]),
           "mean": float(gp.mean_module.constant)}
    if getattr(base, "lengthscale", None) is not None:
        out["lengthscale"] = [float(v) for v in base.lengthscale.reshape(-1)]
    return out


def _ranks(v: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(v).scatter_(0, torch.argsort(v), torch.arange(len(v), dtype=v.dtype))


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-300))


def cross_validate(X: torch.Tensor, y: torch.Tensor, encoding: str, n_folds: int = 5, seed: int = 0,
                   damage: torch.Tensor | None = None, numels: torch.Tensor | None = None) -> dict:
    """K-fold held-out predictive quality of ``encoding`` on observations ``(X, y)``.

    Args:
        X: ``(n, N)`` option indices; y: ``(n,)`` values.

    Returns:
        ``{"encoding", "rmse", "nlpd", "spearman", "seconds"}``: root-mean-square error of the posterior mean (units of
        ``y``), mean negative log predictive density (with observation noise; lower is better), and Spearman rank
        correlation between prediction and truth over all held-out points (what the acquisition's ranking needs).
    """
    X = torch.as_tensor(X).to(torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    g = torch.Generator().manual_seed(seed)
    folds = torch.randperm(len(y), generator=g) % n_folds
    mean, var = torch.empty_like(y), torch.empty_like(y)
    start = time.perf_counter()
    for k in range(n_folds):
        test = folds == k
        gp = fit_surrogate(X[~test], y[~test], encoding, seed=seed + k, damage=damage, numels=numels)
        with torch.no_grad():
            post = gp.posterior(X[test], observation_noise=True)
            mean[test], var[test] = post.mean.reshape(-1), post.variance.reshape(-1)
    nlpd = 0.5 * (torch.log(2 * math.pi * var) + (y - mean) ** 2 / var)
    return {
        "encoding": encoding,
        "rmse": float(((y - mean) ** 2).mean().sqrt()),
        "nlpd": float(nlpd.mean()),
        "spearman": _spearman(mean, y),
        "seconds": time.perf_counter() - start,
    }


def compare_encodings(
    X: torch.Tensor, y: torch.Tensor, encodings: tuple[str, ...] = ENCODINGS, n_folds: int = 5, seed: int = 0,
    damage: torch.Tensor | None = None, numels: torch.Tensor | None = None,
) -> list[dict]:
    """:func:`cross_validate` for each encoding, same folds; rows ready for ``pandas.DataFrame`` (``damage`` is
    skipped without a table)."""
    return [cross_validate(X, y, e, n_folds, seed, damage, numels) for e in encodings
            if e != "damage" or damage is not None]
