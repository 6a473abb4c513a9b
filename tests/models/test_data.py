import pytest
import torch

from coa_lora.models.assets import AssetMissingError
from coa_lora.models.data import SPLITS, calibration_batches, load_split, plays, token_windows

POEMS = {"sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece"}


class CharTokenizer:
    """One token per character (its code point): window arithmetic can be checked by hand."""

    def __call__(self, text, add_special_tokens=True, verbose=True):
        return {"input_ids": [ord(c) for c in text]}


@pytest.fixture(scope="module")
def tokenizer():
    from coa_lora.models.loading import load_tokenizer

    try:
        return load_tokenizer("smollm2")
    except AssetMissingError:
        pytest.skip("assets not prepared: run `python -m coa_lora prepare`")


@pytest.fixture(scope="module")
def texts():
    try:
        return {split: plays(split) for split in SPLITS}
    except AssetMissingError:
        pytest.skip("assets not prepared: run `python -m coa_lora prepare`")


def test_split_is_whole_plays_disjoint_and_fixed():
    split = load_split()
    train, heldout, probe, excluded = (set(split[k]) for k in ("train", "heldout", "probe", "excluded"))
    assert heldout == {"tempest", "julius_caesar", "twelfth_night"}
    assert probe == {"two_gentlemen_of_verona"}  # the search's f1 text: no reported metric and no training uses it
    assert excluded == POEMS
    parts = [train, heldout, probe, excluded]
    assert len(train) == 33 and all(not (a & b) for i, a in enumerate(parts) for b in parts[i + 1:])
    assert load_split() == split


def test_plays_cover_the_split_sorted(texts):
    split = load_split()
    for name in SPLITS:
        assert list(texts[name]) == sorted(split[name])
        assert all(len(t) > 50_000 for t in texts[name].values())  # whole plays, not fragments
    assert texts["heldout"]["tempest"].startswith("THE TEMPEST\n")


def test_bad_split_name_lists_the_choices():
    with pytest.raises(ValueError, match="'train', 'heldout'"):
        plays("test")


def test_token_windows_by_hand():
    tok = CharTokenizer()
    text = "abcdefghij"  # 10 tokens
    assert [bytes(w.tolist()).decode() for w in token_windows(tok, text, 4)] == ["abcd", "efgh"]
    assert [bytes(w.tolist()).decode() for w in token_windows(tok, text, 4, stride=3)] == ["abcd", "defg", "ghij"]
    assert token_windows(tok, text, 4, stride=3, max_windows=2).shape == (2, 4)
    assert token_windows(tok, text, 10).shape == (1, 10)
    short = token_windows(tok, text, 11)
    assert short.shape == (0, 11) and short.dtype == torch.long
    with pytest.raises(ValueError, match="positive"):
        token_windows(tok, text, 0)
    with pytest.raises(ValueError, match="positive"):
        token_windows(tok, text, 4, stride=0)


@pytest.mark.smollm2
def test_token_windows_on_a_real_play(tokenizer, texts):
    text = texts["heldout"]["tempest"]
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    windows = token_windows(tokenizer, text, 256)
    assert windows.shape == (len(ids) // 256, 256)
    assert windows.flatten().tolist() == ids[: windows.numel()]
    assert tokenizer.decode(windows[0]).startswith("THE TEMPEST")


@pytest.mark.smollm2
def test_calibration_batches_are_deterministic_training_text(tokenizer, texts):
    state = torch.get_rng_state()
    a = calibration_batches(tokenizer, 6, 64, seed=0)
    b = calibration_batches(tokenizer, 6, 64, seed=0)
    c = calibration_batches(tokenizer, 6, 64, seed=1)
    assert torch.equal(state, torch.get_rng_state())
    assert a.shape == (6, 64) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(w.tolist()) for w in a}) == 6  # drawn without replacement
    train, heldout = "\n".join(texts["train"].values()), "\n".join(texts["heldout"].values())
    for window in a:
        piece = tokenizer.decode(window)  # ASCII byte-level BPE: decoding a window gives back the exact substring
        assert piece in train and piece not in heldout
    with pytest.raises(ValueError, match="windows of"):
        calibration_batches(tokenizer, 10**7, 64, seed=0)
