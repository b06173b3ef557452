"""The training step compiles as one graph, and compiled training takes the steps eager training takes.

Compiled with inductor on the CPU (C++ code generation): the slowest unit of the suite, marked
integration. On a GPU the same step is compiled by default (TrainConfig.compile=None).
"""

import json
from dataclasses import replace

import pytest
import torch
import torch._dynamo

from gptdraw.gpt.config import ModelConfig, TrainConfig
from gptdraw.gpt.model import TrainingForward, build_model
from gptdraw.gpt.train import compiles, train
from gptdraw.sequence import SequenceLayout


def per_step_losses(out_dir) -> list[float]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


@pytest.mark.parametrize("vocabulary", ["per-modality", "joint"])
def test_the_training_forward_has_no_graph_break(layout, vocabulary):
    forward = TrainingForward(build_model(ModelConfig(n_layer=2, n_head=2, n_embd=32), layout), layout, chunk=50,
                              vocabulary=vocabulary)
    captions = torch.randint(0, layout.text_vocab_size, (3, layout.text_len))
    codes = torch.randint(0, layout.codebook_size, (3, layout.image_len))
    explained = torch._dynamo.explain(forward)(layout.pack(captions, codes))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_compile_is_on_by_default_only_on_a_gpu():
    assert compiles(TrainConfig(), torch.device("cuda")) and not compiles(TrainConfig(), torch.device("cpu"))
    assert compiles(TrainConfig(compile=True), torch.device("cpu"))
    assert not compiles(TrainConfig(compile=False), torch.device("cuda"))


@pytest.mark.integration
def test_compiled_training_takes_the_eager_steps(shapes_data, caption_tokenizer, tmp_path):
    train_data, _ = shapes_data.splits()
    config = TrainConfig(model=ModelConfig(n_layer=2, n_head=2, n_embd=32), max_steps=20, micro_batch_size=8,
                         grad_accum=2, lr=3e-3, warmup_steps=2, log_every=1, eval_every=0, checkpoint_every=20,
                         sample_every=0, precision="fp32", seed=3, optimizer="muon")
    train(config, train_data, tmp_path / "eager", caption_tokenizer, shapes_data.vq, progress=False)
    compiled = replace(config, compile=True)  # fullgraph=True: a break would raise
    train(compiled, train_data, tmp_path / "compiled", caption_tokenizer, shapes_data.vq, progress=False)
    eager, fused = per_step_losses(tmp_path / "eager"), per_step_losses(tmp_path / "compiled")
    assert len(eager) == len(fused) == 20
    # Inductor fuses and reorders float32 arithmetic, so the steps agree to rounding, not bit for bit.
    assert fused == pytest.approx(eager, rel=1e-3)
    assert eager[-1] < eager[0] - 0.5  # it trained
