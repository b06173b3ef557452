"""`gptdraw quickstart`: data, VQGAN, GPT and drawings on the built-in shapes, in one command."""

from __future__ import annotations

import argparse

# Heavy libraries (torch, transformers, diffusers) load inside the handler, so that building
# the parser, `--help` and argument errors stay fast. Options left out keep QuickstartConfig's
# defaults, which live in gptdraw.apps.quickstart (a module that imports torch).
OVERRIDES = ("train_examples", "eval_examples", "vq_images", "vq_steps", "gpt_steps", "images_per_prompt",
             "seed", "device")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="train and draw on the built-in shapes data (about 10 minutes on 2 CPU cores)",
    )
    parser.add_argument("--out", default="runs/quickstart", help="run directory (default: runs/quickstart)")
    parser.add_argument("--train-examples", type=int)
    parser.add_argument("--eval-examples", type=int)
    parser.add_argument("--vq-images", type=int)
    parser.add_argument("--vq-steps", type=int)
    parser.add_argument("--gpt-steps", type=int)
    parser.add_argument("--images-per-prompt", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from gptdraw.apps.quickstart import QuickstartConfig, run_quickstart

    given = {name: getattr(args, name) for name in OVERRIDES if getattr(args, name) is not None}
    config = replace(QuickstartConfig(), **given)
    report = run_quickstart(args.out, config)
    print(
        f"held-out prompts drawn correctly: {report['one_object_accuracy']:.0%} of one-object, "
        f"{report['two_object_accuracy']:.0%} of two-object ({config.images_per_prompt} images each)\n"
        f"samples: {args.out}/samples.png, animation: {args.out}/drawing.gif, "
        f"model: {args.out}/model ({report['seconds']['total']:.0f} s)\n"
        f'draw anything: gptdraw generate "a small red circle in the top left" --model {args.out}/model'
    )
    return 0
