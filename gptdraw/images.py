"""Small image helpers: PIL images ↔ tensors, and labelled sample grids.

The public tensor convention of gptdraw is float32 (B, 3, H, W) with values in [0, 1].
"""

from __future__ import annotations

import textwrap

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from gptdraw.data.decode import BadInput, decode_image, to_rgb


def pil_to_tensor(images: list[Image.Image], size: int | None = None) -> torch.Tensor:
    """Stack PIL images (any mode) into a float32 (B, 3, H, W) tensor in [0, 1], read as
    `prepare` reads them (gptdraw.data.decode: upright, transparent pixels on white).

    With `size`, each image is resized (shorter side to `size`) and centre-cropped to
    size × size; without it, all images must already have the same size.
    """
    if len(images) == 0:
        raise ValueError("pil_to_tensor needs at least one image")
    arrays = []
    for index, image in enumerate(images):
        try:
            # (H, W, 3) uint8, resized and cropped to size × size when a size is given
            array = decode_image(image, size, min_size=1) if size is not None else np.asarray(to_rgb(image), dtype=np.uint8)
        except BadInput as error:
            raise ValueError(f"image {index} cannot be used: {error}") from None
        if arrays and array.shape != arrays[0].shape:
            raise ValueError(
                f"image {index} has size {array.shape[1]}x{array.shape[0]} but image 0 has "
                f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; pass size= to resize them"
            )
        arrays.append(array)
    batch = torch.from_numpy(np.stack(arrays))  # (B, H, W, 3) uint8
    return batch.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)


def uint8_to_tensor(images: np.ndarray) -> torch.Tensor:
    """A uint8 array (B, H, W, 3) → float32 (B, 3, H, W) in [0, 1]."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array (B, H, W, 3), got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """A (B, 3, H, W) or (3, H, W) tensor in [0, 1] → RGB PIL images (values clamped)."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    pixels = images.detach().float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    return [Image.fromarray(array, mode="RGB") for array in pixels]


def make_grid(
    images: list[Image.Image],
    columns: int,
    labels: list[str] | None = None,
    pad: int = 2,
) -> Image.Image:
    """Tile images in rows of `columns` on a white sheet, each optionally with a label below.

    Tiles take the size of the largest image; labels are wrapped to the tile width and
    drawn with Pillow's default font.
    """
    if not images:
        raise ValueError("make_grid needs at least one image")
    if columns <= 0:
        raise ValueError(f"columns must be positive, got {columns}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images")
    tile_width = max(image.width for image in images)
    tile_height = max(image.height for image in images)

    font = ImageFont.load_default()
    line_height = 0
    wrapped: list[list[str]] = []
    if labels is not None:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        left, top, right, bottom = probe.textbbox((0, 0), "Ag", font=font)
        char_width = max(1, (right - left) // 2)
        line_height = bottom - top + 2
        chars_per_line = max(4, tile_width // char_width)
        wrapped = [textwrap.wrap(label, chars_per_line) or [""] for label in labels]
    label_height = line_height * max((len(lines) for lines in wrapped), default=0)

    rows = (len(images) + columns - 1) // columns
    cell_width = tile_width + pad
    cell_height = tile_height + label_height + pad
    sheet = Image.new("RGB", (pad + columns * cell_width, pad + rows * cell_height), "white")
    draw = ImageDraw.Draw(sheet)
    for index, image in enumerate(images):
        x = pad + (index % columns) * cell_width
        y = pad + (index // columns) * cell_height
        sheet.paste(image.convert("RGB"), (x, y))
        for line_index, line in enumerate(wrapped[index] if wrapped else []):
            draw.text((x, y + tile_height + line_index * line_height), line, fill="black", font=font)
    return sheet
