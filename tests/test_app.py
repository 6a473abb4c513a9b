"""The Streamlit explorer under streamlit.testing.v1.AppTest, on the tiny model and a run made by the CLI
(tests/data/tiny_search_run: `train --model tiny --method coa --search --steps 6 --rounds 2 --segments 8
--budgets 2.5,3,4,5,6`, then `compact`)."""
import json
import shutil
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_RUN = ROOT / "tests" / "data" / "tiny_search_run"
# The result files of `compare --quick --out tests/data/compare/tiny-quick` (a real comparison on the tiny model).
TINY_COMPARE = ROOT / "tests" / "data" / "compare"


@pytest.fixture(scope="module", autouse=True)
def tiny_app(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("COA_LORA_MODEL", "tiny")
    mp.setenv("COA_LORA_REFERENCE", str(TINY_RUN.parent))
    mp.setenv("COA_LORA_RUNS", str(tmp_path_factory.mktemp("runs")))
    mp.setenv("COA_LORA_COMPARE", str(TINY_COMPARE))
    mp.setenv("COA_LORA_EVAL_CACHE", str(tmp_path_factory.mktemp("evals")))  # every evaluation here computes
    yield
    mp.undo()


def app():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=300)
    at.run()
    assert not at.exception, at.exception
    return at


def figures(at) -> list[dict]:
    return [json.loads(e.proto.spec) for e in at.get("plotly_chart")]


def messages(at) -> str:
    return " ".join(str(e.value) for kind in ("error", "warning", "info") for e in getattr(at, kind))


def test_app_starts_on_the_search_view_and_the_round_slider_changes_the_plotted_round():
    at = app()
    assert at.title[0].value == "coa-lora explorer"
    assert not at.error
    slider = at.select_slider(key="round_sel")
    rounds = slider.options
    assert len(rounds) >= 3
    titles = [f["layout"]["title"]["text"] for f in figures(at)]
    assert any("round 3" in t for t in titles), titles  # the last round first
    slider.set_value(1).run()
    assert not at.exception
    titles = [f["layout"]["title"]["text"] for f in figures(at)]
    assert any("round 1 (search)" in t for t in titles), titles
    hv = [f for f in figures(at) if "Hypervolume" in f["layout"]["title"]["text"]]
    assert hv and len(hv[0]["data"][0]["text"]) == len(rounds)  # one point per round (text: its mode)
    # Each proposal's GP prediction against its measured loss, one trace per search round (+ the y = x line).
    pred = [f for f in figures(at) if "GP's prediction" in f["layout"]["title"]["text"]]
    assert pred and sum(len(t["customdata"]) for t in pred[0]["data"][:-1]) == 10  # 2 rounds x 5 proposals


def test_search_view_needs_no_model_and_then_draws_the_presets_among_the_runs_points():
    at = app()
    at.switch_page("instantiate_view.py").run()  # this page waits for the model
    at.switch_page("search_view.py").run()
    deadline = time.time() + 120
    stars = []
    while not stars and time.time() < deadline:  # the presets are measured in the background, then drawn
        time.sleep(0.5)
        at.run()
        stars = [t for f in figures(at) for t in f["data"] if t.get("name", "").startswith("uniform presets")]
    assert stars, "the uniform presets were never drawn as points"
    assert stars[0]["text"] == ["uniform nf2", "uniform nf3", "uniform nf4"]
    assert stars[0]["y"][0] > stars[0]["y"][-1]  # nf2 loses more than nf4 under the same adapter
    assert "Stars: the uniform presets" in " ".join(c.value for c in at.caption)


def test_budget_slider_yields_a_configuration_within_the_budget():
    at = app()
    at.switch_page("instantiate_view.py").run()
    assert not at.exception
    for budget in (2.5, 3.0, 4.25, 6.0):
        at.slider(key="budget").set_value(budget).run()
        assert not at.exception
        config = at.session_state["config"]
        assert config.avg_bits <= budget + 1e-12
        assert any("bits per weight" in f["layout"]["title"]["text"].lower() for f in figures(at))
    at.radio(key="source").set_value("searched").run()
    at.slider(key="budget").set_value(2.05).run()
    assert "has no configuration within 2.05 bits" in messages(at)


def wait_for_job(at, seconds=240, key="eval_job"):
    deadline = time.time() + seconds
    while time.time() < deadline:
        job = at.session_state[key]
        if job.snapshot()["finished"]:
            at.run()
            return job
        time.sleep(0.5)
    raise AssertionError("the evaluation did not finish")


def test_evaluation_on_the_tiny_model_completes_and_shows_numbers():
    at = app()
    at.switch_page("evaluate_view.py").run()
    assert not at.exception
    at.multiselect(key="tasks").set_value(["date_understanding"])
    at.number_input(key="limit").set_value(20)
    at.toggle(key="eval_deploy").set_value(True)  # a fourth column: the adapter's, exported packed and loaded back
    at.button(key="run_eval").click().run()
    job = wait_for_job(at)
    snap = job.snapshot()
    assert snap["error"] is None, snap["error"]
    # Streamed: each column published its running result after every 8 items (8, 16, 20), then its final one.
    assert snap["updates"] >= 4 * 4, snap["updates"]
    results = snap["result"]
    # reference, quantized base, the run's adapter (no Shared-LoRA run among the tests' runs), the adapter deployed
    assert len(results) == 4
    accs = [r["date_understanding"].acc for r in results.values()]
    assert all(0.0 <= a <= 1.0 for a in accs)
    bars = [f for f in figures(at) if "accuracy" in f["layout"]["title"]["text"]]
    assert bars and len(bars[0]["data"]) == len(results)
    # What the page drew while it ran ends at the final results; each column is set against the first, paired.
    assert {c: r["date_understanding"] for c, r in snap["partial"].items()} == {
        c: r["date_understanding"] for c, r in results.items()}
    text = " ".join(str(m.value) for m in at.markdown)
    assert text.count("points over 20 items") == 3, text
    (deployed,) = [label for label in results if label.startswith("deployed")]
    (adapter,) = [label for label in results if "adapter ·" in label]
    assert [i.pred for i in results[deployed]["date_understanding"].items] == \
        [i.pred for i in results[adapter]["date_understanding"].items]
    captions = " ".join(c.value for c in at.caption)
    assert f"“{deployed}” against “{adapter}” — date_understanding: the same answer on 20 of 20 items" in captions
    assert not at.exception


def test_generate_streams_every_column_and_says_where_each_leaves_the_reference():
    at = app()
    at.switch_page("generate_view.py").run()
    assert not at.exception
    at.slider(key="gen_budget").set_value(2.5).run()  # the shared selection: every page now uses 2.5 bits
    assert "allocator at 2.50 bits" in " ".join(str(m.value) for m in at.markdown)
    assert at.session_state["config"].avg_bits <= 2.5
    at.number_input(key="gen_max").set_value(6)
    at.toggle(key="gen_deploy").set_value(True)  # a fourth column: the configuration exported packed, loaded back
    at.button(key="gen_run").click().run()
    job = wait_for_job(at, key="gen_job")
    snap = job.snapshot()
    assert snap["error"] is None, snap["error"]
    results = snap["result"]
    assert len(results) == 4 and all(r["done"] and len(r["tokens"]) == 6 for r in results.values())
    assert all(len(r["logprobs"]) == 6 for r in results.values())
    (deployed,) = [label for label in results if label.startswith("deployed")]
    (adapter,) = [label for label in results if "adapter ·" in label]
    assert results[deployed]["tokens"] == results[adapter]["tokens"]
    captions = " ".join(c.value for c in at.caption)
    assert captions.count("tokens/s") == 4 and "same text as the reference" in captions
    assert f"the text of “{adapter}”, token for token" in captions
    assert not at.exception and not at.error


def test_a_cancelled_evaluation_says_so():
    at = app()
    at.switch_page("evaluate_view.py").run()
    at.multiselect(key="tasks").set_value(["ppl"])
    at.number_input(key="limit").set_value(400)
    at.button(key="run_eval").click().run()
    at.session_state["eval_job"].cancel()
    wait_for_job(at)
    assert "cancelled" in messages(at)


@pytest.mark.parametrize("kind, expected", [
    ("empty", "is empty"),
    ("foreign", "is not a coa-lora run folder"),
    ("other_model", "not on the loaded model"),
    ("corrupt", "is corrupt"),
])
def test_bad_run_folders_get_one_clear_message(tmp_path, kind, expected):
    folder = tmp_path / kind
    if kind == "empty":
        folder.mkdir()
    elif kind == "foreign":
        folder.mkdir()
        (folder / "model.gguf").write_bytes(b"GGUF")
    else:
        shutil.copytree(TINY_RUN, folder)
        if kind == "other_model":
            info = json.loads((folder / "run.json").read_text())
            info["weight_hash"] = "f" * 64
            (folder / "run.json").write_text(json.dumps(info))
        else:
            (folder / "search_pool.jsonl").write_text("{not json\n")
    at = app()
    if kind == "other_model":  # a run's weights are checked once the model has loaded (before: its model's name)
        at.switch_page("instantiate_view.py").run()
    at.sidebar.text_input(key="run_folder").input(str(folder)).run()
    assert not at.exception
    assert expected in messages(at), messages(at)


def test_compare_view_draws_each_method_against_bits_with_its_seed_band_and_the_training_time():
    at = app()
    at.switch_page("compare_view.py").run()
    assert not at.exception and not at.error, messages(at)
    quality = [f for f in figures(at) if "trained budgets" in f["layout"]["title"]["text"]]
    assert quality and quality[0]["layout"]["yaxis"]["type"] == "log"
    lines = [tr for tr in quality[0]["data"] if tr.get("mode") == "lines+markers"]
    assert sorted(tr["name"] for tr in lines) == sorted(["Quantized base", "Per-configuration LoRA", "Shared-LoRA",
                                                         "CoA-LoRA"])
    coa = [tr for tr in lines if tr["name"] == "CoA-LoRA"][0]
    assert coa["marker"]["symbol"] == ["circle", "diamond", "circle"]  # 2.5 and 4 trained, 3.25 unseen
    assert any("Training time" in f["layout"]["title"]["text"] for f in figures(at))
    at.radio(key="compare_metric").set_value("Top-1 agreement").run()
    assert not at.exception
    quality = [f for f in figures(at) if "trained budgets" in f["layout"]["title"]["text"]]
    assert "top-1" in quality[0]["layout"]["title"]["text"] and quality[0]["layout"]["yaxis"].get("type") != "log"


def test_compare_view_shows_a_reference_comparison_dashed_and_the_diagnosis_verdict(tmp_path, monkeypatch):
    import shutil

    from coa_lora.compare import read_reference, read_results, read_why, write_reference

    # The tiny comparison with the shipped SmolLM2 rank-8 comparison (and its why.json) as its reference.
    folder = tmp_path / "compare" / "tiny-quick"
    shutil.copytree(TINY_COMPARE / "tiny-quick", folder)
    shipped = ROOT / "data" / "compare" / "smollm2-rank8"
    write_reference(folder, shipped)
    monkeypatch.setenv("COA_LORA_COMPARE", str(folder.parent))
    at = app()
    at.switch_page("compare_view.py").run()
    assert not at.exception and not at.error, messages(at)
    quality = [f for f in figures(at) if "trained budgets" in f["layout"]["title"]["text"]][0]
    dashed = [tr["name"] for tr in quality["data"] if tr.get("line", {}).get("dash") == "dash"]
    label = read_reference(folder, read_results(folder)[2]["plan"]).label
    assert sorted(dashed) == sorted(f"{m}, {label}" for m in ("Per-configuration LoRA", "Shared-LoRA", "CoA-LoRA"))
    assert any(f"(measured at {label})" in h.value for h in at.subheader)  # the verdict is the reference's
    gap = [f for f in figures(at) if f["layout"]["title"]["text"].startswith("against Per-configuration LoRA")][0]
    assert f"CoA-LoRA, {label}" in [tr["name"] for tr in gap["data"]]  # the earlier gaps as faded crosses
    verdict = read_why(shipped)["verdict"]
    why = [f for f in figures(at) if "CoA-LoRA against per-configuration LoRA" in f["layout"]["title"]["text"]]
    assert why and "perplexity" in why[0]["layout"]["title"]["text"]
    assert any(verdict["finding"] == c.value for c in at.caption)
    at.radio(key="why_metric").set_value("KL from the unquantized model").run()
    why = [f for f in figures(at) if "CoA-LoRA against per-configuration LoRA" in f["layout"]["title"]["text"]]
    bar = why[0]["data"][0]
    assert bar["y"][0] == verdict["measured"][f"KL gap, {bar['name']}, at {bar['x'][0]}"]["mean"]
    # A reference that moved away: the comparison is still drawn, with one warning and no dashed lines.
    (folder / "reference.json").write_text('{"folder": "../nowhere"}')
    at = app()
    at.switch_page("compare_view.py").run()
    assert not at.exception and not at.error and any("holds no comparison results" in w.value for w in at.warning)
    quality = [f for f in figures(at) if "trained budgets" in f["layout"]["title"]["text"]][0]
    assert not [tr for tr in quality["data"] if tr.get("line", {}).get("dash") == "dash"]


def test_a_link_reopens_a_page_at_a_budget_with_tasks_and_a_bad_one_gets_a_sentence():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=300)
    at.query_params.update({"page": "evaluate", "run": str(TINY_RUN), "budget": "3.5", "tasks": "ppl"})
    at.run()
    assert not at.exception and not at.warning, messages(at)
    assert any("Evaluate the instantiated configuration" in h.value for h in at.header)
    assert at.multiselect(key="tasks").value == ["ppl"]
    assert "allocator at 3.50 bits" in " ".join(m.value for m in at.markdown)
    assert any("page=evaluate" in c.value and "budget=3.50" in c.value for c in at.sidebar.caption)

    bad = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=300)
    bad.query_params.update({"page": "nowhere", "budget": "99", "colour": "red", "run": "/no/such/run"})
    bad.run()
    assert not bad.exception
    warnings = [w.value for w in bad.warning]
    assert len(warnings) == 4 and all(w.startswith("This link's") for w in warnings), warnings
    assert any("not a number of bits in" in w for w in warnings)
    assert any(h.value.startswith("Search") for h in bad.header)  # the default page


def test_about_view_renders_the_method_diagram():
    at = app()
    at.switch_page("about_view.py").run()
    assert not at.exception
    assert any("CoA-LoRA" in h.value for h in at.header)


def test_train_view_starts_a_real_run_in_the_background_and_cancels_it(tmp_path):
    at = app()
    at.switch_page("train_view.py").run()
    at.text_input(key="train_name").set_value("bad name!")
    at.button(key="train_start").click().run()
    assert "is not allowed" in messages(at)
    at.text_input(key="train_name").set_value("tiny_bg")
    at.selectbox(key="train_search").set_value("off")
    at.number_input(key="train_n_budgets").set_value(2)
    at.number_input(key="train_steps").set_value(400)  # long enough to cancel mid-run
    at.button(key="train_start").click().run()
    assert not at.exception
    from common import train_jobs  # the app's registry: shared by every session of this process

    job = next(j for f, j in train_jobs().items() if f.endswith("tiny_bg"))
    deadline = time.time() + 240
    while time.time() < deadline and job.status()["steps_done"] < 1:
        time.sleep(1)
    assert job.status()["steps_done"] >= 1
    job.cancel()
    job.process.wait(timeout=120)
    status = job.status()
    assert not status["running"] and status["returncode"] != 0
    from coa_lora.search.run_view import open_run

    view = open_run(job.out)  # the folder is a readable run, resumable with --resume
    assert view.has_checkpoint or view.steps_done < view.info.hyper["checkpoint_every"]
    at.run()
    assert any("--resume" in c.value for c in at.code)
