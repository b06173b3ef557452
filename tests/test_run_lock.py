"""One run at a time per --out: a second run is refused at once, naming the holder; a lock left
by a killed run is taken over silently."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from conftest import HANG_SECONDS
from gptdraw.cli import main
from gptdraw.run_lock import FolderInUseError, lock_path, run_lock

HOLDER = """
import sys
from gptdraw.run_lock import run_lock
with run_lock(sys.argv[1], command="gptdraw train --out held-by-the-test", beside=sys.argv[2] == "beside"):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin, or kills this process
"""
TRAIN_FLAGS = ["--preset", "tiny", "--max-steps", "2", "--micro-batch-size", "4", "--lr", "3e-3", "--warmup-steps", "1",
               "--precision", "fp32", "--eval-every", "0", "--sample-every", "0", "--checkpoint-every", "2", "--seed", "1"]


def hold(folder, beside: bool = False) -> subprocess.Popen:
    """Another process that takes `folder`'s lock and keeps it."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), "beside" if beside else "inside"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_train_on_the_same_out_is_refused_naming_the_holder(shapes_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = hold(out)
    try:
        result = subprocess.run([sys.executable, "-m", "gptdraw.cli", "train", "--data", str(shapes_data.data_dir),
                                 "--out", str(out), *TRAIN_FLAGS], capture_output=True, text=True, timeout=HANG_SECONDS)
    finally:
        holder.kill()
        holder.wait(timeout=HANG_SECONDS)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"--out {out} is in use by another run (pid {holder.pid} on " in lines[0]
    assert "`gptdraw train --out held-by-the-test`, since 20" in lines[0]
    assert sorted(path.name for path in out.iterdir()) == [".gptdraw.lock"]  # it wrote nothing


@pytest.mark.parametrize("command, beside", [
    (["data", "prepare", "shapes", "--count", "8", "--image-tokenizer", "VQ"], False),
    (["vq", "train", "--steps", "1"], True),  # replaces --out whole: the lock sits beside it
    (["quickstart"], False),
])
def test_prepare_vq_train_and_quickstart_are_refused_too(tmp_path, capsys, command, beside):
    out = tmp_path / "out"
    out.mkdir()
    holder = hold(out, beside=beside)
    try:
        assert main([*command, "--out", str(out)]) == 2
    finally:
        holder.stdin.close()
        holder.wait(timeout=HANG_SECONDS)
    assert f"is in use by another run (pid {holder.pid} on " in capsys.readouterr().err
    assert list(out.iterdir()) == []  # nothing written, and the holder removed its lock file when it ended


def test_the_lock_of_a_killed_run_is_taken_over_silently(shapes_data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = hold(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=HANG_SECONDS)
    assert b"held-by-the-test" in lock_path(out).read_bytes()  # the dead run's note is still there
    assert main(["train", "--data", str(shapes_data.data_dir), "--out", str(out), *TRAIN_FLAGS]) == 0
    assert "in use" not in capsys.readouterr().err
    assert not lock_path(out).exists()  # released, and removed, at the end
    assert (out / "checkpoints" / "step-00000002").is_dir()


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    with run_lock(tmp_path, command="first"):
        with pytest.raises(FolderInUseError, match=rf"pid {os.getpid()} .*`first`"):
            with run_lock(tmp_path, command="second"):
                pass
    with run_lock(tmp_path, command="third"):  # free again once the first is done
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_opened_the_lock_file_as_its_holder_removed_it_takes_a_fresh_one(tmp_path, monkeypatch):
    import gptdraw.run_lock as run_lock_module

    real_flock, outer = run_lock_module.fcntl.flock, []

    def flock(descriptor, operation):
        # The first holder finishes (and removes the file) between this run's open and its lock.
        if not outer:
            outer.append(True)
            os.unlink(lock_path(tmp_path))
        return real_flock(descriptor, operation)

    monkeypatch.setattr(run_lock_module.fcntl, "flock", flock)
    with run_lock(tmp_path, command="newcomer"):
        assert b"newcomer" in lock_path(tmp_path).read_bytes()  # it holds the file that is there now
