"""`gptdraw train-vq`: train an image tokenizer (VQGAN) on built-in shapes or a folder of images.

    gptdraw train-vq --out runs/vq                                   # shapes-f8 on 8,000 shapes images
    gptdraw train-vq --out runs/vq --images photos/ --preset taming-f16-16384 --steps 20000
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from gptdraw.cli import UserError, claimed_out
from gptdraw.cli.config_flags import add_config_flags, apply_config_file, given_fields, read_config_file
from gptdraw.runtime import resolve_device
from gptdraw.vq.config import VQ_PRESETS, VQTrainConfig, vq_preset

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """`gptdraw train-vq`, the older spelling of `gptdraw vq train` (which cli/vq.py registers)."""
    add_train_vq_parser(subparsers, "train-vq", "the same as `gptdraw vq train`")


def add_train_vq_parser(subparsers: argparse._SubParsersAction, name: str, help: str) -> None:
    parser = subparsers.add_parser(
        name,
        help=help,
        description="Train an image tokenizer and save it as a gptdraw image-tokenizer directory, with "
        "reconstructions.png (originals above, reconstructions below) and train_vq.json (figures). "
        "Settings: VQTrainConfig's defaults, then --config, then the flags.",
    )
    # A string, not a Path: Path("") would turn an empty --out into the current folder.
    parser.add_argument("--out", required=True, help="image-tokenizer directory to write")
    parser.add_argument("--config", help="YAML or JSON file of VQTrainConfig fields")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--images", type=Path, metavar="FOLDER",
                      help="train on every image file under FOLDER (resized and centre-cropped)")
    data.add_argument("--shapes-count", type=int, default=None,
                      help="train on this many built-in shapes images (the default data, 8000 images)")
    add_config_flags(parser, VQTrainConfig, choices={"preset": sorted(VQ_PRESETS)})
    parser.set_defaults(func=run_train_vq)


def vq_train_config(args: argparse.Namespace) -> VQTrainConfig:
    """VQTrainConfig's defaults, then the --config file, then the flags; the image size filled in."""
    config = VQTrainConfig()
    if args.config:
        config = apply_config_file(config, read_config_file(args.config), args.config)
    config = replace(config, **given_fields(args, VQTrainConfig))
    return replace(config, image_size=config.image_size or vq_preset(config.preset).image_size)


def run_train_vq(args: argparse.Namespace) -> int:
    if args.shapes_count is not None and args.shapes_count <= 0:
        raise UserError(f"--shapes-count must be positive, got {args.shapes_count}")
    if args.image_size is not None and args.image_size <= 0:
        raise UserError(f"--image-size must be positive, got {args.image_size}")
    config = vq_train_config(args)
    device = resolve_device(args.device)
    # The tokenizer replaces --out whole when it is saved, so its lock sits beside it.
    with claimed_out(args, beside=True) as out:
        return train_vq_into(out, args, config, device)


def train_vq_into(out: Path, args: argparse.Namespace, config, device) -> int:
    """`gptdraw vq train`'s work, once its settings are checked and its --out is held."""
    from gptdraw.data.decode import image_files, load_images
    from gptdraw.vq.train import shapes_images, train_vq

    image_size = config.image_size
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

    result = train_vq(config, images, out, device=device)
    print(
        f"saved image tokenizer to {args.out}: PSNR {result.psnr:.2f} dB, codebook usage "
        f"{100 * result.codebook_usage:.1f}%, perplexity {result.perplexity:.0f}, "
        f"{result.steps} steps in {result.seconds:.0f} s ({result.steps_per_second:.2f} steps/s, {result.precision})"
    )
    return 0
