"""The model export of `gptdraw train` is whole or absent at every instant, and a rerun repairs it.

A kill is injected at each rename of the final export (before it, and after it), as a SIGKILL
would land there; the rerun of the same training must leave a model directory identical to the
one an uninterrupted run writes, with nothing half-written left beside it.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from gptdraw.gpt.checkpoint import CHECKPOINTS
from gptdraw.gpt.config import ModelConfig, TrainConfig
from gptdraw.gpt.train import EXPORT_NAME, train
from gptdraw.model_dir import MODEL_CONFIG_NAME, PARTS

CONFIG = TrainConfig(
    model=ModelConfig(n_layer=1, n_head=2, n_embd=16), max_steps=2, micro_batch_size=4, grad_accum=1, lr=3e-3,
    warmup_steps=1, log_every=1, eval_every=0, checkpoint_every=2, sample_every=0, precision="fp32", seed=3,
)
EXPORT_RENAMES = 8
"""os.replace calls of the final export: each of the three parts renamed aside then in, gptdraw.json, export.json."""


class Killed(BaseException):
    """Stands for a SIGKILL: nothing of the run's own error handling catches it."""


@pytest.fixture(scope="module")
def data(shapes_data, caption_tokenizer):
    train_data, _ = shapes_data.splits()
    return train_data, caption_tokenizer, shapes_data.vq


def run(data, out: Path, **changes):
    train_data, caption_tokenizer, vq = data
    return train(replace(CONFIG, **changes), train_data, out, caption_tokenizer, vq, progress=False)


def model_files(out: Path) -> dict[str, bytes]:
    """Every file of the model directory, by path, with its bytes."""
    files = {name: (out / name).read_bytes() for name in (MODEL_CONFIG_NAME, EXPORT_NAME)}
    for part in PARTS:
        files |= {str(path.relative_to(out)): path.read_bytes() for path in sorted((out / part).rglob("*"))}
    return files


def leftovers(out: Path) -> list[str]:
    """Hidden staging or retired folders and temporary files beside the model and the checkpoints."""
    found = [path.name for path in out.iterdir() if path.name.startswith(".") and path.name != ".gptdraw.lock"]
    return found + [path.name for path in (out / CHECKPOINTS).iterdir() if path.name.startswith(".")]


@pytest.fixture(scope="module")
def clean(data, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("clean") / "run"
    run(data, out)
    return model_files(out)


def kill_in_final_export(monkeypatch, out: Path, index: int, after: bool):
    """Makes the run die at os.replace number `index` of its final export (before or after the
    rename itself); returns the on_step callback that arms it once the last step is taken."""
    real_replace, calls = os.replace, []

    def replace_then_maybe_die(source, target, *args, **kwargs):
        relative = Path(os.path.abspath(target)).relative_to(out.absolute()) if calls else None
        counted = bool(calls) and relative.parts[0] != CHECKPOINTS  # the checkpoint comes before the export
        if counted and len(calls) - 1 == index and not after:
            raise Killed(f"before rename {index}")
        real_replace(source, target, *args, **kwargs)
        if counted:
            calls.append(str(relative))
            if len(calls) - 1 == index + 1 and after:
                raise Killed(f"after rename {index}")

    monkeypatch.setattr(os, "replace", replace_then_maybe_die)

    def arm(done: int) -> None:
        if done == CONFIG.max_steps:
            calls.append("armed")
    arm.calls = calls
    return arm


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("index", range(EXPORT_RENAMES))
def test_a_kill_at_any_rename_of_the_export_is_repaired_by_rerunning(data, clean, tmp_path, monkeypatch, index, after):
    out = tmp_path / "run"
    arm = kill_in_final_export(monkeypatch, out, index, after)
    with pytest.raises(Killed):
        train_data, caption_tokenizer, vq = data
        train(CONFIG, train_data, out, caption_tokenizer, vq, progress=False, on_step=arm)
    monkeypatch.undo()
    run(data, out)  # the same command again
    assert model_files(out) == clean
    assert leftovers(out) == []


def test_leftovers_of_killed_checkpoint_writes_are_cleaned_up_on_the_next_start(data, tmp_path):
    from gptdraw.files import staging_directory

    out = tmp_path / "run"
    run(data, out, max_steps=4)
    live = out / CHECKPOINTS / "step-00000004"
    # What kills leave: a checkpoint half-written in its staging folder, and an old one renamed aside.
    half = staging_directory(out / CHECKPOINTS / "step-00000006")
    (half / "model.safetensors").write_bytes(b"half")
    aside = staging_directory(out / CHECKPOINTS / "step-00000002.old")  # `.step-00000002.old.XXXXXXXX`
    (aside / "step-00000002").mkdir()
    before = {path.name: path.read_bytes() for path in live.iterdir()}
    run(data, out, max_steps=4)  # the same command again: nothing to train
    assert leftovers(out) == []
    assert {path.name: path.read_bytes() for path in live.iterdir()} == before


KILLED_IN_THE_RENAME = """
import os, sys
from pathlib import Path
import gptdraw.gpt.train as training
from gptdraw.cli import main

real_replace, real_export, final = os.replace, training.TrainingRun.export, []

def export(self, step):
    final.append(step == self.config.max_steps)
    return real_export(self, step)

def replace(source, target):
    real_replace(source, target)
    if final[-1:] == [True] and Path(target).name == "transformer":  # the old transformer/ is now aside
        os._exit(137)  # as a SIGKILL: no clean-up, no finally

training.TrainingRun.export, os.replace = export, replace
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.integration
def test_a_real_kill_between_the_renames_is_repaired_by_the_same_command(shapes_data, tmp_path):
    import subprocess
    import sys

    from conftest import HANG_SECONDS
    from gptdraw.pipeline import GPTDrawPipeline

    (tmp_path / "tiny.json").write_text(json.dumps({"model": {"n_layer": 1, "n_head": 2, "n_embd": 16}}))
    flags = ["--config", str(tmp_path / "tiny.json"), "--max-steps", "2", "--micro-batch-size", "4", "--warmup-steps",
             "1", "--precision", "fp32", "--eval-every", "0", "--sample-every", "0", "--checkpoint-every", "2"]
    train_argv = ["train", "--data", str(shapes_data.data_dir), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # The clean run too in a process of one thread: with another thread count the sums of a step
    # add up in another order, and the weights differ in their last bits.
    clean = subprocess.run([sys.executable, "-m", "gptdraw.cli", *train_argv, "--out", str(tmp_path / "clean")],
                           env=env, capture_output=True, text=True, timeout=HANG_SECONDS)
    assert clean.returncode == 0, clean.stderr[-2000:]
    out = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_THE_RENAME, *train_argv, "--out", str(out)], env=env,
                            capture_output=True, text=True, timeout=HANG_SECONDS)
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert not (out / "transformer").exists()  # killed between the renames: no transformer/ at that instant
    rerun = subprocess.run([sys.executable, "-m", "gptdraw.cli", *train_argv, "--out", str(out)], env=env,
                           capture_output=True, text=True, timeout=HANG_SECONDS)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert model_files(out) == model_files(tmp_path / "clean")
    assert leftovers(out) == []
    assert len(GPTDrawPipeline.from_pretrained(out)(["a red circle"], seed=0)) == 1
