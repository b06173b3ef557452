"""The one-command run, shrunk to seconds: every stage runs and leaves its outputs."""

import json
import math

import pytest
from PIL import Image

from gptdraw.cli import main
from gptdraw.pipeline import GPTDrawPipeline

pytestmark = pytest.mark.integration  # slow, end to end: `-m "not integration"` skips it


def test_quickstart_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "qs"
    args = ["quickstart", "--out", str(out), "--train-examples", "192", "--eval-examples", "64", "--vq-images", "128",
            "--vq-steps", "4", "--gpt-steps", "3", "--images-per-prompt", "2", "--gpt-layers", "1", "--gpt-heads", "2",
            "--gpt-width", "32", "--gpt-batch", "8"]
    assert main(args) == 0
    assert "held-out prompts drawn correctly" in capsys.readouterr().out
    report = json.loads((out / "quickstart.json").read_text())
    assert 0.0 <= report["one_object_accuracy"] <= 1.0 and 0.0 <= report["two_object_accuracy"] <= 1.0
    # Three steps cannot draw well, but they must have learned: below the loss of guessing
    # uniformly over the vocabulary, which a model that did not train (or went NaN) is not.
    layout = GPTDrawPipeline.from_pretrained(out / "model").layout
    assert math.isfinite(report["eval_loss"]) and report["eval_loss"] < math.log(layout.vocab_size) - 0.5
    scores = json.loads((out / "eval.json").read_text())
    assert scores["images"] == 96  # the report set: 24 one-object + 24 two-object prompts, two images each
    # The tuning set is drawn too, apart; the sampling and the recipe were chosen on it.
    tuning = json.loads((out / "tuning" / "eval.json").read_text())
    assert tuning["images"] == 96 and set(tuning["per_prompt"]).isdisjoint(scores["per_prompt"])
    assert report["tuning"]["two_object"] == tuning["two_object"]
    assert 0.0 <= report["variety"]["distinct"] <= 1.0 and report["sizeless_accuracy"] is not None
    assert Image.open(out / "samples.png").size[0] > 100
    assert Image.open(out / "drawing.gif").n_frames > 2
    pipe = GPTDrawPipeline.from_pretrained(out / "model")
    assert pipe.layout.grid == (6, 6)  # 48 px, f8
    # A second run finds every stage done and only draws again.
    weights = (out / "model" / "transformer" / "model.safetensors").read_bytes()
    assert main(args) == 0
    assert (out / "model" / "transformer" / "model.safetensors").read_bytes() == weights
