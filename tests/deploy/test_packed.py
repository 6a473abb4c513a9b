"""Packed checkpoints: bit-exact round trips, bytes that match the bits formula, adapters, the CLI, bad folders."""
import json
import struct

import pytest
import torch

from coa_lora import (AdapterOptions, CoALoRAModel, ModelConfig, QuantizedModel, QuantOption, Workbench, load_packed,
                      read_summary, save_packed)
from coa_lora.cli import main
from coa_lora.deploy.packed import MANIFEST, QUANTIZED
from coa_lora.deploy.packed_linear import PackedLinear
from coa_lora.models.loading import load_model

IDS = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def random_config(layout, seed):
    g = torch.Generator().manual_seed(seed)
    return ModelConfig.from_option_indices(layout, torch.randint(0, 432, (len(layout),), generator=g))


def odd_model():
    """One Llama block whose matrices (44×44, 22×44, 70×44, 44×70) are no multiple of 64 (q) or even of 16 (k, v,
    MLP): partial blocks and partial groups everywhere. Untied lm_head, so it is stored too."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=44, intermediate_size=70, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return QuantizedModel.from_model(model.eval().requires_grad_(False), "odd-llama")


def tensor_bytes(path):
    """Bytes of a safetensors file's tensors: the file minus its 8-byte length prefix and JSON header."""
    with open(path, "rb") as f:
        (header,) = struct.unpack("<Q", f.read(8))
    return path.stat().st_size - 8 - header


def padding_bound(option: QuantOption) -> float:
    """The padding the module docstring allows per matrix: one block of codes, one scale code, one second-level
    scale, < 3 bytes of packing, the 4-byte offset."""
    dtype_bits = {"bf16": 16, "fp16": 16, "fp32": 32}[option.scale_dtype]
    return (option.bits * option.block_size + option.scale_bits + dtype_bits) / 8 + 3 + 4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_odd_shapes_round_trip_bit_for_bit_and_bytes_match_bits(tmp_path, seed):
    qm = odd_model()
    config = random_config(qm.layout, seed)
    summary = save_packed(qm, config, tmp_path / "p")
    ideal = sum(o.bits_per_weight * t.numel for o, t in zip(config.options, qm.layout.targets)) / 8
    on_disk = tensor_bytes(tmp_path / "p" / QUANTIZED)
    assert on_disk == summary.target_bytes == sum(o.storage_bytes(t.numel)
                                                  for o, t in zip(config.options, qm.layout.targets))
    assert summary.ideal_target_bytes == pytest.approx(ideal)
    assert ideal < on_disk <= ideal + sum(padding_bound(o) for o in config.options)
    assert summary.size_bytes == config.size_bytes
    loaded = load_packed(tmp_path / "p")
    qm.apply_(config)
    assert torch.equal(logits(loaded), logits(qm.model))
    assert not list(tmp_path.glob(".p.*"))  # no staging folder left


def test_aligned_matrices_pad_only_their_offset(tmp_path):
    # Tiny's matrices (9,216 / 4,608 / 15,360 weights) are multiples of B0·B1 = 256 with block counts divisible by 8:
    # 147,456 weights × 3.25 bits / 8 = 59,904 bytes, plus the 4-byte offset of each of the 14 matrices.
    wb = Workbench.load("tiny")
    config = ModelConfig.uniform(wb.layout, QuantOption(3, 3, "fp16", 16, 16))
    summary = save_packed(wb.qmodel, config, tmp_path / "p")
    assert config.avg_bits == 3.25 and summary.ideal_target_bytes == 59_904
    assert tensor_bytes(tmp_path / "p" / QUANTIZED) == summary.target_bytes == 59_904 + 14 * 4


def test_tiny_round_trip_is_bit_exact_and_load_model_reads_the_folder(tmp_path):
    wb = Workbench.load("tiny")
    config = random_config(wb.layout, 3)
    save_packed(wb, config, tmp_path / "p")
    wb.qmodel.apply_(config)
    expected = logits(wb.model)
    assert torch.equal(logits(load_packed(tmp_path / "p")), expected)
    assert torch.equal(logits(load_model(str(tmp_path / "p"))), expected)  # what --model DIR loads
    folder = Workbench.load(str(tmp_path / "p"))
    assert folder.layout.names == wb.layout.names and folder.tokenizer.vocab_size == 49152


def test_adapter_is_folded_and_applied(tmp_path):
    from peft import PeftModel

    wb = Workbench.load("tiny")
    coa = CoALoRAModel(wb.qmodel, AdapterOptions(r=4)).train(False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero B and U, so that the adapter and its correction both matter
        for w in coa.wrappers.values():
            w.lora_B.weight.normal_(std=0.1, generator=g)
        coa.network.out.weight.normal_(std=0.1, generator=g)
    config = random_config(wb.layout, 4)
    coa.set_config(config)
    expected = logits(coa.model)
    with coa.adapters_disabled():
        bare = logits(coa.model)
    summary = save_packed(wb, config, tmp_path / "p", adapter=coa)
    assert summary.adapter
    peft_model = load_packed(tmp_path / "p")
    assert isinstance(peft_model, PeftModel)
    assert (logits(peft_model) - expected).abs().max() < 1e-5
    assert (logits(load_packed(tmp_path / "p", adapter="merge")) - expected).abs().max() < 1e-5
    assert torch.equal(logits(load_packed(tmp_path / "p", adapter="none")), bare)
    assert (bare - expected).abs().max() > 1e-3  # the adapter does change the output


def test_cli_export_prints_disk_next_to_computed_and_refuses_a_taken_folder(tmp_path, capsys):
    wb = Workbench.load("tiny")
    config = random_config(wb.layout, 5)
    (tmp_path / "cfg.json").write_text(config.to_json())
    out = tmp_path / "p"
    assert main(["export", "--model", "tiny", "--config", str(tmp_path / "cfg.json"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "on disk" in text and "computed" in text and "padding" in text
    assert ModelConfig.from_json((out / "quant_config.json").read_text(), wb.layout) == config
    before = (out / MANIFEST).read_text()
    assert main(["export", "--model", "tiny", "--config", str(tmp_path / "cfg.json"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and (out / MANIFEST).read_text() == before
    assert main(["export", "--model", "tiny", "--config", str(tmp_path / "cfg.json"), "--out", str(out), "--force",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["target_bytes"] == read_summary(out).target_bytes and result["avg_bits"] == config.avg_bits
    assert not list(tmp_path.glob(".p.*"))


@pytest.mark.parametrize("args,needle", [
    (["--budget", "1.0"], "feasible range"),
    (["--budget", "9"], "feasible range"),
    (["--config", "OTHER"], "does not match the model"),
    (["--budget", "3", "--adapter-only"], "pass --run"),
])
def test_cli_bad_export_is_one_sentence_and_writes_nothing(tmp_path, capsys, args, needle):
    other = tmp_path / "other.json"
    other.write_text(random_config(odd_model().layout, 0).to_json())
    args = [str(other) if a == "OTHER" else a for a in args]
    assert main(["export", "--model", "tiny", *args, "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json"]


def test_bad_folders_are_named_in_one_sentence(tmp_path, capsys):
    qm = odd_model()
    folder = tmp_path / "p"
    save_packed(qm, random_config(qm.layout, 0), folder)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="is not a coa-lora packed folder"):
        load_packed(foreign)
    # A taken folder is never overwritten, even with overwrite=True, unless it is a packed folder.
    with pytest.raises(ValueError, match="not a packed folder; choose a new folder"):
        save_packed(qm, random_config(qm.layout, 1), foreign, overwrite=True)
    assert sorted(p.name for p in foreign.iterdir()) == ["config.json"]

    data = (folder / QUANTIZED).read_bytes()
    # A byte changed, the size kept: the manifest's sha256 names the file, and nothing is loaded.
    (folder / QUANTIZED).write_bytes(data[:-10] + bytes([data[-10] ^ 1]) + data[-9:])
    with pytest.raises(ValueError, match=f"{QUANTIZED} does not hold what was exported"):
        load_packed(folder, weights="packed")
    (folder / QUANTIZED).write_bytes(data[:-100])
    with pytest.raises(ValueError, match="truncated"):
        load_packed(folder)
    # The same cut with the manifest edited to match, in a folder written before hashes were kept: the safetensors
    # reader still names the file.
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"][QUANTIZED] -= 100
    del manifest["sha256"]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_packed(folder)

    # Through the CLI: one line on stderr.
    assert main(["allocate", "--model", str(folder), "--budget", "3", "--weighting", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "safetensors" in err[0]


def test_a_failed_or_killed_write_leaves_nothing(tmp_path):
    class BrokenTokenizer:
        def save_pretrained(self, folder):
            raise OSError("disk full")

    qm = odd_model()
    with pytest.raises(OSError, match="disk full"):
        save_packed(qm, random_config(qm.layout, 0), tmp_path / "p", tokenizer=BrokenTokenizer())
    assert list(tmp_path.iterdir()) == []
    # What a killed export leaves (its process is gone) is removed by the next export to the same place.
    (tmp_path / ".p.staging-999999999-0000").mkdir()
    save_packed(qm, random_config(qm.layout, 0), tmp_path / "p")
    assert [p.name for p in tmp_path.iterdir()] == ["p"]


@pytest.mark.smollm2
def test_smollm2_round_trip_to_1e_5(tmp_path, smollm2_wb):
    # Two options only (NF3/B0=16 and NF4/B0=64): a handful of compiled kernel variants keeps this test short.
    wb = smollm2_wb
    options = (QuantOption(3, 8, "fp32", 16, 256), QuantOption(4, 4, "bf16", 64, 64))
    config = ModelConfig(wb.layout, tuple(options[i % 2] for i in range(len(wb.layout))))
    summary = save_packed(wb, config, tmp_path / "p")
    bound = sum(padding_bound(o) for o in config.options)
    assert summary.ideal_target_bytes < summary.target_bytes <= summary.ideal_target_bytes + bound
    ids = torch.randint(0, 49152, (1, 32), generator=torch.Generator().manual_seed(0))
    wb.qmodel.apply_(config)
    expected = logits(wb.model, ids)
    assert (logits(load_packed(tmp_path / "p"), ids) - expected).abs().max() <= 1e-5
    # The packed run-time weights (PackedLinear) give the same logits as the dequantized load, with the NF4/B64 half
    # computed by bitsandbytes' Linear4bit (its CPU backend) and the rest decoded in torch code.
    packed = load_packed(tmp_path / "p", weights="packed")
    kernels = [m.kernel for m in packed.modules() if isinstance(m, PackedLinear)]
    assert sum(k is not None for k in kernels) == len(wb.layout) // 2
    assert (logits(packed, ids) - expected).abs().max() <= 1e-5
    plain = load_packed(tmp_path / "p", weights="packed", kernel="dequantize")
    assert (logits(plain, ids) - expected).abs().max() <= 1e-5
