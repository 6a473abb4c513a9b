"""Evaluate: live zero-shot accuracy and perplexity of the instantiated configuration, beside its references."""
from __future__ import annotations

import streamlit as st
from common import DEPLOY_HELP, configuration, explorer, model_columns, with_deployed
from jobs import Job, start_thread

from coa_lora import plots
from coa_lora.evaluation import embedded_tasks

PPL = "ppl"
DEFAULT_LIMIT = 24  # items per task: measured to finish in under 30 s for two uncached columns on 2 CPU cores


def render() -> None:
    st.header("Evaluate the instantiated configuration")
    ex = explorer()
    config, label = configuration()
    st.markdown(f"**Configuration:** {label} — change it on the Instantiate page.")
    columns = model_columns()
    tasks = st.multiselect("Tasks", embedded_tasks() + [PPL], default=[embedded_tasks()[0]], key="tasks",
                           help="Embedded BIG-bench multiple-choice subsets (offline), or ppl: perplexity on the "
                                "held-out plays.")
    c1, c2, c3 = st.columns([2, 2, 1])
    limit = c1.number_input("Items per task (ppl: windows of 1024 tokens per held-out play)", min_value=1,
                            max_value=2000, value=DEFAULT_LIMIT, key="limit",
                            help=f"{DEFAULT_LIMIT} items of a task take about half a minute per column on 2 CPU "
                                 "cores; accuracies update as items complete, so you can stop when the bars separate.")
    chosen = c2.multiselect("Compare", list(columns), default=list(columns), key="columns")
    deploy = c3.toggle("Deployed (packed)", False, key="eval_deploy", help=DEPLOY_HELP)
    columns, sources = with_deployed({col: columns[col] for col in chosen}, deploy)  # deploys a chosen column
    job: Job | None = st.session_state.get("eval_job")
    running = job is not None and not job.snapshot()["finished"]
    if st.button("Run evaluation", type="primary", disabled=running or not tasks or not chosen, key="run_eval"):
        plan = [(col, columns[col], t) for col in columns for t in tasks]
        job = Job(f"{len(plan)} evaluations")
        st.session_state["eval_job"] = job
        st.session_state["eval_sources"] = sources  # the deployed column and the column it deploys, for _show
        start_thread(job, lambda j: _evaluate(ex, config, plan, int(limit), j))
        running = True
    if job is not None:
        # Polls only while the job runs: when it ends, _progress reruns the page once and the result is drawn by a
        # fragment without a timer, so a finished tab sends nothing and costs the server nothing.
        st.fragment(_progress, run_every=1.0 if running else None)(running)


def _evaluate(ex, config, plan, limit: int, job: Job) -> dict:
    results: dict = {col: {} for col, _, _ in plan}
    # Columns already cached (the reference, Shared-LoRA, an earlier run) come first: they are drawn at once.
    cached = {(col, task): ex.cached(task, config if quantized else None, run, limit, deployed) is not None
              for col, (quantized, run, deployed), task in plan}
    plan = sorted(plan, key=lambda step: not cached[step[0], step[2]])
    for i, (col, (quantized, run, deployed), task) in enumerate(plan):
        def progress(done, total, message="", i=i, col=col, task=task):
            job.progress(i * 1000 + int(1000 * done / max(total, 1)), len(plan) * 1000,
                         f"{task} · {col}: {done}/{total}")
        def waiting(ahead, i=i, col=col, task=task):
            job.progress(i * 1000, len(plan) * 1000,
                         f"{task} · {col}: waiting for the model, {ahead} job(s) of other sessions ahead")
        def running(partial, col=col, task=task):
            results[col][task] = partial
            job.publish({c: dict(by_task) for c, by_task in results.items()})
        cfg = config if quantized else None
        if deployed and not cached[col, task]:
            job.progress(i * 1000, len(plan) * 1000, f"{task} · {col}: exporting the configuration packed and "
                                                     "loading it back")
        results[col][task] = ex.evaluate(task, cfg, run, limit, progress, job.stop.is_set, waiting, running,
                                         deployed=deployed)
        job.publish({c: dict(by_task) for c, by_task in results.items()})
    job.progress(len(plan) * 1000, len(plan) * 1000, "done")
    return results


def _progress(polling: bool) -> None:
    job: Job = st.session_state["eval_job"]
    snap = job.snapshot()
    if not snap["finished"]:
        st.progress(job.fraction, text=f"{snap['message']} · {snap['seconds']:.0f} s")
        if st.button("Cancel", key="cancel_eval"):
            job.cancel()
        if snap["partial"]:
            _running(snap["partial"])
        return
    if polling:
        st.rerun()  # the whole page once: this fragment comes back without run_every
    if snap["error"]:
        (st.warning if snap["cancelled"] else st.error)(snap["error"])
        return
    _show(snap["result"], st.session_state.get("eval_sources", {}))


def _running(partial: dict) -> None:
    """Accuracies over the items scored so far, redrawn each poll, with how far apart the columns are yet."""
    frame = plots.results_frame(partial)
    if not (frame["metric"] == "acc").any():
        return
    counts = ", ".join(f"{col} {int(n)}" for col, n in frame[frame["metric"] == "acc"].groupby("column", sort=False)
                       ["n"].max().items())
    st.caption(f"Running accuracy over the items scored so far ({counts}); the bars move until every item is in.")
    st.plotly_chart(plots.results_bars(frame, "acc"), key="bars_running")
    _separation(partial)


def _same_answers(deployed: dict, source: dict, deployed_label: str, source_label: str) -> str:
    """Whether the deployed packed model answers as the column it deploys, task by task."""
    parts = []
    for task, result in deployed.items():
        theirs = source.get(task)
        if theirs is None:
            continue
        if hasattr(result, "items"):
            same = sum(a.pred == b.pred for a, b in zip(result.items, theirs.items))
            parts.append(f"{task}: the same answer on {same} of {len(result.items)} items")
        else:
            parts.append(f"{task}: perplexity {result.perplexity:.3f} against {theirs.perplexity:.3f}")
    return f"“{deployed_label}” against “{source_label}” — " + "; ".join(parts) + "."


def _separation(results: dict) -> None:
    """How many items a difference between columns needs, at the current standard errors."""
    baseline = next(iter(results))
    table = plots.differences_frame(results, baseline)
    if table.empty:
        return
    lines = []
    for row in table.itertuples():
        verdict = ("separated (beyond 2 standard errors)" if row.separated else
                   "not separated" + (f": about {row.items_needed:.0f} items would separate a difference this size"
                                      if row.items_needed != float("inf") else ": no difference yet"))
        lines.append(f"- **{row.column}** − {baseline} on {row.task}: {row.difference:+.1f} ± {row.stderr:.1f} "
                     f"points over {row.n} items, {verdict}.")
    st.markdown("\n".join(lines), help="Paired by item: both columns answer the same items, so the standard error "
                "is that of the per-item differences. A difference is meaningful at about two standard errors.")


def _show(results: dict, sources: dict[str, str]) -> None:
    frame = plots.results_frame(results)
    metrics = [m for m in ("acc", "acc_norm", "perplexity") if (frame["metric"] == m).any()]
    st.success(f"Done: {frame['task'].nunique()} task(s) × {frame['column'].nunique()} column(s).")
    for deployed, source in sources.items():
        if deployed in results and source in results and set(results[deployed]) & set(results[source]):
            st.caption(_same_answers(results[deployed], results[source], deployed, source))
    tabs = st.tabs(metrics + ["table", "flipped items"])
    for tab, metric in zip(tabs, metrics):
        tab.plotly_chart(plots.results_bars(frame, metric), key=f"bars_{metric}")
    _separation(results)
    tabs[len(metrics)].dataframe(frame, hide_index=True)
    with tabs[len(metrics) + 1]:
        mc = [t for t in frame.loc[frame["metric"] == "acc", "task"].unique()]
        if not mc:
            st.info("Perplexity has no items to compare; pick a multiple-choice task.")
            return
        cols = list(results)
        task = st.selectbox("Task", mc, key="flip_task")
        a = st.selectbox("From", cols, index=min(1, len(cols) - 1), key="flip_a")
        b = st.selectbox("To", cols, index=len(cols) - 1, key="flip_b")
        flips = plots.flipped_items(results[a][task], results[b][task], a, b)
        st.caption(f"{len(flips)} item(s) changed correctness between the two columns.")
        st.dataframe(flips, hide_index=True)


render()
