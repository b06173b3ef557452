"""The `gptdraw` command: thin subcommands that parse arguments and call library functions.

Each concern registers its own subcommands from a module beside this one
(`register(subparsers)`), so that the parser for a command lives next to its peers
and this file only assembles them. What the user can fix (bad input, a missing package, a folder
another run holds, a full disk) ends as one line, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
from importlib import import_module
from pathlib import Path
from typing import Iterator

from gptdraw.files import is_full_disk, output_directory
from gptdraw.run_lock import FolderInUseError, run_lock

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


@contextlib.contextmanager
def claimed_out(args: argparse.Namespace, *, beside: bool = False) -> Iterator[Path]:
    """The command's --out, checked before any work (files.output_directory) and locked against a
    second run for as long as the block lasts (gptdraw.run_lock; `beside`: the lock sits beside a
    folder the command replaces whole). Under a launcher only the first process takes the lock:
    the others are the same run."""
    out = output_directory(args.out, flag="--out")
    if os.environ.get("RANK", "0") != "0":
        yield out
        return
    with run_lock(out, command=getattr(args, "command_line", "gptdraw"), beside=beside):
        yield out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["gptdraw", *argv])  # what a second run on the same --out is told
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, ValueError, ImportError, FolderInUseError) as error:
        # Bad input, or an optional package not installed, is the user's to fix: say what is wrong
        # in one line (gptdraw's ImportErrors name the pip install that fixes them).
        print(f"gptdraw {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if not is_full_disk(error):
            raise
        # Every writer replaces its files whole, so what is on disk is consistent: the same command resumes.
        written = getattr(error, "filename", None) or f"a file in {getattr(args, 'out', None) or 'the output folder'}"
        print(f"gptdraw {args.command}: error: no space left on device while writing {written}: free space and "
              "rerun the same command to resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"gptdraw {args.command}: interrupted", file=sys.stderr)
        return 130

