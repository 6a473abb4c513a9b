"""Search: every evaluated configuration in the (bits, probe loss) plane, round by round, and the hypervolume."""
from __future__ import annotations

import streamlit as st
from common import current_run, known_runs, preset_points, run_view

from coa_lora import plots

PLAY_SECONDS = 1.5


def render() -> None:
    st.header("Search: how the fronts evolve")
    view = current_run()
    if view is None:
        st.info("Choose or open a run in the sidebar.")
        return
    if not view.has_search:
        st.info(f"{view.label} trained on a fixed configuration set (no search), so it has no fronts to show; "
                f"its training curve is below. Runs with search show their fronts here.")
        st.plotly_chart(plots.training_figure(view.metrics, view.label), key="training")
        return
    st.caption("Each point is a configuration whose probe loss was measured with the adapter of that round. "
               "Large outlined points are the training set: the non-dominated configurations of each bit segment "
               "(dotted lines). Circles: initial set, diamonds: proposed by the search, squares: random. "
               "Click a point to carry it into Instantiate and Evaluate.")
    left, right = st.columns([3, 2], gap="large")
    with left:
        playing = st.toggle("▶ Play the rounds", key="playing")
        st.fragment(_round_panel, run_every=PLAY_SECONDS if playing else None)(str(view.folder), playing)
    with right:
        curves = {view.label: view.rounds}
        for other in known_runs():
            try:
                o = run_view(other)
            except ValueError:
                continue
            if o.folder.resolve() != view.folder.resolve() and o.plane is not None and o.plane == view.plane:
                curves[o.label] = o.rounds  # an ablation over the same plane: comparable curves
        st.plotly_chart(plots.hypervolume_figure(curves), key="hv")
        last = view.rounds.iloc[-1]
        st.caption(f"Plane fixed by the initial set: bits {view.plane.bits_range[0]:.2f}–"
                   f"{view.plane.bits_range[1]:.2f}, loss {view.plane.loss_range[0]:.3f}–"
                   f"{view.plane.loss_range[1]:.3f}, reference {view.plane.reference:g}. "
                   f"Last round: {int(last['n_pool'])} evaluated, {int(last['n_train'])} in the training set. "
                   f"{len(curves) - 1} other run(s) share this plane.")
        with st.expander("Rounds table"):
            st.dataframe(view.rounds.drop(columns=["gp"], errors="ignore"), hide_index=True)
    _proposals(view)


def _proposals(view) -> None:
    proposals = view.proposals()
    if proposals.empty:
        return
    st.subheader("Did the search know where it was going?")
    left, right = st.columns([3, 2], gap="large")
    with left:
        st.plotly_chart(plots.prediction_figure(proposals, color="round",
                                                title="Each proposal: the GP's prediction against its measured loss"),
                        key="proposals")
        st.caption("Points near the dashed line: the GP predicted the probe loss of configurations it had not seen "
                   "(bars: ±2 sd). A proposal far above the line was a disappointment; far below, a surprise.")
    with right:
        st.dataframe(proposals.round(4), hide_index=True)
        st.caption("distance_bits: how far (in average bits) each proposal landed from the nearest configuration "
                   "evaluated before it; changed_matrices: how many matrices differ from the most similar one; "
                   "candidate: where the proposal started (allocator grid, a perturbation of it, a recombination of "
                   "two pool configurations, or a training-set member).")
        gp = view.gp_hyperparameters()
        if not gp.empty:
            with st.expander("GP hyperparameters per round"):
                st.dataframe(gp, hide_index=True)


def _round_panel(folder: str, playing: bool) -> None:
    view = run_view(folder)
    rounds = view.round_numbers()
    modes = view.round_modes()
    if st.session_state.get("round_sel") not in rounds:
        st.session_state["round_sel"] = rounds[-1]
    if playing:  # advance one round per tick, wrapping around
        i = rounds.index(st.session_state["round_sel"])
        st.session_state["round_sel"] = rounds[(i + 1) % len(rounds)]
    r = st.select_slider("Round", options=rounds, key="round_sel",
                         format_func=lambda x: f"{x} · {modes.get(x, '')}")
    history = view.history_at(r)
    picked = st.session_state.get("picked")
    picked_id = picked["id"] if picked and picked.get("run") == str(view.folder) else None
    stars, why_not = preset_points(folder)
    fig = plots.search_figure(history, view.segment_edges(), plots.preset_bits(), f"round {r} ({modes.get(r, '')})",
                              picked_id, preset_points=stars)
    event = st.plotly_chart(fig, key=f"front_{r}", on_select="rerun", selection_mode="points")
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    if points and points[0].get("customdata") is not None:
        cid = int(points[0]["customdata"][0])
        if picked_id != cid:
            st.session_state["picked"] = {"run": str(view.folder), "id": cid}
            picked_id = cid
    if picked_id is not None:
        row = view.pool[view.pool["id"] == picked_id].iloc[0]
        st.success(f"Picked configuration {picked_id} ({row['source']}, first evaluated in round {row['round']}): "
                   f"{row['avg_bits']:.3f} bits, probe loss {row['f1']:.4f}. Instantiate and Evaluate use it when "
                   f"you choose “picked point”.")
    st.caption(f"Round {r}: {int(history['selected'].sum())} of {len(history)} configurations in the training set. "
               + ("Stars: the uniform presets under the run's final adapter (measured once per run on the same probe "
                  "windows)." if stars else f"Dashed lines: the uniform presets' bits (their probe loss under the "
                  f"run's adapter: {why_not})."))


render()
