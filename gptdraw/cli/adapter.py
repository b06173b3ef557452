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

    from gptdraw.gpt.lora import merged
    from gptdraw.model_dir import ADAPTER_DIR, save_model_directory
    from gptdraw.pipeline import GPTDrawPipeline

    if not (Path(args.model) / ADAPTER_DIR).is_dir():
        raise ValueError(f"{args.model} has no {ADAPTER_DIR}/ to merge")
    pipe = GPTDrawPipeline.from_pretrained(args.model, device="cpu", precision="fp32")
    save_model_directory(args.model, transformer=merged(pipe.transformer), text_tokenizer=pipe.text_tokenizer,
                         image_tokenizer=pipe.image_tokenizer, layout=pipe.layout, sampling=pipe.default_settings)
    print(f"merged the adapter into {args.model}/transformer; {args.model}/{ADAPTER_DIR} removed")
    return 0
