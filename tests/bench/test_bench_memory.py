"""The CPU peak-memory tracker of bench/memory.py, on cases whose peak can be worked out by hand."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gptdraw.gpt.config import ModelConfig, TrainConfig
from gptdraw.data.shards import FORMAT_NAME, FORMAT_VERSION, ShardContent, ShardDataset, write_shard
from gptdraw.files import write_json_atomic

MIB = 2**20


def load_bench_memory():
    path = Path(__file__).resolve().parents[2] / "bench" / "memory.py"
    spec = importlib.util.spec_from_file_location("bench_memory", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


memory = load_bench_memory()


def test_peak_of_known_allocations():
    with memory.MemoryTracker() as tracker:
        a = torch.empty(1024, 1024)  # 4 MiB
        b = torch.empty(2048, 1024)  # 8 MiB: a and b together are the peak
        del a
        c = torch.empty(512, 1024)  # 2 MiB, while b lives: 10 MiB
        del b, c
    assert tracker.result.peak_bytes == 12 * MIB
    assert tracker.result.activations == 12 * MIB
    assert tracker.result.parameters == tracker.result.gradients == tracker.result.optimizer_states == 0


def test_temporaries_inside_an_operator_count():
    # logsumexp subtracts the row maxima into a temporary as big as its input, inside the
    # operator: an operator-level tracker sees only the (rows,) result.
    x = torch.randn(256, 4096)  # 4 MiB, made before the tracker: not counted
    with memory.MemoryTracker() as tracker:
        y = x.logsumexp(-1)
    assert 4 * MIB <= tracker.result.peak_bytes < 4 * MIB + 64 * 1024
    assert y.shape == (256,)


def test_sizes_are_rounded_like_cuda_blocks():
    with memory.MemoryTracker() as tracker:
        kept = [torch.empty(3, dtype=torch.uint8) for _ in range(10)]  # 3 bytes each, 512 on a GPU
    assert tracker.result.peak_bytes == 10 * 512
    assert len(kept) == 10


def test_adamw_step_breakdown():
    torch.manual_seed(0)
    model = torch.nn.Linear(1024, 1024, bias=False)  # a 4 MiB weight
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(4, 1024)
    with memory.MemoryTracker(model, until_optimizer_steps=2) as tracker:
        for _ in range(2):
            model(x).square().sum().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    result = tracker.result
    # With tiny activations the peak is inside an optimizer step (the first and second are alike):
    # weight, gradient, both moments (and a step count of 4 bytes in a 512-byte block), and
    # AdamW's scratch.
    assert result.parameters == 4 * MIB
    assert result.gradients == 4 * MIB
    assert result.optimizer_states == 8 * MIB + 512
    assert result.peak_bytes == result.parameters + result.gradients + result.optimizer_states + result.activations
    assert "Optimizer.step" in result.where
    assert tracker.peaks[memory.OPTIMIZER_STEP] == result
    # Outside the steps: weight, the first step's moments, and the gradient being made.
    assert tracker.peaks[memory.FORWARD_BACKWARD].peak_bytes < result.peak_bytes


def test_extrapolate_by_depth_is_exact_for_linear_growth():
    def peak(depth):
        parts = dict(parameters=100 + 10 * depth, gradients=5 * depth, optimizer_states=200 + 20 * depth, activations=7 + 3 * depth)
        return memory.MemoryPeak(peak_bytes=sum(parts.values()), **parts, where="x", optimizer_steps_before=1)

    predicted = memory.extrapolate_by_depth({2: peak(2), 4: peak(4)}, 12)
    assert predicted.peak_bytes == peak(12).peak_bytes
    assert predicted.activations == peak(12).activations
    with pytest.raises(ValueError, match="two depths"):
        memory.extrapolate_by_depth({2: peak(2)}, 12)


def random_shards(root: Path, grid: tuple[int, int], text_len: int, codebook: int, text_vocab: int, examples: int) -> ShardDataset:
    rng = np.random.default_rng(0)
    content = ShardContent(
        codes=rng.integers(0, codebook, (examples, *grid)),
        caption_ids=rng.integers(0, text_vocab, (examples, text_len)),
        keys=[str(i) for i in range(examples)],
        captions=[""] * examples,
    )
    done = write_shard(root, 0, content, {})
    write_json_atomic(root / "manifest.json", {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "examples": examples, "grid": list(grid),
        "text_len": text_len, "codebook_size": codebook,
        "shards": [{"name": done["name"], "examples": examples, "sha256": done["sha256"]}],
    })
    return ShardDataset(root)


def test_trainer_peak_holds_model_and_adamw_state(caption_tokenizer, image_tokenizer, tmp_path):
    data = random_shards(tmp_path / "data", image_tokenizer.grid_size(), caption_tokenizer.text_len,
                         image_tokenizer.codebook_size, caption_tokenizer.vocab_size, examples=32)
    config = TrainConfig(model=ModelConfig(n_layer=2, n_head=2, n_embd=32), micro_batch_size=8, warmup_steps=1,
                         precision="fp32")
    peaks = memory.measure_training_memory(config, data, caption_tokenizer, image_tokenizer, tmp_path / "run")
    with pytest.raises(ValueError, match="not empty"):
        memory.measure_training_memory(config, data, caption_tokenizer, image_tokenizer, tmp_path / "run")
    assert set(peaks) == {memory.FORWARD_BACKWARD, memory.OPTIMIZER_STEP}
    # fp32 AdamW: the moments are twice the parameters, alive from the first step on; in the
    # second step's forward and backward passes, and with every gradient in its optimizer step.
    passes, step = peaks[memory.FORWARD_BACKWARD], peaks[memory.OPTIMIZER_STEP]
    assert passes.optimizer_steps_before == 1
    assert 2 * passes.parameters <= passes.optimizer_states <= 2 * passes.parameters + 64 * 512
    assert passes.activations > 0
    assert step.gradients == step.parameters  # all parameters are trained
    assert 2 * step.parameters <= step.optimizer_states <= 2 * step.parameters + 64 * 512
    for peak in peaks.values():
        assert peak.peak_bytes == peak.parameters + peak.gradients + peak.optimizer_states + peak.activations
    assert memory.highest(peaks).peak_bytes == max(passes.peak_bytes, step.peak_bytes)
