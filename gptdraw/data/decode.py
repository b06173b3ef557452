"""Turn raw source items into clean training inputs: RGB pixel squares and tidy captions.

Everything here meets untrusted bytes from the web, so every failure becomes a `BadInput`
with a short reason key (counted per reason by `gptdraw prepare`) instead of a crash:

    undecodable   not an image Pillow can read
    truncated     the file ends early (a cut download)
    too_small     shorter side below `min_size` pixels: upscaling it would only add blur
    too_many_bytes  a file or blob over `max_bytes`, refused before it is read
    not_a_file    a path to something that is not a regular file (a device, a FIFO, a folder)
    too_large     more than `max_pixels` pixels: a decompression bomb guard, checked on the
                  header before any pixel is decoded
    missing_file  a path that does not exist or cannot be read
    missing_image an item without any image
    missing_caption / empty_caption   no caption, or only whitespace and control characters

`decode_parallel` runs `decode_image` in a pool of processes, in order, with a bounded
amount of work in flight so memory stays flat however long the source is.

This is the one way gptdraw reads a picture: `prepare`, `train-vq --images`, `vq encode|eval`,
`complete` and `vary` all come through `decode_image` (or `to_rgb`, for a picture kept at its
own size), so that a transparent PNG or a phone photo taken sideways gives the same codes to
training and to editing.
"""

from __future__ import annotations

import io
import os
import stat
import unicodedata
import warnings
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps

# Smallest accepted shorter side, in pixels: the built-in shapes start at 32.
DEFAULT_MIN_SIZE = 32
# Largest accepted image, in pixels (about 8000 × 8000); web photos are far below it.
DEFAULT_MAX_PIXELS = 64_000_000
# Largest accepted encoded image, in bytes: a 64-megapixel photo is a few tens of MB.
DEFAULT_MAX_BYTES = 128 * 2**20
# Items sent to a worker at once: enough to amortise pickling, small enough to keep order cheap.
DEFAULT_CHUNK_SIZE = 32
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
"""File name endings read as images when a folder is scanned."""


class BadInput(Exception):
    """An item that cannot be used; `reason` is a short key counted in the dataset manifest."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodeConfig:
    """How images are checked and resized."""

    size: int  # output side in pixels: images become size × size RGB squares
    min_size: int = DEFAULT_MIN_SIZE  # shorter sides below this are skipped as too_small
    max_pixels: int = DEFAULT_MAX_PIXELS  # width × height above this are skipped as too_large
    max_bytes: int = DEFAULT_MAX_BYTES  # encoded images bigger than this are skipped unread as too_many_bytes

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"size must be positive, got {self.size}")
        if self.min_size < 1:
            raise ValueError(f"min_size must be at least 1, got {self.min_size}")
        if self.max_pixels < self.size * self.size:
            raise ValueError(f"max_pixels {self.max_pixels} is below one output image ({self.size}²)")


def decode_image(
    image: bytes | str | Image.Image | None,
    size: int,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Encoded bytes, a file path or a PIL image → uint8 (size, size, 3) RGB.

    The shorter side is resized to `size` and the centre square kept. Grayscale, CMYK,
    palette, 16-bit and alpha images are converted (alpha composited on white) and EXIF
    orientation is applied. Raises BadInput(reason) for anything unusable.
    """
    return _decode(image, DecodeConfig(size=size, min_size=min_size, max_pixels=max_pixels, max_bytes=max_bytes))


def _decode(image: bytes | str | Image.Image | None, options: DecodeConfig) -> np.ndarray:
    if image is None:
        raise BadInput("missing_image")
    if isinstance(image, Image.Image):
        return _to_square(image, options)
    if isinstance(image, (bytes, bytearray, memoryview)):
        if len(image) > options.max_bytes:
            raise BadInput("too_many_bytes", f"{len(image)} bytes is over {options.max_bytes}")
        stream = io.BytesIO(image)
    else:
        stream = io.BytesIO(read_file(image, options.max_bytes))
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below replaces Pillow's process-wide bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(stream)
            return _to_square(opened, options)
    except BadInput:
        raise
    except Image.DecompressionBombError as error:
        raise BadInput("too_large", str(error)) from None
    except (OSError, EOFError, SyntaxError, ValueError, TypeError, IndexError, MemoryError) as error:
        # Pillow reports a cut file as "image file is truncated" or an early EOF.
        message = str(error)
        if isinstance(error, EOFError) or "truncated" in message.lower() or "premature end" in message.lower():
            raise BadInput("truncated", message) from None
        raise BadInput("undecodable", f"{type(error).__name__}: {message}") from None


def read_file(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """A regular file's bytes; BadInput for anything else (a device such as /dev/zero, a FIFO,
    which would block, a folder) and for a file over `max_bytes`, refused before it is read."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise BadInput("missing_file", f"{path}: {error.strerror or error}") from None
    except ValueError:  # a path holding a NUL byte names no file
        raise BadInput("missing_file", f"{path!r} is not a file name") from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise BadInput("not_a_file", f"{path} is not a regular file")
        if status.st_size > max_bytes:
            raise BadInput("too_many_bytes", f"{path}: {status.st_size} bytes is over {max_bytes}")
        with os.fdopen(os.dup(descriptor), "rb") as file:
            data = file.read(max_bytes + 1)  # the file may have grown since fstat
    finally:
        os.close(descriptor)
    if len(data) > max_bytes:
        raise BadInput("too_many_bytes", f"{path} is over {max_bytes} bytes")
    return data


def _to_square(image: Image.Image, options: DecodeConfig) -> np.ndarray:
    size = options.size
    width, height = image.size  # from the header: nothing is decoded yet
    if width * height > options.max_pixels:
        raise BadInput("too_large", f"{width}x{height} is over {options.max_pixels} pixels")
    if min(width, height) < options.min_size:
        raise BadInput("too_small", f"{width}x{height} is under {options.min_size} pixels on a side")
    if image.format == "JPEG" and image.mode in ("RGB", "L", "CMYK"):
        # Let libjpeg decode at a reduced scale (1/2 … 1/8) that still covers size × size
        # on both axes, so a rotation below cannot make the shorter side too short.
        image.draft(image.mode, (size, size))
    image = to_rgb(image)
    width, height = image.size
    if (width, height) == (size, size):
        pixels = np.asarray(image, dtype=np.uint8)
    else:
        # One resample from the centre square of the source (resize shorter side + centre crop).
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        box = (left, top, left + side, top + side)
        pixels = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, box=box), dtype=np.uint8)
    return np.ascontiguousarray(pixels)


def to_rgb(image: Image.Image) -> Image.Image:
    """An opened image as upright RGB: EXIF orientation applied, transparent pixels on white,
    16-bit values scaled (not clipped), palettes and CMYK converted."""
    image = ImageOps.exif_transpose(image)  # photos taken sideways carry an orientation tag
    mode = image.mode
    if mode == "RGB":
        image.load()
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # Pillow's convert("RGB") clips 16-bit values at 255, which turns most pixels white.
        values = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def image_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """The image files in `folder` (under it, with `recursive`), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(path for path in found if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file())


def load_images(paths: Iterable[str | os.PathLike], size: int, min_size: int = 1) -> tuple[np.ndarray, list[Path], list[str]]:
    """Image files → (uint8 (N, size, size, 3) squares, the paths read, "path: reason" of each
    file skipped). A file that cannot be used is skipped and reported, never fatal."""
    arrays, kept, skipped = [], [], []
    for path in map(Path, paths):
        try:
            arrays.append(decode_image(str(path), size, min_size=min_size))
            kept.append(path)
        except BadInput as error:
            skipped.append(f"{path}: {error}")
    pixels = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), dtype=np.uint8)
    return pixels, kept, skipped


# Unicode categories dropped from captions: invisible format characters (soft hyphens,
# zero-width spaces), lone surrogates and private-use code points. Control characters (Cc,
# tabs and newlines among them) become spaces instead, so the words they separate stay apart.
_DROPPED = {"Cf", "Cs", "Co"}


def clean_caption(text: str | bytes | None) -> str:
    """A caption with control characters removed and whitespace normalised; BadInput if nothing is left."""
    if text is None:
        raise BadInput("missing_caption")
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise BadInput("missing_caption", f"caption is a {type(text).__name__}, not text")
    text = unicodedata.normalize("NFC", text)
    text = "".join(
        " " if category == "Cc" else "" if category in _DROPPED else char
        for char, category in ((char, unicodedata.category(char)) for char in text)
    )
    text = " ".join(text.split())
    if not text:
        raise BadInput("empty_caption")
    return text


def _decode_chunk(images: list, options: DecodeConfig) -> list[tuple[np.ndarray | None, str | None]]:
    """Worker task: decode a chunk of images, each to (pixels, None) or (None, reason)."""
    results = []
    for image in images:
        try:
            results.append((_decode(image, options), None))
        except BadInput as error:
            results.append((None, error.reason))
    return results


def decode_parallel(
    items: Iterable,
    size: int,
    *,
    workers: int,
    min_size: int = DEFAULT_MIN_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Iterator[tuple[object, np.ndarray | None, str | None]]:
    """Decode the image of each SourceItem → (item, pixels or None, reason or None), in input order.

    Items that already carry a `skip_reason` (or no image) are passed through without
    work. With `workers` > 0 a process pool decodes chunks of `chunk_size` items, at most
    2 × workers chunks in flight; with 0 everything happens in this process.
    """
    options = DecodeConfig(size=size, min_size=min_size, max_pixels=max_pixels, max_bytes=max_bytes)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    chunks = _chunks(items, chunk_size)
    if workers == 0:
        for chunk in chunks:
            yield from _merge(chunk, _decode_chunk(_payloads(chunk), options))
        return
    # spawn, not fork: the parent may hold CUDA, OpenMP threads and locks that fork would copy.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        pending: deque[tuple[list, Future]] = deque()
        try:
            for chunk in chunks:
                pending.append((chunk, pool.submit(_decode_chunk, _payloads(chunk), options)))
                if len(pending) >= 2 * workers:
                    done_chunk, future = pending.popleft()
                    yield from _merge(done_chunk, future.result())
            while pending:
                done_chunk, future = pending.popleft()
                yield from _merge(done_chunk, future.result())
        except BrokenProcessPool as error:
            raise RuntimeError(
                "an image decoding worker died (out of memory, or a crash inside an image library); "
                "rerun with --workers 0 to find the item"
            ) from error
        finally:
            for _, future in pending:
                future.cancel()


def _chunks(items: Iterable, chunk_size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _payloads(chunk: list) -> list:
    # Only the image travels to the worker; skipped items send None and are ignored on return.
    return [None if item.skip_reason is not None else item.image for item in chunk]


def _merge(chunk: list, results: list) -> Iterator[tuple[object, np.ndarray | None, str | None]]:
    for item, (pixels, reason) in zip(chunk, results):
        if item.skip_reason is not None:
            yield item, None, item.skip_reason
        else:
            yield item, pixels, reason
