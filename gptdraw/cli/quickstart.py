"""`gptdraw quickstart`: data, VQGAN, GPT and drawings on the built-in shapes, in one command."""

from __future__ import annotations

import argparse

from gptdraw.apps.quickstart_config import QuickstartConfig
from gptdraw.cli import claimed_out
from gptdraw.cli.config_flags import add_config_flags, given_fields
from gptdraw.runtime import resolve_device

# Sampling settings are chosen by bench/quality.py on the tuning set; `gptdraw generate` takes
# its own sampling flags for a trained model.
SKIP = ("sampling",)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="train and draw on the built-in shapes data (about 10 minutes on 2 CPU cores)",
    )
    parser.add_argument("--out", default="runs/quickstart", help="run directory (default: runs/quickstart)")
    add_config_flags(parser, QuickstartConfig, skip=SKIP, title="quickstart settings (default: the recipe's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    # Heavy libraries (torch, transformers) load here, so that `--help` and argument errors stay fast.
    from gptdraw.apps.quickstart import run_quickstart

    config = replace(QuickstartConfig(), **given_fields(args, QuickstartConfig, skip=SKIP))
    resolve_device(config.device, flag="--device")  # a device this machine lacks is refused before any work
    with claimed_out(args):  # checked, and held against a second run on it until the end
        summary = run_quickstart(args.out, config)
    print(
        f"held-out prompts drawn correctly: {summary['one_object_accuracy']:.0%} of one-object, "
        f"{summary['two_object_accuracy']:.0%} of two-object ({config.images_per_prompt} images each)\n"
        f"samples: {args.out}/samples.png, animation: {args.out}/drawing.gif, "
        f"model: {args.out}/model ({summary['seconds']['total']:.0f} s)\n"
        f'draw anything: gptdraw generate "a small red circle in the top left" --model {args.out}/model'
    )
    return 0
