"""`gptdraw complete`, `gptdraw vary`, `gptdraw best-of`: editing with a trained model.

- complete: keep the top rows of an image's codes and draw the rest for a prompt.
- vary: variations of an image (its top quarter kept by default, the rest redrawn).
- best-of: draw N candidates and keep the best by the guidance score (or a local CLIP model).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from gptdraw.cli import UserError
from gptdraw.cli.drawing_options import add_drawing_options, sampling_overrides

# PIL, torch and transformers load inside the handlers, so that `--help` and argument errors stay fast.
if TYPE_CHECKING:
    from PIL import Image


def register(subparsers) -> None:
    complete = subparsers.add_parser("complete", help="complete an image from its top rows for a prompt")
    complete.add_argument("prompt", metavar="PROMPT", help="what to draw")
    complete.add_argument("--image", required=True, help="the image whose top is kept")
    complete.add_argument("--keep-rows", type=int, required=True, help="rows of codes kept from the top")
    complete.add_argument("--num-images", type=int, default=1, help="completions to draw")
    add_drawing_options(complete)
    complete.set_defaults(func=run_complete)

    vary = subparsers.add_parser("vary", help="variations of an image (top rows kept, the rest redrawn)")
    vary.add_argument("--image", required=True, help="the image to vary")
    vary.add_argument("--prompt", help="a caption guiding the redraw (default: none)")
    vary.add_argument("--keep-rows", type=int, help="rows of codes kept from the top (default: a quarter)")
    vary.add_argument("--num-images", type=int, default=4, help="variations to draw")
    add_drawing_options(vary)
    vary.set_defaults(func=run_vary)

    best = subparsers.add_parser("best-of", help="draw N candidates and keep the best")
    best.add_argument("prompt", metavar="PROMPT", help="what to draw")
    best.add_argument("--candidates", type=int, default=8, help="candidates to draw (default: 8)")
    best.add_argument("--keep", type=int, default=1, help="best candidates to keep (default: 1)")
    best.add_argument("--clip", help="local CLIP model directory to rank with (default: the guidance score)")
    add_drawing_options(best)
    best.set_defaults(func=run_best_of)


def _settings(args: argparse.Namespace) -> dict:
    return sampling_overrides(args)


def _open_image(path: str) -> Image.Image:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"cannot read image {path}: {error}") from None


def _load(args: argparse.Namespace):
    from gptdraw.pipeline import GPTDrawPipeline

    return GPTDrawPipeline.from_pretrained(args.model, device=args.device, revision=args.revision)


def _write(out: Path, stem: str, images: list[Image.Image], record: dict, extra: list[dict] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        path = out / f"{stem}-{index}.png"
        image.save(path)
        sidecar = {**record, "index": index, **(extra[index] if extra else {})}
        path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
        print(path)


def run_complete(args: argparse.Namespace) -> int:
    from gptdraw.editing import complete

    image = _open_image(args.image)
    pipe = _load(args)
    settings = pipe.settings(**_settings(args))
    images = complete(pipe, args.prompt, image, args.keep_rows, args.num_images, args.seed, **settings.to_dict())
    record = {"prompt": args.prompt, "image": args.image, "keep_rows": args.keep_rows, "seed": args.seed,
              **settings.to_dict(), "model": str(args.model)}
    _write(Path(args.out), "complete", images, record)
    return 0


def run_vary(args: argparse.Namespace) -> int:
    from gptdraw.editing import variations

    image = _open_image(args.image)
    pipe = _load(args)
    settings = pipe.settings(**_settings(args))
    images = variations(pipe, image, args.prompt, args.num_images, args.keep_rows, args.seed, **settings.to_dict())
    record = {"prompt": args.prompt, "image": args.image, "keep_rows": args.keep_rows, "seed": args.seed,
              **settings.to_dict(), "model": str(args.model)}
    _write(Path(args.out), "variation", images, record)
    return 0


def run_best_of(args: argparse.Namespace) -> int:
    from gptdraw.editing import best_of

    pipe = _load(args)
    settings = pipe.settings(**_settings(args))
    ranking = best_of(pipe, args.prompt, args.candidates, args.keep, args.seed, args.clip, **settings.to_dict())
    if ranking.message:
        print(ranking.message)
    record = {"prompt": args.prompt, "candidates": args.candidates, "seed": args.seed, "ranked_by": ranking.ranked_by,
              **settings.to_dict(), "model": str(args.model)}
    extra = [
        {"candidate": i, "guidance_score": float(ranking.guidance[i]),
         "clip_score": float(ranking.clip[i]) if ranking.clip is not None else None}
        for i in ranking.indices
    ]
    _write(Path(args.out), "best", ranking.images, record, extra)
    return 0
