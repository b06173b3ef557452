"""`gptdraw train-vq`: train an image tokenizer (VQGAN) on built-in shapes or a folder of images.

    gptdraw train-vq --out runs/vq                                   # shapes-f8 on 8,000 shapes images
    gptdraw train-vq --out runs/vq --images photos/ --preset taming-f16-16384 --steps 20000
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from gptdraw.cli import UserError
from gptdraw.vq.config import PRECISIONS, VQ_PRESETS, VQTrainConfig, vq_preset

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = VQTrainConfig()
    parser = subparsers.add_parser(
        "train-vq",
        help="train an image tokenizer (VQGAN) from scratch",
        description="Train an image tokenizer and save it as a gptdraw image-tokenizer directory, with "
        "reconstructions.png (originals above, reconstructions below) and train_vq.json (figures).",
    )
    parser.add_argument("--out", required=True, type=Path, help="image-tokenizer directory to write")
    parser.add_argument("--preset", default=defaults.preset, choices=sorted(VQ_PRESETS),
                        help="architecture (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimiser steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default: %(default)s)")
    parser.add_argument("--autoencoder-warmup", type=float, default=defaults.autoencoder_warmup, metavar="FRACTION",
                        help="fraction of the steps trained without quantisation before the codebook starts "
                        "(default: %(default)s; 0 for shapes-f4, measured best)")
    parser.add_argument("--precision", default=defaults.precision, choices=PRECISIONS,
                        help="autocast precision (default: %(default)s: bf16 where the hardware has it)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--images", type=Path, metavar="FOLDER",
                      help="train on every image file under FOLDER (resized and centre-cropped)")
    data.add_argument("--shapes-count", type=int, default=None,
                      help="train on this many built-in shapes images (the default data, 8000 images)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="training resolution (default: the preset's)")
    parser.set_defaults(func=run_train_vq)


def run_train_vq(args: argparse.Namespace) -> int:
    import torch

    from gptdraw.data.decode import image_files, load_images
    from gptdraw.vq.train import shapes_images, train_vq

    for name in ("steps", "batch_size", "shapes_count", "image_size"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    image_size = args.image_size or vq_preset(args.preset).image_size
    config = VQTrainConfig(
        preset=args.preset, image_size=image_size, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, precision=args.precision, autoencoder_warmup=args.autoencoder_warmup,
    )
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as error:
        raise UserError(f"unknown device {args.device!r}: {error}") from error

    if args.images is not None:
        images, _, skipped = load_images(image_files(args.images), image_size)
        for problem in skipped:
            logger.warning("skipped %s", problem)
        if skipped:
            logger.warning("skipped %d undecodable image file(s) under %s", len(skipped), args.images)
        if len(images) == 0:
            raise UserError(f"no readable images under {args.images}")
    else:
        images = shapes_images(args.shapes_count or 8000, image_size, seed=config.seed)

    result = train_vq(config, images, args.out, device=device)
    print(
        f"saved image tokenizer to {args.out}: PSNR {result.psnr:.2f} dB, codebook usage "
        f"{100 * result.codebook_usage:.1f}%, perplexity {result.perplexity:.0f}, "
        f"{result.steps} steps in {result.seconds:.0f} s ({result.steps_per_second:.2f} steps/s, {result.precision})"
    )
    return 0
