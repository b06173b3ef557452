"""`gptdraw serve`: the web page where a model draws prompts while you watch."""

from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

from gptdraw.cli import UserError
from gptdraw.files import output_directory
from gptdraw.runtime import PRECISIONS, canonical_precision


def register(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="a web page that draws prompts live (Gradio)")
    parser.add_argument("--model", required=True, help="model directory (e.g. runs/quickstart/model)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--out", default="served", help="the only folder the server writes to (default: served)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: auto)")
    parser.add_argument("--precision", "--dtype", dest="precision", default="auto", type=canonical_precision,
                        choices=PRECISIONS, help="the weights' precision: auto (bf16 on a GPU that has it), fp32, bf16, fp16")
    parser.add_argument("--compile", action="store_true", help="compile the decode step (CUDA graphs on a GPU)")
    parser.add_argument("--max-images", type=int, default=4, help="most images per request (default: 4, at most 16)")
    parser.add_argument("--queue-size", type=int, default=8, help="requests that may wait (default: 8, at most 256)")
    parser.add_argument("--keep-drawings", type=int, default=500,
                        help="requests whose drawings stay on disk; older ones are deleted (default: 500)")
    parser.add_argument("--frames", type=int, default=32,
                        help="picture updates per drawing (default: 32; each decodes the codes so far: "
                             "lower it for a large VQGAN on a CPU)")
    parser.add_argument("--monitoring", action="store_true",
                        help="open Gradio's /monitoring pages (request counts and latencies, readable by "
                             "any visitor; default: off)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {args.port}")
    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"model directory {args.model} does not exist")
    if importlib.util.find_spec("gradio") is None:
        raise UserError("gptdraw serve needs Gradio: pip install 'gptdraw[serve]'")
    from gptdraw.pipeline import GPTDrawPipeline
    from gptdraw.apps.serve import ServeConfig, launch

    config = ServeConfig(
        out_dir=output_directory(args.out, flag="--out"), max_images=args.max_images, queue_size=args.queue_size,
        frames_per_image=args.frames, keep_drawings=args.keep_drawings, monitoring=args.monitoring,
    )
    pipe = GPTDrawPipeline.from_pretrained(args.model, device=args.device, precision=args.precision, compile=args.compile)
    # Gradio polls its own server through httpx; those requests are not news to the user.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    print(f"gptdraw serve: http://{args.host}:{args.port} (writes to {config.out_dir}; Ctrl-C stops)")
    try:
        launch(pipe, config, host=args.host, port=args.port, block=True)
    except OSError as error:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {error}") from None
    return 0
