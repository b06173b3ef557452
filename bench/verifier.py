"""Benchmark the shapes dataset: render rate, and verifier accuracy on clean and degraded images.

Degradations imitate a VQGAN reconstruction: Gaussian blur, additive noise, JPEG, a dimmer
image with a grey backdrop, and a down-then-up resize. Prints a table and writes JSON
(default bench/out/verifier.json).

    python bench/verifier.py --count 300 --sizes 32 48 64 128 256
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageFilter
from tqdm import tqdm

from common import add_out_option, machine, write_result  # bench/common.py
from gptdraw.data import shapes
from gptdraw.eval import verifier

Degrade = Callable[[Image.Image, np.random.Generator], Image.Image | np.ndarray]


def _noisy(image: Image.Image | np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    pixels = np.asarray(image, np.float32) + rng.normal(0.0, sigma, (*np.asarray(image).shape,))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _down_up(image: Image.Image) -> Image.Image:
    half = image.size[0] // 2
    return image.resize((half, half), Image.BILINEAR).resize(image.size, Image.BILINEAR)


# name → degradation; blur radii and noise sigma are in pixels / 0..255 units at every size.
CONDITIONS: dict[str, Degrade] = {
    "clean": lambda image, rng: image,
    "blur0.5": lambda image, rng: image.filter(ImageFilter.GaussianBlur(0.5)),
    "blur1.0": lambda image, rng: image.filter(ImageFilter.GaussianBlur(1.0)),
    "noise4": lambda image, rng: _noisy(image, 4.0, rng),
    "noise8": lambda image, rng: _noisy(image, 8.0, rng),
    "blur1.0+noise8": lambda image, rng: _noisy(
        image.filter(ImageFilter.GaussianBlur(1.0)), 8.0, rng
    ),
    "blur1.5+noise8": lambda image, rng: _noisy(
        image.filter(ImageFilter.GaussianBlur(1.5)), 8.0, rng
    ),
    "jpeg75": lambda image, rng: _jpeg(image, 75),
    # Everything 10% darker after a slight blur: a light grey backdrop, dimmer colours.
    "blur0.7+dim0.9": lambda image, rng: (
        np.asarray(image.filter(ImageFilter.GaussianBlur(0.7)), np.float32) * 0.9
    ).astype(np.uint8),
    "down2x_up": lambda image, rng: _down_up(image),
}


def render_rate(image_size: int, count: int, seed: int) -> float:
    """Training examples rendered per second (held-out split applied)."""
    heldout = shapes.heldout_prompts()
    start = time.perf_counter()
    for _ in tqdm(
        shapes.generate_examples(count, image_size, seed=seed, heldout=heldout),
        total=count,
        desc=f"render {image_size}px",
        leave=False,
    ):
        pass
    return count / (time.perf_counter() - start)


def verifier_accuracy(image_size: int, count: int, seed: int) -> dict:
    """Verifier accuracy per condition on `count` generator images, with the commonest failures."""
    examples = list(shapes.generate_examples(count, image_size, seed=seed, heldout=shapes.heldout_prompts()))
    results = {}
    for name, degrade in CONDITIONS.items():
        rng = np.random.default_rng([seed, image_size])
        correct, reasons = 0, Counter()
        start = time.perf_counter()
        for image, text in tqdm(examples, desc=f"{image_size}px {name}", leave=False):
            verdict = verifier.verify(degrade(image, rng), text)
            correct += verdict.correct
            if not verdict.correct:
                reasons[verdict.reason] += 1
        results[name] = {
            "accuracy": correct / count,
            "verify_per_s": count / (time.perf_counter() - start),
            "top_failures": dict(reasons.most_common(3)),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="images per size and condition")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 48, 64, 128, 256])
    parser.add_argument(
        "--render-count", type=int, default=10_000, help="images for the 48 px render rate"
    )
    parser.add_argument("--seed", type=int, default=1234)
    add_out_option(parser, "verifier")
    args = parser.parse_args()
    for size in args.sizes:
        shapes.check_image_size(size)

    report: dict = {"machine": machine(torch.device("cpu")), "count": args.count, "render_per_s": {}, "verifier": {}}
    report["render_per_s"]["48"] = render_rate(48, args.render_count, args.seed)
    for size in args.sizes:
        report["render_per_s"].setdefault(
            str(size), render_rate(size, min(1000, args.render_count), args.seed)
        )
    for size in args.sizes:
        report["verifier"][str(size)] = verifier_accuracy(size, args.count, args.seed)

    rates = {size: round(rate) for size, rate in report["render_per_s"].items()}
    print(f"render rate (images/s): {json.dumps(rates)}")
    names = list(CONDITIONS)
    print(f"{'size':>5} " + " ".join(f"{name:>15}" for name in names) + f" {'verify/s':>9}")
    for size, by_condition in report["verifier"].items():
        cells = " ".join(f"{by_condition[name]['accuracy']:>15.3f}" for name in names)
        print(f"{size:>5} {cells} {by_condition['clean']['verify_per_s']:>9.0f}")
    write_result(report, args.out)


if __name__ == "__main__":
    main()
