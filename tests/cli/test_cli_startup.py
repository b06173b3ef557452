"""The gptdraw command starts fast: help and argument errors load no deep-learning library.

Each check runs in a fresh interpreter, since this test process has torch loaded already.
What is asserted is which modules got imported, not how long it took.
"""

import json
import subprocess
import sys

import pytest

import gptdraw.cli
from conftest import HANG_SECONDS

HEAVY = ("torch", "transformers", "diffusers", "gradio", "accelerate")

# Runs `gptdraw ARGV` for each ARGV in turn, the way the console script does, then prints
# the exit codes and the heavy libraries found in sys.modules as JSON.
PROBE = """
import json, sys
from gptdraw.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        codes.append(main(argv))
    except SystemExit as exit:
        codes.append(exit.code)
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(json.loads(sys.argv[2])))
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def run_gptdraw(*argvs: list[str]) -> tuple[list[int], list[str], str]:
    """Exit codes, heavy libraries imported, and stderr of running each argv in one fresh process."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argvs), json.dumps(HEAVY)],
                          capture_output=True, text=True, timeout=HANG_SECONDS)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    return result["codes"], result["heavy"], done.stderr


def subcommands(parser, prefix=()) -> list[list[str]]:
    """Every command path of the parser, nested ones included: [["train"], ["vq", "encode"], ...]."""
    paths = []
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for name, subparser in action.choices.items():
            paths.append([*prefix, name])
            paths.extend(subcommands(subparser, (*prefix, name)))
    return paths


def test_building_the_parser_and_printing_help_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from gptdraw.cli import build_parser\n"
        "print(build_parser().format_help())\n"
        f"print(sorted({{name.split('.')[0] for name in sys.modules}} & set({HEAVY!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_SECONDS)
    assert done.returncode == 0, done.stderr
    *help_lines, heavy = done.stdout.splitlines()
    assert heavy == "[]", f"building the parser imported {heavy}"
    assert help_lines[0].startswith("usage: gptdraw")
    assert all(name.replace("_", "-") in "\n".join(help_lines) for name in ("train", "generate", "train-vq"))


def test_every_subcommand_help_imports_no_heavy_library():
    paths = subcommands(gptdraw.cli.build_parser())
    assert ["train"] in paths and ["vq", "encode"] in paths
    codes, heavy, _ = run_gptdraw(["--help"], *([*path, "--help"] for path in paths))
    assert codes == [0] * (len(paths) + 1)
    assert heavy == []


@pytest.mark.parametrize("argv", [
    ["train", "--data", "d", "--out", "o", "--max-steps", "many"],
    ["train-vq", "--out", "o", "--precision", "fp8"],
    ["generate", "a red circle"],  # no --model
    ["vq", "encode", "image.png"],  # no --vq, no --out
    ["no-such-command"],
])
def test_argument_errors_import_no_heavy_library(argv):
    codes, heavy, stderr = run_gptdraw(argv)
    assert codes == [2]
    assert "error:" in stderr and "Traceback" not in stderr
    assert heavy == []


def test_train_vq_options_left_out_take_the_recipe_defaults(tmp_path):
    from gptdraw.vq.train import VQTrainConfig

    out = tmp_path / "vq"
    argv = ["train-vq", "--out", str(out), "--steps", "2", "--batch-size", "4", "--shapes-count", "16",
            "--image-size", "32"]
    assert gptdraw.cli.main(argv) == 0
    recipe = VQTrainConfig()
    config = json.loads((out / "train_vq.json").read_text())["config"]
    for name in ("preset", "lr", "seed", "autoencoder_warmup", "precision"):
        assert config[name] == getattr(recipe, name), name
    assert config["steps"] == 2 and config["batch_size"] == 4 and config["image_size"] == 32
