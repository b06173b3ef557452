"""gptdraw.files: a folder replaced whole survives a kill at any instant, and a full disk is named."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from gptdraw.files import (
    DiskFullError, recover_leftovers, replace_directory, reporting_full_disk, staging_directory, write_bytes_atomic,
)


class Killed(BaseException):
    """Stands for a SIGKILL landing at that instant."""


def filled(final: Path, text: str) -> Path:
    staging = staging_directory(final)
    (staging / "weights").write_text(text)
    return staging


def replace_killed_at(monkeypatch, staging: Path, final: Path, rename: int) -> None:
    """replace_directory, killed just before its os.replace number `rename` (2: after both)."""
    real, count = os.replace, []

    def replace(source, target):
        if len(count) == rename:
            raise Killed
        count.append(target)
        real(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        replace_directory(staging, final)
        raise Killed  # rename 2: the kill lands after both renames, before the old folder is deleted
    monkeypatch.undo()


def hidden(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


@pytest.mark.parametrize("rename", [0, 1, 2])
def test_a_kill_inside_replace_directory_leaves_a_whole_folder_after_recovery(tmp_path, monkeypatch, rename):
    final = tmp_path / "transformer"
    replace_directory(filled(final, "old"), final)
    replace_killed_at(monkeypatch, filled(final, "new"), final, rename)
    if rename == 1:  # between the renames: the old folder is aside, none in place
        assert not final.exists()
    recover_leftovers(final)
    assert (final / "weights").read_text() == ("new" if rename == 2 else "old")
    assert hidden(tmp_path) == []


def test_the_next_replace_cleans_up_what_a_killed_one_left(tmp_path, monkeypatch):
    final = tmp_path / "step-00000004"
    replace_directory(filled(final, "old"), final)
    replace_killed_at(monkeypatch, filled(final, "half"), final, 1)
    filled(final, "half-written staging of a killed writer")
    replace_directory(filled(final, "new"), final)
    assert (final / "weights").read_text() == "new"
    assert hidden(tmp_path) == []


def test_recovery_touches_only_the_leftovers_of_its_own_target(tmp_path):
    final = tmp_path / "transformer"
    final.mkdir()
    others = [tmp_path / ".transformer-notes", tmp_path / ".text_tokenizer.abcd1234", tmp_path / ".transformer.lock"]
    for path in others:
        path.mkdir()
    mine = filled(final, "a writer's own staging")
    (tmp_path / f".gptdraw.json.{'0' * 32}.tmp").write_text("{")
    recover_leftovers(final, keep=mine)
    recover_leftovers(tmp_path / "gptdraw.json")
    assert hidden(tmp_path) == sorted(path.name for path in [*others, mine])


def test_a_full_disk_is_one_error_naming_the_file(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFullError) as caught:
        write_bytes_atomic(tmp_path / "metrics.json", b"{}")
    assert caught.value.filename == str(tmp_path / "metrics.json")
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone: its space is free again
    with pytest.raises(DiskFullError, match="model.safetensors"):
        with reporting_full_disk(tmp_path / "model.safetensors"):
            raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    with pytest.raises(RuntimeError, match="unrelated"):  # other errors pass through untouched
        with reporting_full_disk(tmp_path / "model.safetensors"):
            raise RuntimeError("unrelated")
