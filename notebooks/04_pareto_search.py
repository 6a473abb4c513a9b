# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
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
# This notebook replays the search of the shipped reference run (`data/reference/coa_search`: SmolLM2, 24 steps,
# 3 rounds) round by round from its log, refits its Gaussian process to see what it predicted, and recomputes its
# hypervolumes. It needs no model: everything comes from the run's tables.
#
# **Run time** with the defaults: about 20 s on 2 CPU cores.

# %% tags=["parameters"]
# Parameters. COMPARE_ENCODINGS cross-validates the four GP encodings on the run's pool (about 20 s more).
RUN = "data/reference/coa_search"  # relative to the repository root, or any run folder trained with --search
REPLAY_ROUND = 1  # the round whose acquisition is replayed in section 3
EHVI_SAMPLES = 64  # Monte-Carlo samples of the GP posterior per candidate
COMPARE_ENCODINGS = False

# %%
from pathlib import Path

import pandas as pd
import torch

from coa_lora import plots
from coa_lora.pareto import non_dominated
from coa_lora.run_view import open_run
from coa_lora.space import ALL_OPTIONS, FIELD_VALUES
from coa_lora.surrogate import DEFAULT_ENCODING, compare_encodings, encoding_transform, fit_surrogate

ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "data" / "reference").is_dir())
view = open_run(ROOT / RUN if not Path(RUN).is_absolute() else RUN)  # the tables the explorer reads, as frames
assert view.has_search, f"{RUN} has no search log: train it with --search."
rounds, modes = view.round_numbers(), view.round_modes()
print(f"{view.label}: {view.steps} steps, rounds {rounds} ({', '.join(modes[r] for r in rounds)}), "
      f"{len(view.pool)} configurations evaluated")
known = {"id", "round", "source", "avg_bits", "f1", "f1_round", "options"}
extra = sorted(set(view.pool.columns) - known)
print("the pool also logs:", extra or "nothing more")
view.rounds

# %% [markdown]
# The run's log is three tables: `pool` (one row per configuration: its options, bits and latest f1), `history` (one
# row per configuration per round, as selected after that round) and `rounds` (hypervolumes and timings). A run
# keeps its hypervolume in one fixed, normalised (bits, loss) plane, set from the initial configurations and stored
# in run.json, so numbers are comparable across rounds:

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
# faint dotted lines), so every one of them is selected (large, outlined). The lowest-bit configuration's loss is far
# above the rest: near 2.5 bits the quantization damage is more than 24 steps of adapter training can repair.
#
# ## 1. The Gaussian process and its encoding
#
# The GP models f1 as a function of a configuration: N option indices, one per target matrix (210 on SmolLM2). An
# *encoding* turns each option into numbers the kernel compares. The default, `field`, maps every option to its five
# field ordinals scaled to [0, 1] (5N features) and uses an RBF kernel with one lengthscale per field, shared by all
# matrices: the data decide how much, say, the NF bits matter against the scale dtype.

# %%
transform = encoding_transform(DEFAULT_ENCODING)
first = torch.tensor(view.pool["options"].iloc[0][:3], dtype=torch.float64)
features = transform.transform(first[None])[0].reshape(3, -1)
pd.DataFrame(features.numpy(), columns=list(FIELD_VALUES)[: features.shape[1]],
             index=[ALL_OPTIONS[int(k)].name for k in first]).rename_axis(f"{DEFAULT_ENCODING} encoding of 3 matrices")

# %% [markdown]
# Round k's GP was fitted on every configuration evaluated before it, at the f1 re-measured for that round (the
# adapter changed since they were first measured). Refit it from the log and ask it about the configurations the
# round then proposed, *before* they were measured:

# %%
def replay(r: int):
    """Round r's GP (fitted on what the search knew) and its predictions for the configurations round r measured."""
    state = at_round(r)
    known, new = state[state["first_round"] < r], state[state["first_round"] == r]
    gp = fit_surrogate(torch.tensor(known["options"].tolist()), -torch.tensor(known["f1"].tolist()), DEFAULT_ENCODING)
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
predictions = pd.concat(rows, ignore_index=True)
plots.prediction_figure(predictions, color="round",
                        title="The GP's predictions for each round's proposals, against their measured loss").show()

# %% [markdown]
# **Notice:** how close the points lie to the dashed line, and how wide the ±2 sd bars are. With ten to twenty
# observations in a 1,050-dimensional input space the GP is uncertain about anything new, which is what lets
# EHVI explore; its mean can still rank candidates usefully. The lengthscales it learned say which fields it found
# to matter (a short lengthscale: f1 changes quickly along that field):

# %%
kernel = fits[search_rounds[-1]][0].covar_module.base_kernel
lengthscale = getattr(kernel, "lengthscale", None)
if lengthscale is not None and lengthscale.numel() == len(FIELD_VALUES):
    display(pd.Series(lengthscale.detach().reshape(-1).numpy(), index=list(FIELD_VALUES), name="lengthscale"))
else:
    print(f"{DEFAULT_ENCODING} encoding: kernel {kernel.__class__.__name__}")
if COMPARE_ENCODINGS:
    final = at_round(rounds[-1])
    display(pd.DataFrame(compare_encodings(torch.tensor(final["options"].tolist()),
                                           -torch.tensor(final["f1"].tolist()))))

# %% [markdown]
# ## 2. Expected hypervolume improvement
#
# The *hypervolume* of a set of configurations is the area of the (bits, loss) plane they dominate, up to the
# reference point: more area means a better front. A candidate's hypervolume improvement is the area it would add.
# Its f1 is unknown, but the GP gives a distribution for it, so EHVI averages the improvement over that distribution.
# Below, the average is taken by Monte Carlo with the run's own plane and `plane.hypervolume`. (The search itself
# maximises BoTorch's `qLogEHVI`, the logarithm of a smoothed version of the same quantity, with its own reference
# point just beyond the observed worst values.)

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
# distribution. The ±2 sd bars are wide because the GP standardises f1 over all observations, and the collapsed
# lowest-bit configuration stretches that scale. The red crosses are what the candidates measured (at the end of the run, with a better-trained adapter, so
# mostly lower than predicted).
#
# ## 3. Segments: replaying the rounds
#
# After each round the pool is split into `segments` equal bit ranges and each range keeps its own non-dominated
# configurations. Keeping every range's front, not only the global front, keeps the adapter training at every budget.
# Here is every round as the run logged it:

# %% tags=["key-figure"]
for r in rounds:
    history = view.history_at(r)
    plots.search_figure(history, view.segment_edges(), plots.preset_bits(), f"round {r} ({modes.get(r, '')})").show()

# %%
summary = []
for r in rounds:
    state = at_round(r)
    new = state[state["first_round"] == r]
    summary.append({"round": r, "mode": modes.get(r, ""), "new configurations": len(new),
                    "their segments": sorted(set(new["segment"])), "training set": int(state["selected"].sum()),
                    "segments in training set": state.loc[state["selected"], "segment"].nunique()})
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
plots.hypervolume_figure({view.label: view.rounds}).show()
check

# %% [markdown]
# **Notice:** the hypervolume rises in every round, but for two reasons at once: the adapter keeps training (every
# configuration's loss falls, which the re-measured f1 shows) and the search adds configurations. The pool line
# equals the training-set line when every non-dominated configuration is also selected. The try-this below separates
# the two reasons.
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
