"""The flags of every command that draws with a trained model (generate, complete, vary, best-of)."""

from __future__ import annotations

import argparse

from gptdraw.cli.config_flags import add_config_flags, given_fields
from gptdraw.gpt.config import SamplingConfig


def add_drawing_options(parser: argparse.ArgumentParser) -> None:
    """--model, --revision, --out, --seed, --device, and a flag for each SamplingConfig field."""
    parser.add_argument("--model", required=True, help="model directory (e.g. runs/quickstart/model) or Hub id (user/name)")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) when --model is a Hub id")
    parser.add_argument("--out", default="drawings", help="output folder (default: drawings)")
    parser.add_argument("--seed", type=seed_number, default=0, help="random seed; the same seed draws the same images")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: auto)")
    add_config_flags(parser, SamplingConfig, title="sampling (default: the settings stored with the model)")


def seed_number(text: str) -> int:
    """A --seed: a whole number in [0, 2**63), as training and the page take them (argparse names the flag)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is a whole number, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"a seed must be from 0 to 2**63 - 1, got {text}")
    return value


def sampling_overrides(args: argparse.Namespace) -> dict:
    """The sampling settings given on the command line, to replace the model's own."""
    return given_fields(args, SamplingConfig)
