"""Train: start a run in the background (the CLI's `train` in a child process), watch it, cancel it."""
from __future__ import annotations

import re
import shlex

import streamlit as st
from common import MODEL, RUNS_DIR, train_jobs
from jobs import TrainJob, train_command

from coa_lora.lora import DEFAULT_HIGH_BITS, DEFAULT_LOW_BITS, TrainOptions, even_budgets

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def render() -> None:
    st.header("Train a run in the background")
    st.caption(f"The run is `python -m coa_lora train` in its own process, writing `{RUNS_DIR}/NAME` atomically: "
               "closing this tab does not stop or corrupt it, and a cancelled run continues with the command shown "
               "(`--resume`). Its fronts appear on the Search page as rounds finish (open it in the sidebar).")
    with st.form("train"):
        c1, c2, c3 = st.columns(3)
        name = c1.text_input("Run name", value="my_run", key="train_name", help="A new folder under runs/")
        method = c2.selectbox("Method", ["coa", "shared"], key="train_method",
                              help="coa: CoA-LoRA (adapter + U_θ); shared: Shared-LoRA")
        search = c3.selectbox("Search", ["search", "frozen", "random", "off"], key="train_search",
                              help="search: qLogEHVI proposals between epochs; frozen / random: its ablations")
        c1, c2, c3 = st.columns(3)
        low, high = c1.slider("Initial budgets (bits)", 2.1, 8.6, (DEFAULT_LOW_BITS, DEFAULT_HIGH_BITS), 0.05)
        n_budgets = c2.number_input("Number of initial budgets", 2, 50, 10, key="train_n_budgets")
        rank = c3.number_input("LoRA rank r", 1, 256, TrainOptions.rank, help="alpha = 2 x r; 64 (the official code's) "
                               "beat 8 over 3 seeds on SmolLM2 (docs/RESULTS.md, Why)")
        c1, c2, c3, c4 = st.columns(4)
        steps = c1.number_input("Steps", 2, 10_000, 60, key="train_steps", help="~11 s a step on SmolLM2 with 2 CPU cores")
        rounds = c2.number_input("Rounds R", 1, 20, 3)
        segments = c3.number_input("Segments U", 1, 200, TrainOptions.segments)
        seed = c4.number_input("Seed", 0, 10_000, 0)
        submitted = st.form_submit_button("Start training", type="primary", key="train_start")
    if submitted:
        _start(name, method, search, even_budgets(low, high, int(n_budgets)), int(rank), int(steps), int(rounds),
               int(segments), int(seed))
    polling = any(j.running for j in train_jobs().values())
    st.fragment(_jobs_panel, run_every=2.0 if polling else None)(polling)


def _start(name, method, search, budgets, rank, steps, rounds, segments, seed) -> None:
    if not NAME.match(name):
        st.error(f"Run name {name!r} is not allowed: use 1–64 letters, digits, '.', '_' or '-'.")
        return
    out = RUNS_DIR / name
    if out.exists():
        st.error(f"{out} already exists: choose another name, or resume it with "
                 f"`python -m coa_lora train --out {out} --resume`.")
        return
    if search != "off" and rounds >= steps:
        st.error(f"{rounds} search rounds need more than {rounds} steps; give more steps or fewer rounds.")
        return
    options = {"method": method, "steps": steps, "rank": rank, "seed": seed, "budgets": budgets, "search": search}
    if search != "off":
        options.update(rounds=rounds, segments=segments)
    cmd = train_command(MODEL, out, options)
    train_jobs()[str(out)] = TrainJob(cmd, out)
    st.success(f"Started: `{shlex.join(cmd[1:])}`")


def _jobs_panel(polling: bool) -> None:
    jobs = train_jobs()
    if not jobs:
        st.info("No run started from this server yet.")
        return
    if polling and not any(j.running for j in jobs.values()):
        st.rerun()  # every run ended: redraw the page once, without the timer
    for folder, job in list(jobs.items()):
        s = job.status()
        with st.container(border=True):
            state = "running" if s["running"] else ("finished" if s["returncode"] == 0 else
                                                    f"stopped (exit code {s['returncode']})")
            st.markdown(f"**{folder}** — {state}")
            if s["steps"]:
                st.progress(min(s["steps_done"] / s["steps"], 1.0),
                            text=f"step {s['steps_done']}/{s['steps']}, search rounds logged: {s['rounds']}")
            st.caption(s["last_line"][-300:] or "starting …")
            if s["running"]:
                if st.button("Cancel", key=f"cancel_{folder}"):
                    job.cancel()
            elif s["returncode"] != 0:
                resume = train_command(MODEL, job.out, {}, resume=True)
                st.code(shlex.join(["python"] + resume[1:]), language="bash")


render()
