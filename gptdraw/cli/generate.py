"""`gptdraw generate`: draw prompts with a trained model into PNGs with JSON sidecars."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from gptdraw.cli.drawing_options import add_drawing_options, sampling_overrides


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="draw pictures for prompts with a trained model")
    parser.add_argument("prompts", nargs="+", metavar="PROMPT", help="what to draw")
    add_drawing_options(parser)
    parser.add_argument("--num-images", type=int, default=1, help="images per prompt")
    parser.add_argument("--animate", action="store_true", help="also write a GIF of each image being drawn")
    parser.set_defaults(func=run)


def slug(text: str, limit: int = 60) -> str:
    """A file-name-safe form of a prompt."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def run(args: argparse.Namespace) -> int:
    # torch and transformers load here, not at import, so that `--help` and argument errors stay fast.
    from gptdraw.apps.animate import save_gif
    from gptdraw.pipeline import GPTDrawPipeline

    if args.num_images < 1:
        raise ValueError(f"--num-images must be at least 1, got {args.num_images}")
    pipe = GPTDrawPipeline.from_pretrained(args.model, device=args.device, revision=args.revision)
    settings = pipe.settings(**sampling_overrides(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    every = max(1, pipe.layout.image_len // 64) if args.animate else pipe.layout.image_len
    frames: list[list] = [[] for _ in range(len(args.prompts) * args.num_images)]
    final = None
    for final in pipe.stream(args.prompts, args.num_images, seed=args.seed, every=every, **settings.to_dict()):
        if args.animate:
            for index, image in enumerate(final.images):
                frames[index].append(image)
    used: set[str] = set()
    for index, image in enumerate(final.images):
        prompt = args.prompts[index // args.num_images]
        name = f"{slug(prompt)}-{index % args.num_images}"
        while name in used:  # the same prompt given twice
            name += "-again"
        used.add(name)
        image.save(out / f"{name}.png")
        sidecar = {
            "prompt": prompt,
            "seed": args.seed,
            "index": index % args.num_images,
            "num_images": args.num_images,
            "batch_prompts": args.prompts,
            **settings.to_dict(),
            "model": str(args.model),
        }
        (out / f"{name}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
        if args.animate:
            save_gif(frames[index], out / f"{name}.gif")
        print(out / f"{name}.png")
    return 0
