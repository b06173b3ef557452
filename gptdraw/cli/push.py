"""`gptdraw push`: upload a model directory to the Hugging Face Hub with a model card."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("push", help="upload a model directory to the Hugging Face Hub with a model card")
    parser.add_argument("--model", required=True, help="model directory (e.g. runs/mine)")
    parser.add_argument("--repo", required=True, help="Hub repository id, user/name (created if missing)")
    parser.add_argument("--license", default="other", help="licence of the model, for the card (default: other)")
    parser.add_argument("--credits", default="", help="the training data, its licence and credits, for the card")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gptdraw.hub import push_model

    url = push_model(args.model, args.repo, license=args.license, credits=args.credits, private=args.private)
    print(f"pushed {args.model} to {args.repo}: {url}\nload it with: gptdraw generate \"a caption\" --model {args.repo}")
    return 0
