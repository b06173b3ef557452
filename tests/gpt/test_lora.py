"""LoRA fine-tuning: only the adapters train, the model directory keeps base and adapter apart,
loading applies the adapter, merging bakes it in, and an adapter for another base is refused."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gptdraw.cli import main
from gptdraw.pipeline import GPTDrawPipeline

pytest.importorskip("peft")

FLAGS = ["--lr", "3e-3", "--warmup-steps", "2", "--precision", "fp32", "--eval-every", "0", "--sample-every", "0",
         "--log-every", "1", "--checkpoint-every", "100", "--seed", "1", "--micro-batch-size", "16"]


def logits(pipe: GPTDrawPipeline) -> torch.Tensor:
    ids = torch.arange(pipe.layout.seq_len).remainder(pipe.layout.vocab_size)[None]  # (1, seq_len)
    with torch.no_grad():
        return pipe.transformer(ids).logits.float()


@pytest.fixture(scope="module")
def runs(shapes_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    (root / "small.json").write_text(json.dumps({"model": {"n_layer": 2, "n_head": 2, "n_embd": 32}}))
    data = str(shapes_data.data_dir)
    assert main(["train", "--data", data, "--out", str(root / "base"), "--config", str(root / "small.json"),
                 "--max-steps", "10", *FLAGS]) == 0
    assert main(["train", "--data", data, "--out", str(root / "lora"), "--init-from", str(root / "base"),
                 "--lora-rank", "4", "--lora-alpha", "8", "--max-steps", "6", *FLAGS]) == 0
    return root


def test_only_the_adapter_trains_and_is_kept_apart(runs):
    base = load_file(runs / "base" / "transformer" / "model.safetensors")
    kept = load_file(runs / "lora" / "transformer" / "model.safetensors")
    assert base.keys() == kept.keys() and all(torch.equal(base[k], kept[k]) for k in base)  # the base is frozen
    adapter = load_file(runs / "lora" / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    assert sum(t.numel() for t in adapter.values()) < 0.2 * sum(t.numel() for t in base.values())
    assert any(t.abs().sum() > 0 for name, t in adapter.items() if "lora_B" in name)  # B left zero: it trained


def test_loading_applies_the_adapter_and_merging_bakes_it_in(runs, tmp_path):
    base = GPTDrawPipeline.from_pretrained(runs / "base", device="cpu", precision="fp32")
    tuned = GPTDrawPipeline.from_pretrained(runs / "lora", device="cpu", precision="fp32")
    assert not torch.allclose(logits(base), logits(tuned), atol=1e-4)
    merged_dir = tmp_path / "merged"
    shutil.copytree(runs / "lora", merged_dir)
    assert main(["merge-adapter", "--model", str(merged_dir)]) == 0
    assert not (merged_dir / "adapter").exists()
    merged = GPTDrawPipeline.from_pretrained(merged_dir, device="cpu", precision="fp32")
    assert torch.allclose(logits(merged), logits(tuned), atol=1e-4)
    # The fast sampler draws through the adapter too: greedy drawings of adapter and merged agree.
    prompts = ["a red circle", "a blue square at the top"]
    drawn = [[np.asarray(image) for image in pipe(prompts, seed=0, temperature=0)] for pipe in (tuned, merged)]
    assert all(np.array_equal(a, b) for a, b in zip(drawn[0], drawn[1]))


def test_an_adapter_for_another_base_is_refused(runs, tmp_path, shapes_data):
    (tmp_path / "wide.json").write_text(json.dumps({"model": {"n_layer": 2, "n_head": 2, "n_embd": 48}}))
    assert main(["train", "--data", str(shapes_data.data_dir), "--out", str(tmp_path / "other"), "--config",
                 str(tmp_path / "wide.json"), "--max-steps", "1", *FLAGS]) == 0
    shutil.copytree(runs / "lora" / "adapter", tmp_path / "other" / "adapter")
    with pytest.raises(ValueError, match="made for a GPT of 2 layers × 32"):
        GPTDrawPipeline.from_pretrained(tmp_path / "other", device="cpu")


def test_a_damaged_adapter_is_a_clear_error(runs, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(runs / "lora", model)
    weights = model / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # cut short
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        GPTDrawPipeline.from_pretrained(model, device="cpu")
    (model / "adapter" / "adapter_config.json").write_text("{cut")
    with pytest.raises(ValueError, match="not a readable LoRA adapter"):
        GPTDrawPipeline.from_pretrained(model, device="cpu")
