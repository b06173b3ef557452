"""`gptdraw generate`: draw prompts with a trained model into PNGs with JSON sidecars.

Each image is written as soon as its batch is drawn, so a run stopped late keeps everything
drawn before. Files are named `<prompt slug>-<n>`: the slug is cut to SLUG_LIMIT characters
and n counts that slug's images, so the same prompt given many times never makes a name
longer, and a name already taken in --out (by an earlier run) is passed over, never overwritten.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
from pathlib import Path

from gptdraw.cli.drawing_options import add_drawing_options, sampling_overrides
from gptdraw.files import output_directory, write_bytes_atomic, write_text_atomic
from gptdraw.runtime import resolve_device

SLUG_LIMIT = 60
"""Characters of a prompt kept in its file names (a name stays far below the usual 255-byte limit)."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="draw pictures for prompts with a trained model")
    parser.add_argument("prompts", nargs="+", metavar="PROMPT", help="what to draw")
    add_drawing_options(parser)
    parser.add_argument("--num-images", type=int, default=1, help="images per prompt")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images drawn at once (default: 64); fewer use less memory, and the same seed "
                             "draws the same images whatever the batch size")
    parser.add_argument("--max-images", type=int, default=None,
                        help="refuse to draw more images than this in all, prompts × --num-images (default: 10,000)")
    parser.add_argument("--animate", action="store_true", help="also write a GIF of each image being drawn")
    parser.set_defaults(func=run)


def slug(text: str, limit: int = SLUG_LIMIT) -> str:
    """A file-name-safe form of a prompt."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "prompt"


class DrawingNames:
    """The file stems of one run's drawings in a folder: `<slug>-<n>`, n counting up per slug.

    A stem is taken when its .png, .json or .gif exists; the .png is created empty to claim a
    free stem (so a second run into the same folder cannot take it too) and then replaced whole.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.next_number: dict[str, int] = {}

    def claim(self, prompt: str) -> Path:
        base = slug(prompt)
        number = self.next_number.get(base, 0)
        while True:
            stem = self.folder / f"{base}-{number}"
            number += 1
            if Path(f"{stem}.json").exists() or Path(f"{stem}.gif").exists():
                continue
            try:
                open(f"{stem}.png", "xb").close()
            except FileExistsError:
                continue
            self.next_number[base] = number
            return stem


def save_drawing(stem: Path, image, sidecar: dict, frames: list | None) -> None:
    """Writes `<stem>.png`, its `.json` sidecar and, with frames, its `.gif`, each whole or not at all."""
    from gptdraw.apps.animate import save_gif

    png = io.BytesIO()
    image.save(png, format="PNG")
    try:
        write_bytes_atomic(f"{stem}.png", png.getvalue())
    except BaseException:
        Path(f"{stem}.png").unlink(missing_ok=True)  # the empty file that claimed the name
        raise
    write_text_atomic(f"{stem}.json", json.dumps(sidecar, indent=2, allow_nan=False) + "\n")
    if frames:
        partial = stem.with_name(f".{stem.name}.partial.gif")  # save_gif writes to a path: rename it in whole
        try:
            save_gif(frames, partial)
            os.replace(partial, f"{stem}.gif")
        finally:
            partial.unlink(missing_ok=True)


def sidecar_base(args: argparse.Namespace, settings: dict) -> dict:
    """What every sidecar of the run records, checked to be valid JSON before any drawing."""
    base = {"seed": args.seed, "num_images": args.num_images, "images_in_run": len(args.prompts) * args.num_images,
            **settings, "model": str(args.model)}
    try:
        json.dumps(base, allow_nan=False)
    except ValueError:
        raise ValueError(f"a sampling setting is not a finite number: {settings}") from None
    return base


def run(args: argparse.Namespace) -> int:
    # torch and transformers load here, not at import, so that `--help` and argument errors stay fast.
    from gptdraw.pipeline import MAX_BATCH, MAX_IMAGES, GPTDrawPipeline, check_image_count, check_whole

    # Everything that can be refused is refused before the model loads and before any drawing.
    check_whole(args.num_images, "--num-images")
    batch_size = MAX_BATCH if args.batch_size is None else args.batch_size
    check_whole(batch_size, "--batch-size")
    max_images = MAX_IMAGES if args.max_images is None else args.max_images
    check_image_count(len(args.prompts) * args.num_images, max_images, flag="--max-images")
    resolve_device(args.device, flag="--device")  # a device this machine lacks: refused before --out is made
    out = output_directory(args.out, flag="--out")
    pipe = GPTDrawPipeline.from_pretrained(args.model, device=args.device, revision=args.revision)
    settings = pipe.settings(**sampling_overrides(args))
    base = sidecar_base(args, settings.to_dict())
    every = max(1, pipe.layout.image_len // 64) if args.animate else pipe.layout.image_len
    steps = pipe.stream(args.prompts, args.num_images, seed=args.seed, every=every, max_batch=batch_size,
                        max_images=max_images, **settings.to_dict())
    names = DrawingNames(out)
    frames: dict[int, list] = {}  # image number → its frames so far, for the batch being drawn
    for step in steps:
        for offset, image in enumerate(step.images):
            if args.animate:
                frames.setdefault(step.first + offset, []).append(image)
        if step.codes_drawn < step.total_codes:
            continue
        for offset, image in enumerate(step.images):  # the batch is done: write it now
            number = step.first + offset
            prompt = args.prompts[number // args.num_images]
            sidecar = {"prompt": prompt, "index": number % args.num_images, "image_number": number, **base}
            try:
                stem = names.claim(prompt)
                save_drawing(stem, image, sidecar, frames.pop(number, None))
            except OSError as error:  # a full disk, the folder removed meanwhile: one line, and what is kept
                raise ValueError(f"--out {out}: could not write image {number + 1}: {error.strerror or error} "
                                 f"(the {number} before it are saved)") from None
            print(f"{stem}.png", flush=True)
    return 0
