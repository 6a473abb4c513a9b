"""Generate: the same prompt continued by the unquantized reference, the quantized base and the run's adapters at the
instantiated configuration, side by side, streamed as they are generated; each token coloured by how likely the
unquantized reference finds it, and the first token where a column leaves the reference's text."""
from __future__ import annotations

import html

import streamlit as st
from common import (BUDGET_STEP, DEPLOY_HELP, budget_bounds, configuration, explorer, model_columns, set_budget,
                    with_deployed)
from jobs import Job, start_thread

from coa_lora.evaluation import GenerateOptions, first_divergence, prompt_ids
from coa_lora.models import REFERENCE_LABEL

EXAMPLES = {
    "Shakespeare": ("Now is the winter of our discontent", False),
    "An instruction": ("Write a short poem about the sea.", True),
    "A fact question": ("What is the capital of France?", True),
}


def render() -> None:
    st.header("Generate: read the damage")
    ex = explorer()
    config, label = configuration()
    _budget_slider(ex, config)
    config, label = configuration()
    st.markdown(f"**Configuration:** {label} — the Instantiate page offers the run's searched set too.")
    example = st.selectbox("Example prompt", list(EXAMPLES), key="gen_example")
    prompt = st.text_area("Prompt", EXAMPLES[example][0], key=f"gen_prompt_{example}", height=80)
    c1, c2, c3, c4, c5 = st.columns(5)
    chat = c1.toggle("Instruction (chat template)", EXAMPLES[example][1], key=f"gen_chat_{example}")
    sample = c2.toggle("Sample (off: greedy)", False, key="gen_sample")
    max_new = c3.number_input("New tokens", 1, 256, 48, key="gen_max")
    seed = c4.number_input("Seed", 0, 10_000, 0, key="gen_seed", disabled=not sample)
    deploy = c5.toggle("Deployed (packed)", False, key="gen_deploy", help=DEPLOY_HELP)
    columns, sources = with_deployed(model_columns(), deploy)
    job: Job | None = st.session_state.get("gen_job")
    running = job is not None and not job.snapshot()["finished"]
    if st.button("Generate", type="primary", disabled=running, key="gen_run"):
        try:
            ids = prompt_ids(ex.wb.tokenizer, prompt, chat)
            options = GenerateOptions(int(max_new), sample, seed=int(seed))
        except ValueError as exc:
            st.warning(str(exc))
            return
        job = Job(f"generation in {len(columns)} columns")
        job.result = {}
        st.session_state["gen_job"] = job
        start_thread(job, lambda j: _generate(ex, config, ids, options, columns, j))
        running = True
    if job is not None:
        st.fragment(_panel, run_every=0.5 if running else None)(list(columns), running, sources)


def _budget_slider(ex, config) -> None:
    """The allocator's budget, shared with every page: drag it and press Generate to read the trade-off."""
    first, last = budget_bounds(ex)
    # Follow the selection when it changed elsewhere, or when Streamlit dropped the slider's state (it does for the
    # widgets of a page that was not shown).
    if st.session_state.get("gen_budget_for") != config.key() or "gen_budget" not in st.session_state:
        st.session_state["gen_budget"] = min(max(round(round(config.avg_bits / BUDGET_STEP) * BUDGET_STEP, 2), first),
                                             last)
        st.session_state["gen_budget_for"] = config.key()

    def moved() -> None:
        set_budget(ex, st.session_state["gen_budget"])
        st.session_state["budget"] = st.session_state["gen_budget"]
        st.session_state["gen_budget_for"] = st.session_state["config"].key()

    st.slider("Bit budget (the allocator's configuration; average bits per weight)", min_value=first, max_value=last,
              step=BUDGET_STEP, key="gen_budget", on_change=moved)


def _generate(ex, config, ids, options, columns: dict, job: Job) -> dict:
    """In the job's thread: one column after another, tokens published to ``job.result`` as they come."""
    results = job.result
    for i, (label, (quantized, run, deployed)) in enumerate(columns.items()):
        def on_token(tokens, label=label, i=i):
            with job.lock:
                results[label] = {"tokens": tokens, "done": False}
            job.progress(i * options.max_new_tokens + len(tokens), len(columns) * options.max_new_tokens,
                         f"{label}: {len(tokens)} tokens")

        def waiting(ahead, label=label):
            job.progress(job.done, job.total, f"{label}: waiting for the model, {ahead} job(s) of other sessions "
                                              "ahead")

        if deployed:
            job.progress(job.done, job.total, f"{label}: exporting the configuration packed and loading it back")
        out = ex.generate(ids, config if quantized else None, run, options, on_token, job.stop.is_set, waiting,
                          deployed=deployed)
        with job.lock:
            results[label] = {"tokens": out.tokens, "pieces": out.pieces, "logprobs": out.reference_logprobs,
                              "tokens_per_s": out.tokens_per_s, "done": True}
    return results


def _panel(labels: list[str], polling: bool, sources: dict[str, str]) -> None:
    job: Job = st.session_state["gen_job"]
    snap = job.snapshot()
    if snap["finished"] and polling:
        st.rerun()  # the whole page once: this panel comes back without run_every
    if not snap["finished"]:
        st.progress(job.fraction, text=f"{snap['message']} · {snap['seconds']:.0f} s")
        if st.button("Cancel", key="gen_cancel"):
            job.cancel()
    elif snap["error"]:
        (st.warning if snap["cancelled"] else st.error)(snap["error"])
    with job.lock:
        results = {k: dict(v) for k, v in (job.result or {}).items()}
    reference = results.get(REFERENCE_LABEL, {})
    tokenizer = explorer().wb.tokenizer
    for col, label in zip(st.columns(len(labels)), labels):
        with col:
            st.markdown(f"**{label}**")
            r = results.get(label)
            if r is None:
                st.caption("waiting …")
                continue
            if not r["done"]:
                st.markdown(html.escape(tokenizer.decode(r["tokens"])))
                continue
            st.markdown(_coloured(r["pieces"], r["logprobs"]), unsafe_allow_html=True)
            div = first_divergence(r["tokens"], reference["tokens"]) if reference.get("done") else None
            mean = sum(r["logprobs"]) / max(len(r["logprobs"]), 1)
            st.caption(f"{r['tokens_per_s']:.1f} tokens/s · mean log-prob under the reference {mean:.2f} · "
                       + ("same text as the reference" if div is None and reference.get("done") else
                          f"leaves the reference's text at token {div + 1}" if div is not None else ""))
            source = results.get(sources.get(label), {})
            if source.get("done"):
                same = first_divergence(r["tokens"], source["tokens"])
                st.caption(f"the text of “{sources[label]}”" + (", token for token" if same is None else
                                                                  f" up to token {same}, then another"))


def _coloured(pieces: list[str], logprobs: list[float]) -> str:
    """Each token on a background from red (the reference finds it unlikely) to green (likely)."""
    spans = []
    for piece, lp in zip(pieces, logprobs):
        p = min(max(2.718281828 ** lp, 0.0), 1.0)
        spans.append(f'<span title="log-prob {lp:.2f}" style="background: hsla({int(120 * p)}, 70%, 50%, 0.35); '
                     f'white-space: pre-wrap">{html.escape(piece)}</span>')
    return "<div style='line-height: 1.8'>" + "".join(spans) + "</div>"


render()
