"""State shared by the explorer's views: the model (one per process, for every browser session), the runs a user can
open, and the user's selection. Views call only this module and the public coa_lora API."""
from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import streamlit as st

from coa_lora import Explorer, plots, preset, read_run_info
from coa_lora.models import model_id
from coa_lora.search import RunView, find_runs, open_run

ROOT = Path(__file__).resolve().parent.parent
# The shipped reference runs (see README: how they were made); the tests point this at their own runs.
REFERENCE_DIR = Path(os.environ.get("COA_LORA_REFERENCE", ROOT / "data" / "reference"))
RUNS_DIR = Path(os.environ.get("COA_LORA_RUNS", ROOT / "runs"))  # where runs started from the app go
MODEL = os.environ.get("COA_LORA_MODEL", "smollm2")  # `tiny` in the tests
# Where evaluation results are cached (default: <coa_lora cache>/evals); bench/explorer_load.py gives each server
# its own.
EVAL_CACHE = os.environ.get("COA_LORA_EVAL_CACHE")


@st.cache_resource(show_spinner=False)
def _loading(model: str = MODEL) -> Future:
    """The model loads in a background thread from the first page view on, so pages that need no model (Search,
    Compare, About) draw at once; the thread never calls Streamlit."""
    def load() -> Explorer:
        ex = Explorer.load(model, eval_cache_dir=Path(EVAL_CACHE) if EVAL_CACHE else None)
        ex.allocator()  # damage table and grid from disk (prepared by `python -m coa_lora prepare`)
        ex.wb.weight_hash  # the runs' model check needs it; hashed once here rather than on a page's first use
        return ex

    return ThreadPoolExecutor(1, thread_name_prefix="coa-lora model").submit(load)


def explorer(model: str = MODEL) -> Explorer:
    """The explorer, waiting (with a spinner that says what is loading) until its model is ready. A load that failed
    is said in one sentence and this page stops; the next page view tries again."""
    loading = _loading(model)
    if not loading.done():
        with st.spinner(f"Loading {model_id(model)}, its weights' hash and the allocation grid (once per server) …"):
            loading.exception()  # waits
    problem = load_error(model)
    if problem is not None:
        st.error(problem)
        st.stop()
    return loading.result()


def load_error(model: str = MODEL) -> Optional[str]:
    """One sentence when the model's load failed (and forget it, so the next page view tries again), else None."""
    loading = _loading(model)
    if not loading.done() or loading.exception() is None:
        return None
    _loading.clear()
    return f"The model {model_id(model)} could not be loaded: {loading.exception()}"


def model_ready(model: str = MODEL) -> bool:
    """Whether the model has loaded (starting its load if nothing has asked for it yet)."""
    loading = _loading(model)
    return loading.done() and loading.exception() is None


@st.cache_resource
def train_jobs() -> dict:
    """Training processes started from the app, by run folder: shared by every session of this server."""
    return {}


def _stamp(folder: Path) -> tuple:
    return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))


@st.cache_resource
def _views() -> dict:
    return {}


def run_view(folder: str | Path) -> RunView:
    """The run at ``folder`` (re-read when any of its files changed); ValueError with one sentence otherwise."""
    folder = Path(folder).expanduser()
    ready = model_ready()
    key = (str(folder.resolve()) if folder.exists() else str(folder), ready)
    cache = _views()
    stamp = _stamp(folder) if folder.is_dir() else ()
    hit = cache.get(key)
    if hit is None or hit[0] != stamp:
        # Until the model has loaded, a run is checked by its model's name; then by the weights' hash.
        view = explorer().open_run(folder) if ready else open_run(folder)
        if not ready and view.info.model_id != model_id(MODEL):
            raise ValueError(f"{folder} was trained on {view.info.model_id}, not on the loaded model "
                             f"{model_id(MODEL)}; open it with that model.")
        hit = (stamp, view)
        cache[key] = hit
    return hit[1]


@st.cache_resource
def _preset_jobs() -> dict:
    """Preset measurements started by any session, by run folder and its files' stamp (one per run and checkpoint)."""
    return {"pool": ThreadPoolExecutor(1, thread_name_prefix="coa-lora presets")}


def preset_points(folder: str | Path) -> tuple[Optional[dict], str]:
    """``({preset: (bits, probe loss)}, "")`` under the run's final adapter; ``(None, why not)`` while they are being
    measured (the first call starts that in the background once the model has loaded; the result is cached on disk)
    or when they cannot be (e.g. an LQ-LoRA run, whose adapter belongs to its own configuration)."""
    if not model_ready():
        return None, "they are measured once the model has loaded"
    folder = Path(folder)
    jobs = _preset_jobs()
    key = (str(folder.resolve()), _stamp(folder) if folder.is_dir() else ())
    if key not in jobs:
        ex = explorer()  # loaded: no spinner; the job's thread never calls Streamlit
        presets = {name: preset(name) for name in plots.preset_bits()}
        jobs[key] = jobs["pool"].submit(ex.preset_losses, folder, presets)
    job = jobs[key]
    if not job.done():
        return None, "they are being measured in the background"
    if job.exception() is not None:
        return None, f"they could not be measured ({job.exception()})"
    return job.result(), ""


def known_runs() -> list[Path]:
    """The shipped reference runs, then the runs in ./runs: those of the loaded model (by name while it loads)."""
    if model_ready():
        mine = explorer().wb.weight_hash
        return [p for p in find_runs(REFERENCE_DIR) + find_runs(RUNS_DIR) if _info(p, "weight_hash") == mine]
    name = model_id(MODEL)
    return [p for p in find_runs(REFERENCE_DIR) + find_runs(RUNS_DIR) if _info(p, "model_id") == name]


def _info(folder: Path, field: str) -> Optional[str]:
    try:
        return getattr(read_run_info(folder), field)
    except ValueError:
        return None


def _label(path: Path) -> str:
    where = "reference" if path.parent == REFERENCE_DIR else str(path.parent.name)
    return f"{path.name}  ·  {where}"


def sidebar() -> None:
    """Model facts, the run to show and the run to compare with; sets ``run`` / ``compare`` in session state."""
    problem = load_error()
    if problem is not None:
        st.sidebar.error(problem)
    elif model_ready():
        ex = explorer()
        st.sidebar.markdown(f"**Model** `{ex.layout.model_id}`  \n{len(ex.layout)} target matrices, "
                            f"{ex.layout.full_size_bytes / 2**20:.0f} MiB unquantized")
    else:
        st.sidebar.markdown(f"**Model** `{model_id(MODEL)}`  \nloading in the background; pages that need it "
                            f"wait for it")
    runs = known_runs()
    paths = [str(p) for p in runs]
    labels = {str(p): _label(p) for p in runs}
    typed = st.sidebar.text_input("Open a run folder", key="run_folder", placeholder="runs/my_run",
                                  help="Any folder written by `python -m coa_lora train --out`.",
                                  on_change=lambda: st.session_state.update(run_choice=st.session_state["run_folder"]))
    options = paths + ([typed] if typed and typed not in paths else [])
    if not options:
        st.session_state["run"] = None
        st.sidebar.info("No run yet: start one on the Train page.")
        return
    if st.session_state.get("run_choice") not in options:
        st.session_state["run_choice"] = options[0]
    st.session_state["run"] = st.sidebar.selectbox("Run", options, key="run_choice",
                                                   format_func=lambda p: labels.get(p, p))
    shared = [p for p in paths if _method(p) == "shared"]
    st.session_state["compare"] = st.sidebar.selectbox(
        "Compare with (Shared-LoRA)", [None] + shared, index=1 if shared else 0, key="compare_choice",
        format_func=lambda p: "none" if p is None else labels.get(p, p))


def _method(path: str) -> Optional[str]:
    try:
        return run_view(path).method
    except ValueError:
        return None


def current_run() -> Optional[RunView]:
    """The chosen run, or None (with the reason shown) when there is none or it cannot be read."""
    return _chosen("run", show_error=True)


def compare_run() -> Optional[RunView]:
    """The Shared-LoRA run to compare with, or None."""
    return _chosen("compare", show_error=False)


def _chosen(key: str, show_error: bool) -> Optional[RunView]:
    folder = st.session_state.get(key)
    if not folder:
        return None
    try:
        return run_view(folder)
    except ValueError as exc:
        if show_error:
            st.error(str(exc))
        return None


def configuration():
    """The configuration chosen on Instantiate (the allocator's at 3 bits until one is chosen), and its label."""
    if st.session_state.get("config") is None:
        st.session_state["config"] = explorer().allocate(3.0).config
        st.session_state["config_label"] = "3.000 bits (allocator at 3.00 bits)"
    return st.session_state["config"], st.session_state["config_label"]


def budget_bounds(ex: Explorer) -> tuple[float, float]:
    """The budget sliders' ends: the model's feasible range on the slider's grid of BUDGET_STEP."""
    lo, hi = ex.budget_range
    return round(-(-lo // BUDGET_STEP) * BUDGET_STEP, 2), round(hi - 1e-9 - (hi % BUDGET_STEP), 2)


def set_budget(ex: Explorer, budget: float) -> None:
    """Make the allocator's configuration at ``budget`` the selection every page uses."""
    config = ex.allocate(budget).config
    st.session_state["config"] = config
    st.session_state["config_label"] = f"{config.avg_bits:.3f} bits (allocator at {budget:.2f} bits)"


BASE_LABEL = "quantized base (no adapter)"


def model_columns() -> dict:
    """The models a view puts side by side, by label: (under the configuration?, run folder or None). The
    unquantized reference, the quantized base, the run's adapter, and Shared-LoRA when another run is chosen."""
    from coa_lora.models import REFERENCE_LABEL

    view, shared = current_run(), compare_run()
    cols = {REFERENCE_LABEL: (False, None), BASE_LABEL: (True, None)}
    if view is not None and view.has_checkpoint and view.method != "lqlora":
        cols[f"{view.method} adapter · {view.name}"] = (True, str(view.folder))
    if shared is not None and shared.has_checkpoint and (view is None or shared.folder != view.folder):
        cols[f"Shared-LoRA · {shared.name}"] = (True, str(shared.folder))
    return cols


DEPLOY_HELP = ("Export the configuration (with the run's adapter folded in) as a packed folder and run it loaded back "
               "packed, as a device would: the same answers, at the packed runtime's speed. The first time for a "
               "configuration exports it (seconds).")


def with_deployed(columns: dict, deploy: bool) -> tuple[dict, dict]:
    """``columns`` of :func:`model_columns` as ``{label: (quantized?, run, deployed?)}``; with ``deploy`` one more, the
    first adapter's column (else the quantized base) as it is deployed, when ``columns`` has one of them. Also
    ``{deployed label: label it deploys}``."""
    out = {label: (quantized, run, False) for label, (quantized, run) in columns.items()}
    source = next((label for label, (_, run, _) in out.items() if run is not None),
                  BASE_LABEL if BASE_LABEL in out else None)
    if not deploy or source is None:
        return out, {}
    label = f"deployed, packed · {'adapter folded' if out[source][1] else 'no adapter'}"
    out[label] = (True, out[source][1], True)
    return out, {label: source}


# ----- links that reopen a view ----------------------------------------------------------------------------------
PAGES = {"search": "search_view.py", "instantiate": "instantiate_view.py", "evaluate": "evaluate_view.py",
         "generate": "generate_view.py", "train": "train_view.py", "compare": "compare_view.py",
         "about": "about_view.py"}
LINK_KEYS = ("page", "run", "budget", "source", "tasks")
BUDGET_STEP = 0.05  # the Instantiate slider's step


def link_page() -> str:
    """The page a link asks for (?page=generate), else the Search page; a bad name is reported by apply_link."""
    return PAGES.get(st.query_params.get("page", "search"), PAGES["search"])


def apply_link() -> None:
    """Once per session, the link's query parameters set the selection: ``?page=generate&run=data/reference/coa_search
    &budget=3.0&source=allocator&tasks=date_understanding,ppl``. A bad or foreign parameter gets one sentence and the
    default for it, never a traceback."""
    if st.session_state.get("link_applied"):
        return
    st.session_state["link_applied"] = True
    q = {k: st.query_params.get(k) for k in st.query_params}
    problems = [f"parameter {k!r} is not one of {', '.join(LINK_KEYS)}" for k in sorted(set(q) - set(LINK_KEYS))]
    if "page" in q and q["page"] not in PAGES:
        problems.append(f"page {q['page']!r} is not one of {', '.join(PAGES)}")
    if "run" in q:
        folder = q["run"] if Path(q["run"]).is_absolute() else str(ROOT / q["run"])  # links name runs in the repo
        try:
            run_view(folder)
            st.session_state["run_folder"] = st.session_state["run_choice"] = folder
        except ValueError as exc:
            problems.append(f"run: {exc}")
    if "budget" in q:
        ex = explorer()
        lo, hi = ex.budget_range
        try:
            budget = float(q["budget"])
        except ValueError:
            budget = float("nan")
        if lo <= budget <= hi:
            st.session_state["budget"] = round(round(budget / BUDGET_STEP) * BUDGET_STEP, 2)
            set_budget(ex, budget)
        else:
            problems.append(f"budget {q['budget']!r} is not a number of bits in [{lo:.3f}, {hi:.3f}]")
    if "source" in q:
        if q["source"] in ("allocator", "searched"):
            st.session_state["source"] = q["source"]
        else:
            problems.append(f"source {q['source']!r} is not allocator or searched")
    if "tasks" in q:
        from coa_lora.evaluation import embedded_tasks

        tasks = [t for t in q["tasks"].split(",") if t]
        known = embedded_tasks() + ["ppl"]
        if tasks and all(t in known for t in tasks):
            st.session_state["tasks"] = tasks
        else:
            problems.append(f"tasks {q['tasks']!r} are not among {', '.join(known)}")
    for problem in problems:
        st.warning(f"This link's {problem}; that part of the view is left at its default.")


def view_link(page: str) -> str:
    """The query string that reopens this view: the page, the run, the budget, the configuration source, the tasks."""
    from urllib.parse import urlencode

    name = next((k for k, v in PAGES.items() if v == page), "search")
    params = {"page": name}
    if st.session_state.get("run"):
        run = Path(st.session_state["run"]).resolve()
        params["run"] = str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run)  # portable in the repo
    if "budget" in st.session_state:
        params["budget"] = f"{st.session_state['budget']:.2f}"
    if st.session_state.get("source") in ("allocator", "searched"):
        params["source"] = st.session_state["source"]
    if st.session_state.get("tasks"):
        params["tasks"] = ",".join(st.session_state["tasks"])
    return "?" + urlencode(params)
