"""One run at a time per output folder: an exclusive lock that the kernel drops when its holder dies.

Two runs writing one folder would mix their files silently (one run's weights beside the other's
metrics), so a command takes the folder's lock before any work and holds it to the end. The lock
is `flock` on a small file, which names its holder (pid, host, command, start time) so that a
second run is refused with a line saying who. A run killed with SIGKILL needs no clean-up: the
kernel releases its lock with its last open descriptor, and the next run takes it over silently.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".gptdraw.lock"
"""The lock file's name inside the folder it guards."""


class FolderInUseError(RuntimeError):
    """Another live run holds the folder's lock."""


def lock_path(folder: str | os.PathLike, *, beside: bool = False) -> Path:
    """Where `folder`'s lock lives: inside it, or beside it (`.NAME.lock` in its parent) for a
    command that replaces the whole folder when it is done, lock file and all."""
    folder = Path(folder)
    if beside:
        folder = folder.absolute()  # "runs/vq/." names runs/vq
        return folder.parent / f".{folder.name}.lock"
    return folder / LOCK_NAME


def describe_holder(note: bytes) -> str:
    """The holder's note as words: "pid 12 on host, `gptdraw train …`, since 2025-01-02 03:04:05"."""
    try:
        holder = json.loads(note)
        return f"pid {holder['pid']} on {holder['host']}, `{holder['command']}`, since {holder['since']}"
    except (ValueError, KeyError, TypeError):  # taken an instant ago: its note is not written yet
        return "a run that has just started"


def take(path: Path, flag: str, folder) -> int:
    """An open descriptor of `path` holding its lock; FolderInUseError when a live process holds it."""
    while True:
        # No O_TRUNC: a refused run must not wipe the holder's note before reading it.
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(os.pread(descriptor, 4096, 0))
            os.close(descriptor)
            raise FolderInUseError(f"{flag} {folder} is in use by another run ({holder}); wait for it to end "
                                   f"or choose another {flag}") from None
        try:
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                return descriptor
        except FileNotFoundError:
            pass
        # A holder that was finishing removed the file between our open and our lock: lock the new one.
        os.close(descriptor)


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, *, command: str, flag: str = "--out", beside: bool = False) -> Iterator[None]:
    """Holds `folder`'s lock for the block; refuses at once (FolderInUseError, one line naming the
    holder) when another live process holds it. The lock file is removed at the end; one left by a
    killed run is taken over."""
    path = lock_path(folder, beside=beside)
    descriptor = take(path, flag, folder)
    try:
        # Whatever note is there was left by a run that died (the kernel released its lock): replace it.
        note = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(note).encode("utf-8"), 0)
        yield
    finally:
        # Removed while still locked, so that a newcomer who opened it meanwhile sees it is gone (take).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(descriptor)  # releases the lock
