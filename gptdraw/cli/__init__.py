"""The `gptdraw` command: thin subcommands that parse arguments and call library functions.

Each concern registers its own subcommands from a module beside this one
(`register(subparsers)`), so that the parser for a command lives next to its peers
and this file only assembles them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

# Modules under gptdraw.cli that each define `register(subparsers)`.
COMMAND_MODULES: tuple[str, ...] = ("quickstart", "vq", "data", "train", "adapter", "generate", "edit", "evaluate",
                                    "push", "serve", "train_vq")


class UserError(Exception):
    """An error caused by the user's input: printed as one clear line, never as a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptdraw", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        import_module(f"gptdraw.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, ValueError, ImportError) as error:
        # Bad input, or an optional package not installed, is the user's to fix: say what is wrong
        # in one line (gptdraw's ImportErrors name the pip install that fixes them).
        print(f"gptdraw {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gptdraw {args.command}: interrupted", file=sys.stderr)
        return 130

