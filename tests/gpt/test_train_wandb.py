"""Weights & Biases logging, for real in wandb's offline mode (no network): the run's history
holds the losses, a resumed training run continues the same W&B run, the W&B run is finished
(failed on an error), and asking for W&B without wandb installed fails clearly."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gptdraw.gpt.config import ModelConfig, TrainConfig
from gptdraw.gpt.checkpoint import list_checkpoints
from gptdraw.gpt.train import NonFiniteLossError, train

pytestmark = pytest.mark.integration  # slow, end to end: `-m "not integration"` skips it


@pytest.fixture(scope="module")
def dataset(shapes_data):
    return shapes_data.splits()[0], shapes_data.vq


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch) -> Path:
    """wandb logging to files under tmp_path only."""
    pytest.importorskip("wandb")
    root = tmp_path / "wandb-files"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(root))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # leave pytest's capture of stdout alone
    return root


def tiny_config(**changes) -> TrainConfig:
    config = TrainConfig(
        model=ModelConfig(n_layer=2, n_head=2, n_embd=32), max_steps=4, micro_batch_size=8, lr=3e-3,
        warmup_steps=1, log_every=1, eval_every=0, checkpoint_every=2, sample_every=0, precision="fp32",
        seed=3, wandb=True,
    )
    return replace(config, **changes)


def read_wandb_file(path: Path) -> list:
    """The records of a .wandb file: a 7-byte W&B header, then LevelDB-log chunks in 32 KiB
    blocks (7-byte chunk headers: checksum, length, kind), each record a protobuf
    `wandb.proto.wandb_internal_pb2.Record`. wandb has no Python reader of its own any more."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, offset, block = [], b"", 7, 32768
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # a block's tail too short for a chunk header is padding
            offset += block - offset % block
            continue
        length, kind = int.from_bytes(data[offset + 4 : offset + 6], "little"), data[offset + 6]
        pending += data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def item_key(item) -> str:
    # wandb writes a flat `key` or, in newer versions, a `nested_key` path.
    return item.key or ".".join(item.nested_key)


def offline_runs(root: Path) -> list[dict]:
    """Each offline W&B run under root, oldest first: its id, logged history by step, exit code."""
    import wandb

    # wandb's service process writes the run files in the background, after run.finish()
    # returns: wait for it (a new wandb.init starts it again).
    wandb.teardown()
    runs = []
    for run_dir in sorted((root / "wandb").glob("offline-run-*")):
        run = {"id": None, "history": {}, "exit_code": None, "config": {}}
        for record in read_wandb_file(next(run_dir.glob("run-*.wandb"))):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run["id"] = record.run.run_id
                run["config"] = {item_key(item): json.loads(item.value_json) for item in record.run.config.update}
            elif kind == "history":
                items = {item_key(item): json.loads(item.value_json) for item in record.history.item}
                run["history"][items["_step"]] = items
            elif kind == "exit":
                run["exit_code"] = record.exit.exit_code
        runs.append(run)
    return runs


def metrics_losses(out_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


def test_offline_run_logs_the_losses_and_a_resume_continues_it(dataset, caption_tokenizer, tmp_path, offline_wandb):
    train_data, vq = dataset
    out = tmp_path / "run"
    train(tiny_config(), train_data, out, caption_tokenizer, vq, progress=False, stop_after=2)
    train(tiny_config(), train_data, out, caption_tokenizer, vq, progress=False)

    first, second = offline_runs(offline_wandb)
    # The resumed training run reopened the same W&B run, whose id the checkpoint keeps.
    saved_id = json.loads((list_checkpoints(out)[-1] / "trainer_state.json").read_text())["wandb_run_id"]
    assert first["id"] == second["id"] == saved_id
    assert sorted(first["history"]) == [1, 2] and sorted(second["history"]) == [3, 4]
    logged = {step: row["loss"] for run in (first, second) for step, row in run["history"].items()}
    assert logged == metrics_losses(out)
    assert {"lr", "grad_norm", "text_loss", "image_loss", "tokens_seen"} <= set(second["history"][4])
    assert first["config"]["lr"] == 3e-3 and first["config"]["processes"] == 1
    assert first["exit_code"] == second["exit_code"] == 0  # wandb.finish() ran after each invocation


def test_failed_training_finishes_the_wandb_run_as_failed(dataset, caption_tokenizer, tmp_path, offline_wandb):
    from gptdraw.gpt.model import build_model
    from gptdraw.sequence import SequenceLayout

    train_data, vq = dataset
    layout = SequenceLayout(text_vocab_size=caption_tokenizer.vocab_size, pad_id=caption_tokenizer.pad_id,
                            codebook_size=vq.codebook_size, text_len=caption_tokenizer.text_len, grid=train_data.grid)
    config = tiny_config()
    poisoned = build_model(config.model, layout)
    with torch.no_grad():
        poisoned.transformer.h[0].mlp.c_fc.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError):
        train(config, train_data, tmp_path / "run", caption_tokenizer, vq, init_model=poisoned, progress=False)
    (run,) = offline_runs(offline_wandb)
    assert run["exit_code"] == 1 and run["history"] == {}


def test_wandb_asked_for_but_not_installed_is_a_clear_error(dataset, caption_tokenizer, tmp_path, monkeypatch):
    train_data, vq = dataset
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(ValueError, match="wandb package is not installed: pip install wandb"):
        train(tiny_config(), train_data, tmp_path / "run", caption_tokenizer, vq, progress=False)
    assert not (tmp_path / "run").exists()  # refused before any work
