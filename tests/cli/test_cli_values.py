"""CLI values that used to end in tracebacks: a device this machine lacks, an --out that cannot be
written, and a disk that fills up mid-run (one line, and the same command resumes once space is freed)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from gptdraw.cli import main
from gptdraw.runtime import resolve_device

COMMANDS = {
    "train": ["train", "--data", "DATA"],
    "prepare": ["data", "prepare", "shapes", "--count", "8", "--image-tokenizer", "VQ"],
    "vq train": ["vq", "train", "--steps", "1"],
    "quickstart": ["quickstart"],
}
"""Every command that writes a run into --out, with the flags it needs besides --out."""


@pytest.fixture
def no_work(monkeypatch):
    """Makes the start of any command's real work fail the test at once (rather than run a quickstart)."""
    import gptdraw.apps.quickstart
    import gptdraw.data.prepare
    import gptdraw.gpt.train
    import gptdraw.vq.train

    def started(*args, **kwargs):
        pytest.fail("the command started its work before refusing the value")

    for module, name in [(gptdraw.apps.quickstart, "run_quickstart"), (gptdraw.data.prepare, "prepare"),
                         (gptdraw.gpt.train, "train"), (gptdraw.vq.train, "train_vq")]:
        monkeypatch.setattr(module, name, started)


def one_error_line(capsys) -> str:
    """The one line of the error (after any progress bar), checked to be the only one."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("error:") == 1, err
    return err.replace("\r", "\n").splitlines()[-1]


@pytest.mark.parametrize("device, message", [
    ("bogus", "is not a device"), ("cuda", "has no cuda device"), ("cuda:99", "has no cuda device"),
    ("meta", "not meta"), ("", "is not a device"),
])
@pytest.mark.parametrize("command", ["prepare", "vq train", "quickstart", "vq encode"])
def test_a_device_this_machine_lacks_is_one_line(tmp_path, capsys, monkeypatch, no_work, command, device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU build, on any machine
    out = tmp_path / ("codes.npy" if command == "vq encode" else "out")
    argv = ["vq", "encode", "IMAGE", "--image-tokenizer", "VQ"] if command == "vq encode" else COMMANDS[command]
    assert main([*argv, "--out", str(out), "--device", device]) == 2
    line = one_error_line(capsys)
    assert f"--device {device!r}" in line and message in line
    assert not out.exists()  # refused before any work


def test_a_gpu_index_beyond_the_machine_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"--device 'cuda:2': this machine has 2 cuda device\(s\), numbered from 0"):
        resolve_device("cuda:2")


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder no process may write into: a read-only tmpfs where this process may mount one (root
    ignores permission bits), else one without write permission."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("root here ignores permissions and may not mount a read-only tmpfs")
        folder.chmod(0o555)
    yield folder
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)
    folder.chmod(0o755)


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", ["a file", "under a file", "empty", "read-only"])
def test_an_out_that_cannot_be_written_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, request, no_work,
                                                                   command, case):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a folder")
    out = {"a file": "notes.txt", "under a file": "notes.txt/run", "empty": ""}.get(case)
    if case == "read-only":
        out = str(request.getfixturevalue("read_only_folder") / "run")
    before = sorted(tmp_path.rglob("*"))
    assert main([*COMMANDS[command], "--out", out]) == 2
    line = one_error_line(capsys)
    assert f"error: --out {out}" in line or (case == "empty" and "--out is empty" in line), line
    assert sorted(tmp_path.rglob("*")) == before  # nothing made: not in the current folder either


# ----------------------------------------------------------------------------- a full disk
TINY_MODEL = {"model": {"n_layer": 1, "n_head": 2, "n_embd": 16}}


def train_argv(data_dir: Path, out: Path, config: Path) -> list[str]:
    return ["train", "--data", str(data_dir), "--out", str(out), "--config", str(config), "--max-steps", "4",
            "--micro-batch-size", "4", "--lr", "3e-3", "--warmup-steps", "1", "--precision", "fp32", "--eval-every", "0",
            "--sample-every", "0", "--log-every", "1", "--checkpoint-every", "2", "--seed", "1"]


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def model_bytes(out: Path) -> dict[str, bytes]:
    parts = ["gptdraw.json", "transformer", "text_tokenizer", "image_tokenizer"]
    return {str(path.relative_to(out)): path.read_bytes() for part in parts for path in sorted((out / part).rglob("*"))
            if path.is_file()} | {"gptdraw.json": (out / "gptdraw.json").read_bytes()}


@pytest.fixture(scope="module")
def clean_run(shapes_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    (root / "tiny.json").write_text(json.dumps(TINY_MODEL))
    assert main(train_argv(shapes_data.data_dir, root / "run", root / "tiny.json")) == 0
    return root / "run", root / "tiny.json"


def fill_disk_before_checkpoint(monkeypatch, step: int, fill) -> None:
    """Runs `fill()` just before the checkpoint of `step` is written."""
    import gptdraw.gpt.train as training

    real = training.save_checkpoint

    def save_checkpoint(out_dir, done, *args, **kwargs):
        if done == step:
            fill()
        return real(out_dir, done, *args, **kwargs)

    monkeypatch.setattr(training, "save_checkpoint", save_checkpoint)


def assert_resumed_like_a_clean_run(shapes_data, clean_run, out: Path) -> None:
    """The same command again finishes the run: the clean run's losses, model and checkpoints."""
    clean, config = clean_run
    assert main(train_argv(shapes_data.data_dir, out, config)) == 0
    assert losses(out) == losses(clean)
    assert model_bytes(out) == model_bytes(clean)
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   SafetensorError("Error while serializing: I/O error: No space left on device "
                                                   "(os error 28)")], ids=["OSError", "SafetensorError"])
def test_a_full_disk_is_one_line_and_the_run_resumes(shapes_data, clean_run, tmp_path, capsys, monkeypatch, error):
    import gptdraw.gpt.checkpoint as checkpoint

    def full(*args, **kwargs):
        raise error

    out = tmp_path / "run"
    fill_disk_before_checkpoint(monkeypatch, 4, lambda: monkeypatch.setattr(checkpoint, "save_file", full))
    assert main(train_argv(shapes_data.data_dir, out, clean_run[1])) == 1
    assert one_error_line(capsys) == (
        f"gptdraw train: error: no space left on device while writing {out}/checkpoints/step-00000004/"
        "model.safetensors: free space and rerun the same command to resume")
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == ["step-00000002"]  # no half checkpoint
    monkeypatch.undo()  # space freed
    assert_resumed_like_a_clean_run(shapes_data, clean_run, out)


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MiB filesystem (tmpfs) to fill up, where this process may mount one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("this machine does not let the tests mount a small tmpfs to fill up")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """Fills `disk` but for about `leave` bytes; returns the filler file (delete it to free the space)."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free - leave
    with open(filler, "wb") as file:
        file.write(b"\0" * max(free, 0))
    return filler


PAGE = 4096


def pages(size: int) -> int:
    return -(-size // PAGE) * PAGE


@pytest.mark.parametrize("fails_in", ["checkpoint weights", "optimizer state", "model export"])
def test_a_really_full_disk_is_one_line_and_the_run_resumes(shapes_data, clean_run, small_disk, capsys, monkeypatch,
                                                            fails_in):
    checkpoint = clean_run[0] / "checkpoints" / "step-00000004"
    sizes = {name: pages((checkpoint / name).stat().st_size) for name in ("model.safetensors", "optimizer.pt",
                                                                           "trainer_state.json")}
    leave = {"checkpoint weights": 0, "optimizer state": sizes["model.safetensors"],
             "model export": sum(sizes.values()) + 2 * PAGE}[fails_in]
    out, filler = small_disk / "run", []
    fill_disk_before_checkpoint(monkeypatch, 4, lambda: filler.append(fill(small_disk, leave)))
    assert main(train_argv(shapes_data.data_dir, out, clean_run[1])) == 1
    line = one_error_line(capsys)
    written = {"checkpoint weights": f"{out}/checkpoints/step-00000004/model.safetensors",
               "optimizer state": f"{out}/checkpoints/step-00000004/optimizer.pt", "model export": str(out)}[fails_in]
    assert line == (f"gptdraw train: error: no space left on device while writing {written}: free space and rerun "
                    "the same command to resume")
    monkeypatch.undo()
    filler[0].unlink()  # space freed
    assert_resumed_like_a_clean_run(shapes_data, clean_run, out)
    assert [path.name for path in out.iterdir() if path.name.startswith(".")] == []  # nothing leaked


def test_prepare_on_a_really_full_disk_is_one_line_and_resumes(shapes_data, small_disk, tmp_path, capsys, monkeypatch):
    import gptdraw.data.shards as shards

    argv = ["data", "prepare", "shapes", "--count", "48", "--shard-size", "16", "--image-tokenizer",
            str(shapes_data.vq_dir), "--workers", "0", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "clean")]) == 0
    real, filler = shards.write_shard, []

    def write_shard(directory, index, *args, **kwargs):
        if index == 1 and not filler:
            filler.append(fill(small_disk, 0))
        return real(directory, index, *args, **kwargs)

    monkeypatch.setattr(shards, "write_shard", write_shard)
    out = small_disk / "data"
    assert main([*argv, "--out", str(out)]) == 1
    line = one_error_line(capsys)
    assert line == (f"gptdraw data: error: no space left on device while writing {out}/{shards.shard_name(1)}: free "
                    "space and rerun the same command to resume")
    monkeypatch.undo()
    filler[0].unlink()
    assert main([*argv, "--out", str(out)]) == 0
    assert "1 already done" in capsys.readouterr().out  # shard 0 was kept, not encoded again
    for path in sorted((tmp_path / "clean").rglob("*")):
        if path.is_file() and path.name != ".gptdraw.lock":
            assert path.read_bytes() == (out / path.relative_to(tmp_path / "clean")).read_bytes(), path
