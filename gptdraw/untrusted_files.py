"""Reading files someone else made: model directories, tokenizers, `--config` files.

Any of them may be a link to /dev/zero, a FIFO, 100 MB of noise, a pickle named
`.safetensors`, or a safetensors header that lies about its tensors. The readers here open
only regular files (a FIFO is opened without blocking, then refused), inside the folders they
are allowed to be in, up to a size cap, and check a safetensors header against the file's
length before a byte of weights is read. Every refusal is one ValueError line naming the file.

Torch-free at import (`check_finite` imports it when called), so configs can use these readers.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

JSON_LIMIT = 4 * 2**20
"""Largest config file read (4 MiB): gptdraw's own are under 10 kB."""
TOKENIZER_LIMIT = 64 * 2**20
"""Largest tokenizer file read (64 MiB): GPT-2's tokenizer.json is 1.4 MB, the biggest common ones under 20 MB."""
HEADER_LIMIT = 100 * 2**20
"""Largest safetensors header read (100 MB, safetensors' own limit)."""

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
"""Bytes per element of each safetensors dtype."""
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
"""The dtypes a network's weights may be stored in."""


def size_text(count: int) -> str:
    return f"{count / 2**20:g} MiB" if count >= 2**20 else f"{count} bytes"


def confine(path: str | os.PathLike, within: Sequence[Path] | None) -> Path:
    """`path`, refused when it resolves (through links) outside every folder of `within` (None: anywhere)."""
    path = Path(path)
    if within is None:
        return path
    real = path.resolve()
    if not any(real.is_relative_to(root.resolve()) for root in within):
        raise ValueError(f"{path} is a link to {real}, outside {Path(within[0])}: refused")
    return path


def _open_regular(path: Path, within: Sequence[Path] | None):
    """An open binary file that is a regular file; a device, FIFO, folder or escaping link is refused."""
    confine(path, within)
    try:  # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket")
        raise ValueError(f"{path} is {kind}, not a regular file: refused")
    return os.fdopen(descriptor, "rb")


def read_bytes(path: str | os.PathLike, limit: int, *, within: Sequence[Path] | None = None,
               what: str = "file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes (`what` names it in the error)."""
    path = Path(path)
    with _open_regular(path, within) as file:
        size = os.fstat(file.fileno()).st_size
        data = file.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        raise ValueError(f"{path} is {size_text(max(size, len(data)))}, over the {size_text(limit)} limit for a {what}")
    return data


def read_text(path: str | os.PathLike, limit: int = JSON_LIMIT, *, within: Sequence[Path] | None = None,
              what: str = "config") -> str:
    """A regular UTF-8 text file of at most `limit` bytes."""
    data = read_bytes(path, limit, within=within, what=what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None


def read_json(path: str | os.PathLike, limit: int = JSON_LIMIT, *, within: Sequence[Path] | None = None,
              what: str = "config") -> object:
    """A JSON file of at most `limit` bytes, parsed; empty, cut, not JSON or nested too deep is one line."""
    text = read_text(path, limit, within=within, what=what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    except (RecursionError, ValueError) as error:  # nested too deep, or an integer of 5,000 digits
        raise ValueError(f"{path} is not JSON gptdraw can read: {str(error)[:200] or type(error).__name__}") from None


def read_json_object(path: str | os.PathLike, limit: int = JSON_LIMIT, *, within: Sequence[Path] | None = None,
                     what: str = "config") -> dict:
    """A JSON file that must hold an object (a mapping of names to values)."""
    data = read_json(path, limit, within=within, what=what)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object of names to values, not {type(data).__name__}")
    return data


def whole(value, name: str, low: int, high: int) -> int:
    """`value` when it is an integer (not a bool) in [low, high]; else one line naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number in [{low}, {high}], got {value!r}")
    return value


def real(value, name: str, low: float, high: float, *, open_high: bool = False) -> float:
    """`value` when it is a finite number (not a bool) in [low, high] (or [low, high) with open_high)."""
    finite = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not finite or not low <= value <= high or (open_high and value == high):
        raise ValueError(f"{name} must be a finite number in [{low}, {high}{')' if open_high else ']'}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as a safetensors header describes it."""

    dtype: str | None
    """safetensors' dtype name (F32, BF16, I64, ...); None where it is not known (a state dict being checked)."""
    shape: tuple[int, ...]


def safetensors_header(path: str | os.PathLike, *, within: Sequence[Path] | None = None) -> dict[str, TensorEntry]:
    """The tensors a safetensors file holds, read from its header only, after checking that every
    tensor's bytes lie inside the file: a pickle, a text file or a cut or lying file is one line."""
    path = Path(path)
    with _open_regular(path, within) as file:
        size = os.fstat(file.fileno()).st_size
        start = file.read(8)
        length = struct.unpack("<Q", start)[0] if len(start) == 8 else None
        if length is None or length > min(HEADER_LIMIT, size - 8):
            raise ValueError(f"cannot read {path}: not a readable safetensors file (or cut short): its first 8 bytes do not "
                             f"give the length of a header within its {size} bytes")
        header = file.read(length)
    try:
        entries = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError(f"cannot read {path}: not a readable safetensors file: its header is not JSON") from None
    if not isinstance(entries, dict):
        raise ValueError(f"cannot read {path}: not a readable safetensors file: its header is not a JSON object")
    entries.pop("__metadata__", None)
    data_size = size - 8 - length
    return {name: _tensor_entry(path, name, entry, data_size) for name, entry in entries.items()}


def _tensor_entry(path: Path, name: str, entry, data_size: int) -> TensorEntry:
    """One header entry, checked: a known dtype, a shape of whole numbers, and offsets inside the
    data that hold exactly that many bytes."""
    if not isinstance(entry, dict) or entry.get("dtype") not in DTYPE_BYTES:
        raise ValueError(f"{path}: tensor {name} has no known dtype in the header")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    numbers = (shape if isinstance(shape, list) else [None]) + (offsets if isinstance(offsets, list) else [None])
    if len(offsets or ()) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        raise ValueError(f"{path}: tensor {name} has no valid shape and data offsets in the header")
    begin, end = offsets
    expected = math.prod(shape) * DTYPE_BYTES[entry["dtype"]]
    if not begin <= end <= data_size or end - begin != expected:
        raise ValueError(f"{path}: tensor {name} claims bytes {begin}..{end} for {expected} bytes of data, but the "
                         f"file holds {data_size} bytes of data: the header lies or the file is cut short")
    return TensorEntry(dtype=entry["dtype"], shape=tuple(shape))


def check_tensors(source: str | os.PathLike, found: dict[str, TensorEntry], expected: dict[str, tuple[int, ...]],
                  *, optional: Iterable[str] = ()) -> None:
    """Refuses, in one line naming `source` (a file or checkpoint), tensors that are not exactly
    `expected` (name → shape; the names in `optional` may be absent), or not floating point where
    `found` gives a dtype: missing, unexpected and misshapen ones are counted, the first few named."""
    optional = set(optional)
    missing = [name for name in expected if name not in found and name not in optional]
    unexpected = [name for name in found if name not in expected]
    mismatched = [f"{name}: checkpoint {found[name].shape} vs model {tuple(shape)}" for name, shape in expected.items()
                  if name in found and found[name].shape != tuple(shape)]
    not_float = [f"{name} {found[name].dtype}" for name in expected if name in found
                 and found[name].dtype is not None and found[name].dtype not in FLOAT_DTYPES]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched),
                         ("tensors not floating point", not_float)):
        if items:
            problems.append(f"{len(items)} {label} ({', '.join(items[:5])}{', ...' if len(items) > 5 else ''})")
    if problems:
        raise ValueError(f"weights from {source} do not fit the model: " + "; ".join(problems))


def check_finite(path: str | os.PathLike, tensors: Iterable[tuple[str, object]]) -> None:
    """Refuses weights holding NaN or infinity, naming the first such tensor (a model with them
    draws blank pictures without a word)."""
    import torch

    for name, tensor in tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{path}: tensor {name} holds NaN or infinite values: the weights are damaged")
