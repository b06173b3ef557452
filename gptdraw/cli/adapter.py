"""`gptdraw merge-adapter`: bake a model directory's LoRA adapter into its weights."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("merge-adapter", help="merge a model directory's LoRA adapter (adapter/) into its "
                                                          "GPT weights, leaving a plain model directory")
    parser.add_argument("--model", required=True, help="model directory trained with --lora-rank")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gptdraw.gpt.lora import ADAPTER_DIR, merged
    from gptdraw.pipeline import GPTDrawPipeline, save_model_directory

    if not (Path(args.model) / ADAPTER_DIR).is_dir():
        raise ValueError(f"{args.model} has no {ADAPTER_DIR}/ to merge")
    pipe = GPTDrawPipeline.from_pretrained(args.model, device="cpu", dtype="float32")
    save_model_directory(args.model, merged(pipe.gpt), pipe.caption_tokenizer, pipe.image_tokenizer, pipe.layout,
                         pipe.default_settings)
    print(f"merged the adapter into {args.model}/transformer; {args.model}/{ADAPTER_DIR} removed")
    return 0
