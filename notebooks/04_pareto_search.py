# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4 · Pareto search: which configurations the adapter trains on
#
# One CoA-LoRA adapter serves every configuration, but it only learns from the configurations it trains on. Which
# ones? The allocator's configurations at a few budgets are a start; the *search* improves on them between training
# epochs. It treats each configuration as a point with two objectives, f1 = the adapter's loss under it on a fixed
# held-out probe set (measured) and f2 = its average bits (computed), and looks for configurations that push the
# (bits, loss) front down: a Gaussian process predicts f1 of configurations never tried, expected hypervolume
# improvement (EHVI) picks the most promising, they are measured for real, and a segment-wise Pareto selection keeps
# the best configurations of every bit range as the next training set.
#
# This notebook replays the search of the shipped reference run (`data/reference/coa_search`, on SmolLM2; its steps,
# rounds and segments are read from its run.json below) round by round from its log, shows what its Gaussian process
# predicted (logged with each proposal, or refitted from the log for runs that predate that), and recomputes its
# hypervolumes. It trains nothing: everything comes from the run's tables, plus SmolLM2's damage table for the GP's
# encoding.
#
# **Run time** with the defaults: about 30 s on 2 CPU cores (10 s of it loading SmolLM2).

# %% tags=["parameters"]
# Parameters. COMPARE_ENCODINGS cross-validates the five GP encodings on the run's pool (about 30 s more).
RUN = "data/reference/coa_search"  # relative to the repository root, or any run folder trained with --search
REPLAY_ROUND = 1  # the round whose acquisition is replayed in section 2
EHVI_SAMPLES = 64  # Monte-Carlo samples of the GP posterior per candidate
COMPARE_ENCODINGS = False

# %%
from pathlib import Path

import pandas as pd
import torch

from coa_lora import Workbench, plots
from coa_lora.search import non_dominated
from coa_lora.search import open_run
from coa_lora.quant import FIELD_VALUES
from coa_lora.search import DEFAULT_ENCODING, compare_encodings, encoding_transform, fit_surrogate

ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "data" / "reference").is_dir())
wb = Workbench.load("smollm2")
damage = wb.damage_table().for_layout(wb.layout).values  # (N, 432): each matrix's damage under each option
numels = wb.layout.numels
view = open_run(ROOT / RUN if not Path(RUN).is_absolute() else RUN, weight_hash=wb.weight_hash)
assert view.has_search, f"{RUN} has no search log: train it with --search."
rounds, modes = view.round_numbers(), view.round_modes()
hyper = view.info.hyper


def run_encoding() -> str:
    """The GP encoding the run searched with: run.json's, else told by how many lengthscales its GP logged, else
    "field" (runs logged before the GP's hyperparameters were, when "field" was the default)."""
    if "encoding" in hyper:
        return str(hyper["encoding"])
    gp_log = view.gp_hyperparameters()
    if gp_log.empty or "lengthscale" not in gp_log:
        return "field"
    return {2: "damage", len(FIELD_VALUES): "field"}.get(len(gp_log["lengthscale"].iloc[0]), DEFAULT_ENCODING)


ENCODING = run_encoding()
print(f"{view.label}: {view.steps} steps, {hyper.get('rounds', '?')} search rounds of {hyper.get('proposals', '?')} "
      f"proposals, {view.segments} bit segments, GP encoding {ENCODING!r} (today's default: {DEFAULT_ENCODING!r})")
print(f"rounds logged {rounds} ({', '.join(modes.get(r, '') for r in rounds)}), {len(view.pool)} configurations "
      f"evaluated")
known = {"id", "round", "source", "avg_bits", "f1", "f1_round", "options"}
extra = sorted(set(view.pool.columns) - known)
print("the pool also logs:", extra or "nothing more")
view.rounds

# %% [markdown]
# The run's log is three tables: `pool` (one row per configuration: its options, bits and latest f1; a search
# proposal also what the GP predicted for it, which kind of candidate it came from and how far it lies from the
# pool), `history` (one row per configuration per round, as selected after that round) and `rounds` (hypervolumes,
# timings and, for search rounds, the GP's hyperparameters). A run keeps its hypervolume in one fixed, normalised
# (bits, loss) plane, set from the initial configurations and stored in run.json, so numbers are comparable across
# rounds:

# %%
plane = view.plane
print(f"bits {plane.bits_range[0]:.3f}–{plane.bits_range[1]:.3f} and loss {plane.loss_range[0]:.3f}–"
      f"{plane.loss_range[1]:.3f} map to [0, 1]; the reference point is ({plane.reference}, {plane.reference}); "
      f"{view.segments} bit segments")


def at_round(r: int) -> pd.DataFrame:
    """The run as it stood after round r, with each configuration's options and the round it was first measured."""
    first = view.pool[["id", "round", "options"]].rename(columns={"round": "first_round"})
    return view.history_at(r).merge(first, on="id")


plots.search_figure(view.history_at(0), view.segment_edges(), plots.preset_bits(), f"round 0 ({modes[0]})").show()

# %% [markdown]
# **Notice:** round 0 is the allocator's configurations at evenly spaced budgets, each alone in its bit segment (the
# faint dotted lines; with fewer segments than configurations, two may share one and only the better survives).
# Is the lowest-bit configuration's loss far above the rest? Near 2.5 bits the quantization damage can be more than
# a short training run repairs. Newer runs cap the plane's loss axis at twice the best initial loss (the square of
# the best perplexity), so one collapsed configuration does not squeeze every difference that matters into the
# bottom of the plane; the range printed above is this run's.
#
# ## 1. The Gaussian process and its encoding
#
# The GP models f1 as a function of a configuration: N option indices, one per target matrix (210 on SmolLM2). An
# *encoding* turns a configuration into the numbers the kernel compares. The default, `damage`, gives it just two:
# the logarithm of the configuration's total damage under the allocator's (Fisher-weighted) damage table, Σ_i
# D[i, option_i], and its average bits, each scaled to about [0, 1], with one RBF lengthscale each. The GP then
# learns how the adapter's loss follows the allocator's own proxy: a configuration the proxy calls worse than the
# allocator's answer at the same bits is predicted worse.
#
# Why not describe every option? The per-option encodings (`ordinal`, `field`, `categorical`: five field ordinals
# per matrix) have 5N = 1,050 features, and a search has 10–25 measured points to fit them on. The choice was made on
# real SmolLM2 search logs (`bench/gp_encodings.py`): fitted on the pool before a round, `damage` ranked that round's
# proposals best (mean Spearman 0.92, the others 0.52–0.73) and had the least k-fold error. Here are the two features
# of every configuration the run measured, against its f1 after the last round (one adapter, so comparable):

# %%
damage_transform = encoding_transform("damage", damage=damage, numels=numels)
final = at_round(rounds[-1])
with torch.no_grad():
    features = damage_transform.transform(torch.tensor(final["options"].tolist(), dtype=torch.float64))
encoded = final[["id", "source", "avg_bits", "f1"]].assign(
    target=[f"configuration {i}" for i in final["id"]], log_damage=features[:, 0].numpy(), bits=features[:, 1].numpy())
plots.target_scatter(encoded, "log_damage", "f1", color="source",
                     title="What the damage encoding sees: f1 after the last round against scaled log damage").show()
encoded.drop(columns="target").sort_values("avg_bits").head(8)

# %% [markdown]
# Round k's GP was fitted on every configuration evaluated before it, at the f1 re-measured (or, for configurations
# outside the training set, estimated) for that round: the adapter changed since they were first measured. Each
# proposal's log carries what that GP predicted for it before it was measured; for a run logged before proposals
# carried their prediction, the GP is refitted from the log instead. The refit is also what section 2 asks:

# %%
def replay(r: int):
    """Round r's GP (fitted on what the search knew, with the run's encoding) and the configurations round r
    measured."""
    state = at_round(r)
    known, new = state[state["first_round"] < r], state[state["first_round"] == r]
    gp = fit_surrogate(torch.tensor(known["options"].tolist()), -torch.tensor(known["f1"].tolist()), ENCODING,
                       damage=damage, numels=numels)
    return gp, known, new


def predict(gp, options) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted f1 (the GP models −f1) and its standard deviation for a list of option-index lists."""
    with torch.no_grad():
        posterior = gp.posterior(torch.tensor(list(options), dtype=torch.float64))
    return -posterior.mean.reshape(-1), posterior.variance.reshape(-1).sqrt()


search_rounds = [r for r in rounds if modes.get(r) == "search"]
rows, fits = [], {}
for r in search_rounds:
    gp, known, new = replay(r)
    fits[r] = (gp, known)
    mean, sd = predict(gp, new["options"])
    rows.append(pd.DataFrame({"round": r, "id": new["id"].values, "avg_bits": new["avg_bits"].values,
                              "measured": new["f1"].values, "predicted": mean.numpy(), "predicted_sd": sd.numpy()}))
refit = pd.concat(rows, ignore_index=True)
proposals = view.proposals()
if not proposals.empty:
    predictions, source = proposals, "as logged when proposed"
else:
    predictions, source = refit, f"refitted from the log ({ENCODING} encoding)"
plots.prediction_figure(predictions, color="round",
                        title=f"The GP's predictions for each round's proposals, {source}, against their "
                              f"measured loss").show()
predictions.drop(columns=["options"], errors="ignore")

# %% [markdown]
# **Notice:** how close the points lie to the dashed line, and how wide the ±2 sd bars are. With ten to twenty
# observations the GP is uncertain about anything new, which is what lets EHVI explore; what the acquisition needs
# most is that its mean *ranks* candidates well. With the `damage` encoding the GP has two lengthscales to learn,
# one for log damage and one for bits (a short lengthscale: f1 changes quickly along that feature); the run logs
# them per round when it logged them at all:

# %%
gp_log = view.gp_hyperparameters()
if not gp_log.empty:
    display(gp_log)
else:
    kernel = fits[search_rounds[-1]][0].covar_module.base_kernel
    lengthscale = kernel.lengthscale.detach().reshape(-1).numpy()
    names = {"damage": ["log damage", "bits"], "field": list(FIELD_VALUES)}.get(ENCODING, range(len(lengthscale)))
    display(pd.Series(lengthscale, index=list(names)[: len(lengthscale)], name=f"refitted {ENCODING} lengthscale"))
if COMPARE_ENCODINGS:
    display(pd.DataFrame(compare_encodings(torch.tensor(final["options"].tolist()), -torch.tensor(final["f1"].tolist()),
                                           damage=damage, numels=numels)))

# %% [markdown]
# ## 2. Expected hypervolume improvement
#
# The *hypervolume* of a set of configurations is the area of the (bits, loss) plane they dominate, up to the
# reference point: more area means a better front. A candidate's hypervolume improvement is the area it would add.
# Its f1 is unknown, but the GP gives a distribution for it, so EHVI averages the improvement over that distribution.
# Below, the average is taken by Monte Carlo with the run's own plane and `plane.hypervolume`. (The search itself
# maximises BoTorch's `qLogEHVI`, the logarithm of a smoothed version of the same quantity, against the same plane's
# reference corner: a configuration predicted beyond the plane's loss cap promises no area, exactly as it would add
# none to the hypervolume the run reports.)

# %%
def ehvi(front_bits, front_loss, bits: float, mean: float, sd: float, generator) -> float:
    """Monte-Carlo EHVI of one candidate against a front, in the run's plane."""
    base = plane.hypervolume(front_bits, front_loss)
    samples = mean + sd * torch.randn(EHVI_SAMPLES, generator=generator, dtype=torch.float64)
    gains = [plane.hypervolume(front_bits + [bits], front_loss + [float(s)]) - base for s in samples]
    return sum(gains) / len(gains)


gp, known = fits[REPLAY_ROUND]
later = view.pool[view.pool["round"] >= REPLAY_ROUND]  # the round's proposals and every later one, as candidates
mean, sd = predict(gp, later["options"])
measured = {row.id: row.f1 for row in at_round(rounds[-1]).itertuples()}
g = torch.Generator().manual_seed(0)
candidates = pd.DataFrame({
    "id": later["id"].values, "avg_bits": later["avg_bits"].values, "predicted": mean.numpy(),
    "predicted_sd": sd.numpy(), "proposed_in": later["round"].values,
    "ehvi": [ehvi(known["avg_bits"].tolist(), known["f1"].tolist(), b, float(m), float(s), g)
             for b, m, s in zip(later["avg_bits"], mean, sd)],
    "measured": [measured[i] for i in later["id"]]})
figure = plots.ehvi_figure(known[["avg_bits", "f1"]], candidates, title=f"Round {REPLAY_ROUND}: the front the GP "
                           f"saw and the later proposals, coloured by EHVI")
# Zoom on the candidates (double-click the plot for the whole plane).
figure.update_xaxes(range=[candidates["avg_bits"].min() - 0.6, candidates["avg_bits"].max() + 0.6])
figure.update_yaxes(range=[min(candidates["measured"].min(), known["f1"].min()) - 0.5,
                           (candidates["predicted"] + 2 * candidates["predicted_sd"]).max() + 0.2])
figure.show()
candidates.sort_values("ehvi", ascending=False).head(8)

# %% [markdown]
# **Notice:** EHVI is high where the predicted loss lies below the front at that bit width *or* the uncertainty is
# large enough that it might; a candidate predicted above the front still has some EHVI from the lower tail of its
# distribution. The GP standardises f1 over all its observations, so one collapsed configuration with a far higher
# loss widens every ±2 sd bar. The red crosses are what the candidates measured (at the end of the run, with a
# better-trained adapter, so mostly lower than predicted).
#
# ## 3. Segments: replaying the rounds
#
# The search's candidates span the whole bit range: the allocator's configurations on a grid every 0.05 bits,
# perturbations of them, recombinations of pool configurations and the training-set members themselves. It sends its
# proposals to distinct bit segments (empty segments first), improves each by a local search inside its segment, and
# keeps them inside the plane's bit range. After each round the pool is split into the run's segments (equal bit
# ranges) and each range keeps its own non-dominated configurations. Keeping every range's front, not only the global
# front, keeps the adapter training at every budget. Here is every round as the run logged it:

# %% tags=["key-figure"]
for r in rounds:
    history = view.history_at(r)
    plots.search_figure(history, view.segment_edges(), plots.preset_bits(), f"round {r} ({modes.get(r, '')})").show()

# %%
kinds = dict(zip(proposals["id"], proposals["candidate"])) if "candidate" in proposals else {}
summary = []
for r in rounds:
    state = at_round(r)
    new = state[state["first_round"] == r]
    row = {"round": r, "mode": modes.get(r, ""), "new configurations": len(new),
           "their segments": sorted(set(new["segment"])), "training set": int(state["selected"].sum()),
           "segments in training set": state.loc[state["selected"], "segment"].nunique()}
    if kinds:
        row["candidate kinds"] = sorted({kinds[i] for i in new["id"] if i in kinds})
    summary.append(row)
pd.DataFrame(summary)

# %% [markdown]
# **Notice:** where each round's new configurations land (their segments, in the table) and whether they join the
# training set: a proposal that beats its segment's front replaces configurations there, one that does not is kept
# in the pool (faded) for the GP but not trained on. Are the proposals spread over the bit range or bunched into a
# few segments? A search that bunches them improves one part of the front only.
#
# ## 4. Hypervolume history
#
# Each round's hypervolume of the training set, recomputed from the history with `plane.hypervolume`, must equal the
# logged value:

# %%
check = []
for r in rounds:
    h = view.history_at(r)
    chosen = h[h["selected"]]
    check.append({"round": r, "logged": float(view.rounds.set_index("round").loc[r, "hv_train"]),
                  "recomputed": plane.hypervolume(chosen["avg_bits"].tolist(), chosen["f1"].tolist())})
check = pd.DataFrame(check)
assert (check["logged"] - check["recomputed"]).abs().max() < 1e-9
if "hv_train_2.5" in view.rounds:  # newer runs: the training set restricted to >= 2.5 bits, too
    check = check.merge(view.rounds[["round", "hv_train_2.5"]], on="round")
plots.hypervolume_figure({view.label: view.rounds}).show()
check

# %% [markdown]
# **Notice:** the hypervolume changes for two reasons at once: the adapter keeps training (every configuration's
# loss falls, which the re-measured f1 shows) and the search adds configurations. The pool line equals the
# training-set line when every non-dominated configuration is also selected. The try-this below separates the two
# reasons.
#
# ## Try this
#
# How much of the final hypervolume is the search's doing? Guess the final training set's hypervolume *without* the
# configurations the search proposed (only the initial ones, at their final f1), as a fraction of the logged final
# value; then run the cell.

# %%
my_answer = None  # a fraction, e.g. 0.9

final = view.history_at(rounds[-1])
initial = final[final["source"] == "initial"]
front = initial[non_dominated(initial["avg_bits"].tolist(), initial["f1"].tolist()).numpy()]
without = plane.hypervolume(front["avg_bits"].tolist(), front["f1"].tolist())
logged = float(view.rounds.set_index("round").loc[rounds[-1], "hv_train"])
if my_answer is None:
    print("Write your guess into my_answer and run this cell again.")
else:
    print(f"Without the search's configurations: {without:.4f} = {without / logged:.3f} of the final {logged:.4f} "
          f"(your guess: {my_answer}; {'close' if abs(my_answer - without / logged) < 0.01 else 'not quite'}).")
