"""The drawing animation: an image appearing code by code, written as a GIF."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def enlarge(image: Image.Image, min_side: int) -> Image.Image:
    """Scales a small image up by a whole factor (nearest neighbour keeps codes crisp)."""
    factor = max(1, -(-min_side // min(image.size)))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def save_gif(frames: list[Image.Image], path: str | Path, min_side: int = 192, frame_ms: int = 60, hold_ms: int = 1500) -> None:
    """Writes frames as a looping GIF; the last (finished) frame is held longer."""
    if not frames:
        raise ValueError("no frames to animate")
    frames = [enlarge(frame, min_side) for frame in frames]
    durations = [frame_ms] * (len(frames) - 1) + [hold_ms]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=False)
