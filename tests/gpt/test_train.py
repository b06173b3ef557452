"""Training on real prepared shards: loss goes down, resume is exact, bad checkpoints are refused."""

import json
from dataclasses import replace

import pytest
import torch

from conftest import tiny_vq_config
from gptdraw.gpt.config import ModelConfig, TrainConfig
from gptdraw.pipeline import GPTDrawPipeline
from gptdraw.gpt.checkpoint import list_checkpoints
from gptdraw.gpt.train import learning_rate, train
from gptdraw.vq.model import ImageTokenizer


@pytest.fixture(scope="module")
def dataset(shapes_data):
    return (*shapes_data.splits(), shapes_data.vq)


def tiny_config(**changes) -> TrainConfig:
    config = TrainConfig(
        model=ModelConfig(n_layer=2, n_head=2, n_embd=32), max_steps=12, micro_batch_size=8, grad_accum=2,
        lr=3e-3, warmup_steps=2, log_every=1, eval_every=6, checkpoint_every=4, sample_every=0,
        precision="fp32", seed=3,
    )
    return replace(config, **changes)


def losses(out_dir):
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def test_training_lowers_loss_and_writes_a_model(dataset, caption_tokenizer, tmp_path):
    train_data, eval_data, vq = dataset
    result = train(tiny_config(), train_data, tmp_path / "run", caption_tokenizer, vq, eval_data=eval_data, progress=False)
    curve = losses(tmp_path / "run")
    assert result.step == 12
    assert curve[12] < curve[1] - 0.5
    assert result.eval_loss is not None and result.eval_loss < curve[1]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert any((tmp_path / "run" / "logs").iterdir())
    assert len(list_checkpoints(tmp_path / "run")) == 2  # keep_checkpoints=2 pruned the rest
    pipe = GPTDrawPipeline.from_pretrained(tmp_path / "run")
    assert len(pipe(["a red circle"], seed=0)) == 1


@pytest.mark.parametrize("optimizer, lora_rank, levers", [
    ("adamw", 0, {}), ("muon", 0, {}), ("adamw", 4, {}),
    # A head of its own, a faster embedding group and a prefix caption are in the checkpoint too.
    ("muon", 0, {"model": ModelConfig(n_layer=2, n_head=2, n_embd=32, tie_head=False, caption_attention="prefix"),
                 "embedding_lr_ratio": 5.0, "text_loss_weight": 0.0}),
])
def test_stopped_and_resumed_equals_uninterrupted(dataset, caption_tokenizer, tmp_path, optimizer, lora_rank, levers):
    train_data, _, vq = dataset
    config = tiny_config(caption_dropout=0.3, optimizer=optimizer, lora_rank=lora_rank, **levers)
    train(config, train_data, tmp_path / "straight", caption_tokenizer, vq, progress=False)
    train(config, train_data, tmp_path / "resumed", caption_tokenizer, vq, progress=False, stop_after=5)
    # stop_after=5 leaves a checkpoint at step 5 (the last step of the invocation).
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")][-1] == "step-00000005"
    steps_taken = []
    result = train(config, train_data, tmp_path / "resumed", caption_tokenizer, vq, progress=False,
                   on_step=steps_taken.append)
    assert steps_taken == list(range(6, config.max_steps + 1))  # it resumed: steps 1–5 were not taken again
    assert result.step == config.max_steps
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert set(straight) == set(resumed)
    for step in straight:
        assert resumed[step] == straight[step], f"step {step}: {resumed[step]} != {straight[step]}"


def test_an_untied_head_is_trained_saved_and_loaded_apart_from_the_embedding(dataset, caption_tokenizer, tmp_path):
    train_data, _, vq = dataset
    config = tiny_config(model=ModelConfig(n_layer=2, n_head=2, n_embd=32, tie_head=False), max_steps=4)
    train(config, train_data, tmp_path / "run", caption_tokenizer, vq, progress=False)
    gpt = GPTDrawPipeline.from_pretrained(tmp_path / "run").transformer
    head, embedding = gpt.lm_head.weight, gpt.transformer.wte.weight
    assert head is not embedding and not gpt.config.tie_word_embeddings
    # Both started from independent random draws and were trained: they differ everywhere.
    assert not torch.allclose(head, embedding)


def test_a_prefix_caption_with_a_caption_loss_is_refused(dataset, caption_tokenizer, tmp_path):
    train_data, _, vq = dataset
    config = tiny_config(model=ModelConfig(n_layer=2, n_head=2, n_embd=32, caption_attention="prefix"))
    with pytest.raises(ValueError, match="train it with text_loss_weight 0"):
        train(config, train_data, tmp_path / "run", caption_tokenizer, vq, progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_embeddings_learn_at_their_own_rate(dataset, caption_tokenizer, tmp_path):
    from gptdraw.gpt.model import build_model
    from gptdraw.gpt.optimizer import make_optimizer
    from gptdraw.sequence import SequenceLayout

    train_data, _, vq = dataset
    layout = SequenceLayout.from_tokenizers(caption_tokenizer, vq, train_data.grid)
    config = tiny_config(embedding_lr_ratio=10.0)
    gpt = build_model(config.model, layout)
    optimizer = make_optimizer(gpt, config)
    ratios = {id(p): group.get("lr_ratio", 1.0) for group in optimizer.param_groups for p in group["params"]}
    assert ratios[id(gpt.transformer.wte.weight)] == ratios[id(gpt.transformer.wpe.weight)] == 10.0
    assert ratios[id(gpt.transformer.h[0].attn.c_attn.weight)] == 1.0
    assert len(ratios) == len(list(gpt.parameters()))  # every parameter in exactly one group
    # At ratio 1 the groups are the old ones, so earlier checkpoints still fit.
    assert len(make_optimizer(gpt, tiny_config()).param_groups) == 2
    train(config, train_data, tmp_path / "run", caption_tokenizer, vq, progress=False)
    saved = torch.load(list_checkpoints(tmp_path / "run")[-1] / "optimizer.pt", weights_only=True)["param_groups"]
    last = learning_rate(config.max_steps - 1, config)
    assert sorted(group["lr"] for group in saved) == pytest.approx([last, last, 10 * last])


def test_checkpoints_written_in_the_background_are_those_written_in_the_foreground(dataset, caption_tokenizer, tmp_path,
                                                                                    monkeypatch):
    import threading

    from safetensors.torch import load_file

    import gptdraw.gpt.train as training

    train_data, _, vq = dataset
    config = tiny_config(caption_dropout=0.3, keep_checkpoints=10)
    train(config, train_data, tmp_path / "foreground", caption_tokenizer, vq, progress=False)
    writers, save = [], training.save_checkpoint

    def recorded(*args, **kwargs):
        writers.append(threading.current_thread().name)
        return save(*args, **kwargs)

    monkeypatch.setattr(training, "save_checkpoint", recorded)
    train(replace(config, async_checkpoint=True), train_data, tmp_path / "background", caption_tokenizer, vq,
          progress=False)
    foreground, background = list_checkpoints(tmp_path / "foreground"), list_checkpoints(tmp_path / "background")
    assert [path.name for path in background] == [path.name for path in foreground] == [
        "step-00000004", "step-00000008", "step-00000012"]
    for ours, theirs in zip(background, foreground):
        # The weights, the optimiser state and the RNG of the checkpoint's own step, though training
        # went on while they were written.
        assert (ours / "model.safetensors").read_bytes() == (theirs / "model.safetensors").read_bytes()
        state = json.loads((ours / "trainer_state.json").read_text())
        assert state["torch_rng"] == json.loads((theirs / "trainer_state.json").read_text())["torch_rng"]
        moments = [torch.load(path / "optimizer.pt", weights_only=True)["state"][0]["exp_avg"] for path in (ours, theirs)]
        assert torch.equal(*moments)
    assert writers == ["gptdraw-checkpoint"] * 3  # each written by the background thread
    assert not torch.equal(load_file(background[0] / "model.safetensors")["transformer.wte.weight"],
                           load_file(background[-1] / "model.safetensors")["transformer.wte.weight"])


def test_a_run_checkpoints_when_its_minutes_have_passed_at_a_log_step(dataset, caption_tokenizer, tmp_path):
    train_data, _, vq = dataset
    # checkpoint_every past the run: only the time (a minute's billionth, always passed) and the last step.
    config = tiny_config(checkpoint_every=1000, log_every=3, keep_checkpoints=10, checkpoint_minutes=1e-9)
    train(config, train_data, tmp_path / "timed", caption_tokenizer, vq, progress=False)
    assert [path.name for path in list_checkpoints(tmp_path / "timed")] == [f"step-{step:08d}" for step in (3, 6, 9, 12)]
    train(replace(config, checkpoint_minutes=0.0), train_data, tmp_path / "stepped", caption_tokenizer, vq, progress=False)
    assert [path.name for path in list_checkpoints(tmp_path / "stepped")] == ["step-00000012"]


def test_grad_accumulation_equals_one_big_batch(dataset, caption_tokenizer, tmp_path):
    train_data, _, vq = dataset
    # Same examples per step: 2 × 8 accumulated vs 1 × 16 (the same permutation, cut alike);
    # caption dropout off, since its draw depends on the micro-batch number.
    same = dict(max_steps=3, caption_dropout=0.0)
    train(tiny_config(micro_batch_size=8, grad_accum=2, **same), train_data, tmp_path / "a", caption_tokenizer, vq, progress=False)
    train(tiny_config(micro_batch_size=16, grad_accum=1, **same), train_data, tmp_path / "b", caption_tokenizer, vq, progress=False)
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    for step in la:
        assert abs(la[step] - lb[step]) < 1e-5


def test_checkpoint_for_another_layout_is_refused(dataset, caption_tokenizer, tmp_path):
    train_data, _, vq = dataset
    train(tiny_config(max_steps=4), train_data, tmp_path / "run", caption_tokenizer, vq, progress=False)
    other_vq = ImageTokenizer(replace(tiny_vq_config(image_size=32), num_vq_embeddings=256))
    with pytest.raises(ValueError, match="another vocabulary or grid"):
        train(tiny_config(max_steps=8), train_data, tmp_path / "run", caption_tokenizer, other_vq, progress=False)


def test_corrupt_checkpoint_is_refused(dataset, caption_tokenizer, tmp_path):
    train_data, _, vq = dataset
    train(tiny_config(max_steps=4), train_data, tmp_path / "run", caption_tokenizer, vq, progress=False)
    last = list_checkpoints(tmp_path / "run")[-1]
    (last / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        train(tiny_config(max_steps=8), train_data, tmp_path / "run", caption_tokenizer, vq, progress=False)


def test_schedules():
    constant = TrainConfig(lr=1.0, warmup_steps=10, max_steps=100, schedule="constant")
    assert learning_rate(0, constant) == pytest.approx(0.1)
    assert learning_rate(9, constant) == pytest.approx(1.0)
    assert learning_rate(99, constant) == 1.0
    cosine = replace(constant, schedule="cosine", min_lr_ratio=0.1)
    assert learning_rate(10, cosine) == pytest.approx(1.0)
    assert learning_rate(55, cosine) == pytest.approx(0.55)
    assert learning_rate(100, cosine) == pytest.approx(0.1)
    linear = replace(constant, schedule="linear", min_lr_ratio=0.0)
    assert learning_rate(55, linear) == pytest.approx(0.5)


def test_non_finite_loss_stops_with_a_clear_message(dataset, caption_tokenizer, tmp_path):
    from gptdraw.gpt.model import build_model
    from gptdraw.sequence import SequenceLayout
    from gptdraw.gpt.train import NonFiniteLossError

    train_data, _, vq = dataset
    config = tiny_config(max_steps=8, checkpoint_every=2, log_every=5)
    layout = SequenceLayout(text_vocab_size=caption_tokenizer.vocab_size, pad_id=caption_tokenizer.pad_id,
                            codebook_size=vq.codebook_size, text_len=caption_tokenizer.text_len, grid=train_data.grid)
    poisoned = build_model(config.model, layout)
    with torch.no_grad():
        poisoned.transformer.h[0].mlp.c_fc.weight.fill_(float("nan"))
    # A fresh run whose weights turn the loss into NaN stops at its first look at the loss (the
    # first checkpoint step, before the first log step) and writes no checkpoint.
    with pytest.raises(NonFiniteLossError, match="loss became nan by step 2"):
        train(config, train_data, tmp_path / "poisoned", caption_tokenizer, vq, init_model=poisoned, progress=False)
    assert list_checkpoints(tmp_path / "poisoned") == []


def test_bf16_weights_are_cast_once_per_optimiser_step_not_per_micro_batch(layout):
    """Under autocast every micro-batch of a step reuses the bf16 copies of the block matrices."""
    from accelerate import Accelerator
    from torch.utils._python_dispatch import TorchDispatchMode

    from gptdraw.gpt.model import TrainingForward, build_model
    from gptdraw.gpt.train import train_step

    class CountCasts(TorchDispatchMode):
        def __init__(self, weights):
            super().__init__()
            self.ids, self.casts = {id(w) for w in weights}, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default and id(args[0]) in self.ids:
                self.casts += 1
            return func(*args, **(kwargs or {}))

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # earlier tests' runs trained in fp32
    accelerator = Accelerator(mixed_precision="bf16", cpu=True)
    casts = {}
    for micro_batches in (1, 3):
        gpt = build_model(ModelConfig(n_layer=2, n_head=2, n_embd=32), layout)
        forward, optimizer = accelerator.prepare(TrainingForward(gpt, layout, 50), torch.optim.AdamW(gpt.parameters()))
        captions = torch.randint(1, layout.text_vocab_size, (micro_batches, 2, layout.text_len))
        codes = torch.randint(0, layout.codebook_size, (micro_batches, 2, layout.image_len))
        batches = [layout.pack(c, k) for c, k in zip(captions, codes)]
        counter = CountCasts([p for name, p in gpt.named_parameters() if ".h." in f".{name}" and p.ndim == 2])
        with counter:
            train_step(forward, optimizer, batches, torch.tensor([10.0, 32.0]) * micro_batches,
                       TrainConfig(grad_accum=micro_batches), accelerator)
        casts[micro_batches] = counter.casts
    assert casts[1] == 2 * 4  # each block matrix once
    assert casts[3] == casts[1]


@pytest.mark.parametrize("kind", ["keep-one", "drop-one"])
def test_part_dropout_trains_on_part_of_a_caption(caption_tokenizer, layout, kind):
    # keep-one leaves one part alone, drop-one every part but one: each as the caption tokenizer
    # encodes that shorter caption itself.
    from gptdraw.gpt.train import drop_parts

    captions = ["circle, left, triangle", "square, left", "a circle"] * 8
    ids = torch.from_numpy(caption_tokenizer.encode_batch(captions).ids).long()
    ids = torch.cat([ids, torch.zeros(len(captions), layout.image_len, dtype=torch.long)], dim=1)  # (B, T)
    separator, pad = caption_tokenizer.part_separator_id, caption_tokenizer.pad_id

    def cut(rows, probability, rank=0, world=1):
        return drop_parts(rows, layout, separator, probability, kind, seed=0, micro_step=3, rank=rank, world_size=world)

    kept = cut(ids, 1.0)
    seen = set()
    for caption, row in zip(captions, kept):
        parts = [part.strip() for part in caption.split(",")]
        if len(parts) == 1:
            allowed = [caption]  # a caption of one part is kept whole
        elif kind == "keep-one":
            allowed = parts
        else:
            allowed = [", ".join(parts[:i] + parts[i + 1 :]) for i in range(len(parts))]
        encodings = {text: caption_tokenizer.encode_batch([text]).ids[0].tolist() for text in allowed}
        text = next((text for text, encoded in encodings.items() if row[: layout.text_len].tolist() == encoded), None)
        assert text is not None, (caption, caption_tokenizer.decode(row[: layout.text_len].tolist()))
        if len(parts) > 1:
            seen.add(text)
    assert len(seen) >= 4  # the part is drawn at random: several of the five choices came up
    assert torch.equal(kept[:, layout.text_len :], ids[:, layout.text_len :])  # the codes are untouched
    assert torch.equal(cut(ids, 0.0), ids)
    # The draw is the global micro-batch's: two processes' halves are what one process draws.
    halves = [cut(ids[rank * 12 : (rank + 1) * 12], 0.5, rank, 2) for rank in (0, 1)]
    assert torch.equal(torch.cat(halves), cut(ids, 0.5))
    assert not torch.equal(cut(ids, 0.5), ids)
    assert pad == layout.pad_id


def test_part_dropout_with_a_caption_tokenizer_that_has_no_comma_is_a_one_line_error(dataset, caption_tokenizer,
                                                                                    tmp_path):
    from tokenizers import Tokenizer, models

    from gptdraw.captions import PAD_TOKEN, CaptionTokenizer

    train_data, eval_data, vq = dataset
    words = Tokenizer(models.WordLevel({PAD_TOKEN: 0, "red": 1, "circle": 2}, unk_token=PAD_TOKEN))
    no_comma = CaptionTokenizer(words, caption_tokenizer.text_len, kind="bpe-trained")
    assert no_comma.part_separator_id is None
    with pytest.raises(ValueError, match="^part_dropout splits captions at commas, but this caption tokenizer "
                                         "has no ',' token$"):
        train(tiny_config(part_dropout=0.5), train_data, tmp_path / "run", no_comma, vq, eval_data=eval_data,
              progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written
