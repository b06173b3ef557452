"""`gptdraw quickstart`: data, VQGAN, GPT and drawings on the built-in shapes, in one command."""

from __future__ import annotations

import argparse
from dataclasses import replace

from ..quickstart import QuickstartConfig, run_quickstart


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="train and draw on the built-in shapes data (about 10 minutes on 2 CPU cores)",
    )
    parser.add_argument("--out", default="runs/quickstart", help="run directory (default: runs/quickstart)")
    defaults = QuickstartConfig()
    parser.add_argument("--train-examples", type=int, default=defaults.train_examples)
    parser.add_argument("--eval-examples", type=int, default=defaults.eval_examples)
    parser.add_argument("--vq-images", type=int, default=defaults.vq_images)
    parser.add_argument("--vq-steps", type=int, default=defaults.vq_steps)
    parser.add_argument("--gpt-steps", type=int, default=defaults.gpt_steps)
    parser.add_argument("--images-per-prompt", type=int, default=defaults.images_per_prompt)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=defaults.device)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = replace(
        QuickstartConfig(),
        train_examples=args.train_examples, eval_examples=args.eval_examples, vq_images=args.vq_images,
        vq_steps=args.vq_steps, gpt_steps=args.gpt_steps, images_per_prompt=args.images_per_prompt,
        seed=args.seed, device=args.device,
    )
    report = run_quickstart(args.out, config)
    print(
        f"held-out prompts drawn correctly: {report['one_object_accuracy']:.0%} of one-object, "
        f"{report['two_object_accuracy']:.0%} of two-object ({config.images_per_prompt} images each)\n"
        f"samples: {args.out}/samples.png, animation: {args.out}/drawing.gif, "
        f"model: {args.out}/model ({report['seconds']['total']:.0f} s)\n"
        f'draw anything: gptdraw generate "a small red circle in the top left" --model {args.out}/model'
    )
    return 0
