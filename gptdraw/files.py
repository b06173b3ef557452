"""Writing files so that a crash never leaves half of one: the one copy of write-then-replace.

A reader (or a resumed run) sees the old file or the new one, never a mix: each writer fills a
temporary file or folder beside the target, flushes it to disk, and renames it into place. What a
killed writer leaves beside the target (a temporary file, a staging folder, the old folder renamed
aside) is put right by recover_leftovers, which the next writer of the same target calls first.

A full disk is one error, DiskFullError, naming the file, however the library that wrote it words it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
"""A full disk, and a full quota, which the user fixes the same way."""
FULL_DISK_MARGIN = 1 << 20
"""Bytes left on a filesystem under which a writer's unexplained failure is taken for a full disk
(torch.save says only "unexpected pos 576 vs 534" when the disk fills)."""


class DiskFullError(OSError):
    """The disk filled up while writing `filename`. Nothing already written is lost: once space is
    freed, the same command resumes from what is on disk."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def is_full_disk(error: BaseException, path: str | os.PathLike | None = None) -> bool:
    """Whether `error` means the disk (or quota) is full: an OSError with that errno, a library's
    message that says so (safetensors: "No space left on device (os error 28)"), or a RuntimeError
    while the filesystem of `path` has under FULL_DISK_MARGIN bytes left."""
    if isinstance(error, OSError) and error.errno in FULL_DISK_ERRNOS:
        return True
    if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
        return True
    if isinstance(error, RuntimeError) and path is not None:
        try:
            return shutil.disk_usage(existing_parent(Path(path))).free < FULL_DISK_MARGIN
        except OSError:
            return False
    return False


def existing_parent(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@contextlib.contextmanager
def reporting_full_disk(path: str | os.PathLike) -> Iterator[None]:
    """Runs a write into `path` (a file or a folder); a full disk becomes DiskFullError naming it.
    Nested, the outermost name wins: it is the one the user knows (a file, not its temporary copy)."""
    try:
        yield
    except Exception as error:
        if is_full_disk(error, path):
            raise DiskFullError(path) from error
        raise


def dump_json(data) -> str:
    """JSON with sorted keys and a fixed layout, so equal content gives equal bytes."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_durable(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` and waits until it is on disk (a rename after it is then safe)."""
    with reporting_full_disk(path), open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write-temp-then-replace: readers see the old file or the new one, never a mix."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with reporting_full_disk(path):
            write_durable(temporary, data)
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """`data` as stable JSON (dump_json), written atomically."""
    write_text_atomic(path, dump_json(data))


def staging_directory(final: str | os.PathLike) -> Path:
    """A fresh hidden folder beside `final`, to fill before replace_directory moves it into place."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))


def replace_directory(staging: str | os.PathLike, final: str | os.PathLike) -> None:
    """Puts the filled folder `staging` at `final`. An old `final` is first renamed aside, not
    deleted, so that until the new one is in place the old one still exists whole on disk; a
    kill between the two renames leaves it there for recover_leftovers to put back."""
    staging, final = Path(staging), Path(final)
    recover_leftovers(final, keep=staging)
    if final.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
        os.replace(final, retired / final.name)
        os.replace(staging, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, final)


# mkdtemp's names end in 8 characters of this alphabet; write_bytes_atomic's in a uuid's 32 hex digits.
_MKDTEMP_TAIL, _UUID_TAIL = r"[a-z0-9_]{8}", r"[0-9a-f]{32}"


def recover_leftovers(final: str | os.PathLike, *, keep: str | os.PathLike | None = None) -> None:
    """Puts right what a killed writer of `final` left beside it, so that nothing half-written
    lingers or leaks disk space:

    - the old folder that replace_directory had renamed aside (`.NAME.old.XXXXXXXX/NAME`) goes back
      to `final` when `final` is missing (a kill between its two renames), and is deleted otherwise;
    - staging folders (`.NAME.XXXXXXXX`, from staging_directory) and temporary files
      (`.NAME.<uuid>.tmp`, from write_bytes_atomic) are deleted: they may be half-written.

    `keep`: a staging folder of this writer's own, which must stay. Only one writer may write
    `final` at a time (gptdraw.run_lock makes sure of that for a command's --out).
    """
    final = Path(final)
    parent, name = final.parent, re.escape(final.name)
    if not parent.is_dir():
        return
    retired = re.compile(rf"\.{name}\.old\.{_MKDTEMP_TAIL}")
    staged = re.compile(rf"\.{name}\.{_MKDTEMP_TAIL}|\.{name}\.{_UUID_TAIL}\.tmp")
    keep = Path(keep).resolve() if keep is not None else None
    for entry in sorted(parent.iterdir()):
        if retired.fullmatch(entry.name) and entry.is_dir():
            if not os.path.lexists(final) and (entry / final.name).is_dir():
                os.replace(entry / final.name, final)  # the old one, whole: better than none
            shutil.rmtree(entry, ignore_errors=True)
        elif staged.fullmatch(entry.name) and entry.resolve() != keep:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def output_directory(path: str | os.PathLike, *, flag: str = "--out") -> Path:
    """The folder a command writes into, made and checked before any work starts.

    Refused in one line naming `flag`: an empty path (it would mean the current folder), a path
    that is a file or lies under one, and a folder this process cannot write into (found out now,
    not after an hour of drawing).
    """
    if not str(path).strip():
        raise ValueError(f"{flag} is empty: name the folder to write into")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"{flag} {folder} lies under a file, not a folder") from None
    except OSError as error:  # permission denied, a read-only disk, a filesystem that makes no folders
        raise ValueError(f"{flag} {folder} cannot be made: {error.strerror or error}") from None
    try:
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check.", delete=True)
        probe.close()
    except OSError as error:
        raise ValueError(f"{flag} {folder} is not writable: {error.strerror or error}") from None
    return folder
