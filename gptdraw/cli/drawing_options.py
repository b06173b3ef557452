"""The flags of every command that draws with a trained model (generate, complete, vary, best-of)."""

from __future__ import annotations

import argparse


def add_drawing_options(parser: argparse.ArgumentParser) -> None:
    """--model, --out, --seed, the sampling settings (default: the model's own) and --device."""
    parser.add_argument("--model", required=True, help="model directory (e.g. runs/quickstart/model)")
    parser.add_argument("--out", default="drawings", help="output folder (default: drawings)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed draws the same images")
    parser.add_argument("--top-k", type=int, help="keep the k most likely codes (default: the model's)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling threshold (default: the model's)")
    parser.add_argument("--temperature", type=float, help="softmax temperature, 0 = greedy (default: the model's)")
    parser.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (default: the model's)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: auto)")
