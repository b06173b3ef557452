"""Writing files so that a crash never leaves half of one: the one copy of write-then-replace.

A reader (or a resumed run) sees the old file or the new one, never a mix: each writer fills a
temporary file or folder beside the target, flushes it to disk, and renames it into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path


def dump_json(data) -> str:
    """JSON with sorted keys and a fixed layout, so equal content gives equal bytes."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_durable(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` and waits until it is on disk (a rename after it is then safe)."""
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write-temp-then-replace: readers see the old file or the new one, never a mix."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
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
    deleted, so that until the new one is in place the old one still exists whole on disk."""
    staging, final = Path(staging), Path(final)
    if final.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
        os.replace(final, retired / final.name)
        os.replace(staging, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, final)


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
