"""The README and the guides in docs/ say only what the code does.

Every `gptdraw …` command line in their fenced code blocks must name a subcommand that exists,
and every `--flag` it uses must appear in that subcommand's `--help`. Every relative link must
lead to a file (and, with a #anchor into a Markdown file, to one of its headings).

The help of each distinct subcommand is printed once, all in one fresh interpreter, the way the
console script runs it (`gptdraw.cli.main(argv)`), so the check takes a few seconds.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Fenced blocks in these languages hold no shell commands.
NOT_SHELL = {"python", "py", "pycon", "yaml", "yml", "json", "toml", "ini", "text", "txt"}
# Words that run the command after them.
RUNNERS = {"env", "time", "nohup", "exec", "sudo"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
OPERATOR = re.compile(r"^[();<>|&]+$")
FLAG_IN_HELP = re.compile(r"(?<![\w-])--[A-Za-z0-9][\w-]*")

# Prints `gptdraw PATH --help` for each PATH, as JSON {"path": help text}; one interpreter for all.
PROBE = """
import contextlib, io, json, sys
from gptdraw.cli import main
helps = {}
for path in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([*path, "--help"])
        except SystemExit:
            pass
    helps[" ".join(path)] = out.getvalue()
print(json.dumps(helps))
"""


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    line: str  # the command as written (continuations joined)
    argv: tuple[str, ...]  # what follows `gptdraw`


# ----------------------------------------------------------------------------- extracting commands
def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, first line number, lines) of each fenced code block."""
    blocks, inside, language, start, lines = [], None, "", 0, []
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)", line)
        if inside is None and fence:
            inside, language, start, lines = fence.group(1), fence.group(2).lower(), number + 1, []
        elif inside is not None and line.strip().startswith(inside) and not line.strip().strip(inside[0]):
            blocks.append((language, start, lines))
            inside = None
        elif inside is not None:
            lines.append(line)
    return blocks


def logical_lines(lines: list[str], first: int) -> list[tuple[int, str]]:
    """Lines with their `\\` continuations joined, each with the number of its first line."""
    joined, pending, start = [], "", first
    for number, line in enumerate(lines, first):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append((start, pending + line))
        pending = ""
    if pending:
        joined.append((start, pending))
    return joined


def tokens(line: str) -> list[str]:
    """Shell words of a line, comments dropped, operators (&&, ||, |, ;, >) as words of their own."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def segments(words: list[str]) -> list[list[str]]:
    """The simple commands of a line: split at &&, ||, |, ; and redirections."""
    parts, current = [], []
    for word in words:
        if OPERATOR.match(word):
            parts.append(current)
            current = []
        else:
            current.append(word)
    parts.append(current)
    return [part for part in parts if part]


def gptdraw_argv(words: list[str]) -> list[str] | None:
    """What follows `gptdraw` in a simple command, or None when it does not run gptdraw.

    Understands environment prefixes (`WANDB_MODE=offline gptdraw …`), a `$ ` prompt, runners
    (`time gptdraw …`) and modules (`accelerate launch … -m gptdraw.cli …`, `python -m gptdraw …`).
    """
    words = list(words)
    while words and (words[0] == "$" or ENV_ASSIGNMENT.match(words[0]) or words[0] in RUNNERS):
        words.pop(0)
    if not words:
        return None
    if words[0] == "gptdraw":
        return words[1:]
    for i, word in enumerate(words[:-1]):
        if word == "-m" and words[i + 1] in ("gptdraw", "gptdraw.cli"):
            return words[i + 2:]
    return None


def commands_in(text: str, name: str) -> list[Command]:
    found = []
    for language, first, lines in fenced_blocks(text):
        if language in NOT_SHELL:
            continue
        for number, line in logical_lines(lines, first):
            try:
                words = tokens(line)
            except ValueError as error:  # unbalanced quotes
                if "gptdraw" in line:
                    raise AssertionError(f"{name}:{number}: cannot read {line.strip()!r}: {error}") from None
                continue
            for words in segments(words):
                argv = gptdraw_argv(words)
                if argv is not None:
                    found.append(Command(f"{name}:{number}", " ".join(line.split()), tuple(argv)))
    return found


def doc_commands() -> list[Command]:
    return [command for doc in DOCS for command in commands_in(doc.read_text(), doc.relative_to(ROOT).as_posix())]


# ----------------------------------------------------------------------------- checking them
def command_tree(parser) -> dict:
    """{name: subtree} of the parser's subcommands, nested ones included."""
    tree = {}
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for name, subparser in action.choices.items():
            tree[name] = command_tree(subparser)
    return tree


def subcommand_path(argv: tuple[str, ...], tree: dict) -> tuple[tuple[str, ...], str]:
    """The subcommand path the argv names, and "" or what is wrong with it."""
    path, node = [], tree
    for word in argv:
        if word.startswith("-") and not path:
            continue  # an option of `gptdraw` itself (-v)
        if not node:
            break
        if word not in node:
            where = f"gptdraw {' '.join(path)}".strip()
            return tuple(path), f"{where} has no subcommand {word!r} (it has: {', '.join(sorted(node))})"
        path.append(word)
        node = node[word]
    if node:
        return tuple(path), f"gptdraw {' '.join(path)} needs a subcommand: {', '.join(sorted(node))}".replace("  ", " ")
    return tuple(path), ""


def flags(argv: tuple[str, ...]) -> list[str]:
    return [word.split("=", 1)[0] for word in argv if re.match(r"^--[A-Za-z0-9]", word)]


def problems(commands: list[Command], tree: dict, helps: dict[str, str]) -> list[str]:
    """One line for each command that names a missing subcommand or flag."""
    found = []
    for command in commands:
        path, wrong = subcommand_path(command.argv, tree)
        if wrong:
            found.append(f"{command.where}: {wrong}\n    {command.line}")
            continue
        known = set(FLAG_IN_HELP.findall(helps[" ".join(path)]))
        missing = [flag for flag in flags(command.argv) if flag not in known]
        if missing:
            found.append(f"{command.where}: gptdraw {' '.join(path)} has no {', '.join(missing)}\n    {command.line}")
    return found


def run_helps(paths: set[tuple[str, ...]]) -> dict[str, str]:
    """`gptdraw PATH --help` of each path, printed in one fresh interpreter."""
    ordered = sorted(paths)
    # The timeout only guards against a hang: the probe takes a few seconds.
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps([list(path) for path in ordered])],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def cli():
    """The command tree and the help of every subcommand the docs (and the planted cases) name."""
    from gptdraw.cli import build_parser

    tree = command_tree(build_parser())
    paths = {("train",), ("vq", "train")}
    for command in doc_commands():
        path, wrong = subcommand_path(command.argv, tree)
        if not wrong:
            paths.add(path)
    return tree, run_helps(paths)


# ----------------------------------------------------------------------------- the tests
def test_commands_are_read_from_continuations_chains_prefixes_launchers_and_comments():
    text = "\n".join([
        "Some prose with gptdraw train --not-a-command in it.",
        "```bash",
        "# a comment naming gptdraw --nothing",
        "python3 -m venv .venv && . .venv/bin/activate && gptdraw quickstart --out runs/q   # trailing --comment",
        "WANDB_MODE=offline gptdraw train --data d \\",
        "    --out o --preset tiny",
        "accelerate launch --multi_gpu --num_processes 2 -m gptdraw.cli train --data d ...",
        "pip install x | tee log; gptdraw generate \"a red # circle\" --model m > out.txt",
        "```",
        "```python",
        "gptdraw = 'not a command'",
        "```",
    ])
    found = commands_in(text, "doc.md")
    assert [command.argv for command in found] == [
        ("quickstart", "--out", "runs/q"),
        ("train", "--data", "d", "--out", "o", "--preset", "tiny"),
        ("train", "--data", "d", "..."),
        ("generate", "a red # circle", "--model", "m"),
    ]
    assert [command.where for command in found] == ["doc.md:4", "doc.md:5", "doc.md:7", "doc.md:8"]


def test_the_docs_have_commands_to_check():
    found = doc_commands()
    readme = [command for command in found if command.where.startswith("README.md:")]
    assert ("quickstart", "--out", "runs/quickstart") in [command.argv for command in readme]
    assert len({command.argv[0] for command in found}) >= 8, "the guides should show most subcommands"


def test_every_doc_command_names_a_subcommand_and_flags_that_exist(cli):
    tree, helps = cli
    found = problems(doc_commands(), tree, helps)
    assert not found, "commands in the docs that the CLI does not accept:\n" + "\n".join(found)


def test_the_check_catches_a_missing_flag_or_subcommand(cli):
    tree, helps = cli
    planted = commands_in("\n".join([
        "```bash",
        "gptdraw train --data d --out o --no-such-flag 3",
        "gptdraw no-such-command --out o",
        "gptdraw vq trian --out o",
        "gptdraw vq",
        "accelerate launch -m gptdraw.cli vq train --out o --steps=3 --stepz 3",
        "gptdraw train --data d --out o --preset tiny",
        "```",
    ]), "planted.md")
    found = problems(planted, tree, helps)
    assert len(found) == 5, found
    assert "--no-such-flag" in found[0] and "no subcommand 'no-such-command'" in found[1]
    assert "no subcommand 'trian'" in found[2] and "needs a subcommand" in found[3]
    assert "gptdraw vq train has no --stepz\n" in found[4]


# ----------------------------------------------------------------------------- links
def without_code(text: str) -> str:
    """The text with fenced code blocks and inline code spans blanked (links there are not links)."""
    kept, inside = [], None
    for line in text.splitlines():
        fence = re.match(r"^ {0,3}(`{3,}|~{3,})", line)
        if inside is None and fence:
            inside = fence.group(1)
            kept.append("")
        elif inside is not None:
            if line.strip().startswith(inside):
                inside = None
            kept.append("")
        else:
            kept.append(re.sub(r"(`+).*?\1", "", line))
    return "\n".join(kept)


def links(text: str) -> list[str]:
    text = without_code(text)
    markdown = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    html = re.findall(r"(?:src|href)\s*=\s*\"([^\"]+)\"", text)
    return markdown + html


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file (inline code in a heading counts)."""
    found, seen = set(), {}
    inside = None
    for line in markdown.splitlines():
        fence = re.match(r"^ {0,3}(`{3,}|~{3,})", line)
        if fence and inside is None:
            inside = fence.group(1)
            continue
        if inside is not None:
            if line.strip().startswith(inside):
                inside = None
            continue
        heading = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(f"{slug}-{count}" if count else slug)
    return found


def test_relative_links_lead_to_files_and_headings():
    broken = []
    for doc in DOCS:
        text = doc.read_text()
        for target in links(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            name = doc.relative_to(ROOT).as_posix()
            if not file.exists():
                broken.append(f"{name}: {target} (no such file)")
            elif not file.is_relative_to(ROOT):
                broken.append(f"{name}: {target} (outside the repository)")
            elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file.read_text()):
                broken.append(f"{name}: {target} (no heading #{anchor} in {file.relative_to(ROOT)})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_docs_link_every_guide_from_the_readme():
    readme = links((ROOT / "README.md").read_text())
    guides = {doc.relative_to(ROOT).as_posix() for doc in DOCS[1:]}
    assert guides, "docs/ has no guides"
    assert guides <= {target.partition("#")[0] for target in readme}, guides - set(readme)
