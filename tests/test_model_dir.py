"""The model-directory format (gptdraw.model_dir): directories written before it existed still load and draw."""

import json
import shutil
from pathlib import Path

import torch

from gptdraw import GPTDrawPipeline
from gptdraw.model_dir import MODEL_CONFIG_NAME, PARTS, is_model_directory, load_model_directory

FIXTURE = Path(__file__).parent / "fixtures" / "model-v1"
"""A tiny model directory written by gptdraw at commit 9591cd4 (make.py beside it, run on that
commit), with the codes it drew for two prompts."""


def test_a_model_directory_written_by_the_old_code_draws_the_same_codes(tmp_path):
    expected = json.loads((FIXTURE / "expected.json").read_text())
    model = shutil.copytree(FIXTURE / "model", tmp_path / "model")
    assert is_model_directory(model) and all((model / part).is_dir() for part in PARTS)
    pipe = GPTDrawPipeline.from_pretrained(model, device="cpu", precision="fp32")
    steps = list(pipe.stream(expected["prompts"], num_images_per_prompt=expected["num_images_per_prompt"],
                             seed=expected["seed"], every=pipe.layout.image_len))
    assert steps[-1].codes.tolist() == expected["codes"]


def test_saving_again_keeps_the_format_and_the_drawings(tmp_path):
    expected = json.loads((FIXTURE / "expected.json").read_text())
    old = GPTDrawPipeline.from_pretrained(FIXTURE / "model", device="cpu", precision="fp32")
    old.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / MODEL_CONFIG_NAME).read_text()) == \
        json.loads((FIXTURE / "model" / MODEL_CONFIG_NAME).read_text())
    assert not [path.name for path in (tmp_path / "again").iterdir() if path.name.startswith(".")]  # no staging left
    parts = load_model_directory(tmp_path / "again", torch.device("cpu"), torch.float32)
    again = GPTDrawPipeline(parts.transformer, parts.text_tokenizer, parts.image_tokenizer, parts.layout, parts.sampling)
    steps = list(again.stream(expected["prompts"], num_images_per_prompt=expected["num_images_per_prompt"],
                              seed=expected["seed"], every=again.layout.image_len))
    assert steps[-1].codes.tolist() == expected["codes"]


def test_a_model_directory_being_saved_over_is_whole_or_absent_at_every_rename(tmp_path, monkeypatch):
    """At each rename of a save over an old model, a loader finds either the old model whole (no
    part replaced yet) or no model at all (no gptdraw.json): never old parts beside new ones."""
    import os

    from gptdraw import files

    pipe = GPTDrawPipeline.from_pretrained(FIXTURE / "model", device="cpu", precision="fp32")
    target = tmp_path / "model"
    pipe.save_pretrained(target)
    old_parts = {part: (target / part).stat().st_ino for part in PARTS}
    seen = []
    real_replace = os.replace

    def checking_replace(source, destination):
        if is_model_directory(target):
            seen.append("whole")
            assert {part: (target / part).stat().st_ino for part in PARTS} == old_parts
        else:
            seen.append("absent")
        real_replace(source, destination)

    monkeypatch.setattr(files.os, "replace", checking_replace)
    pipe.save_pretrained(target)
    assert "absent" in seen and seen.index("absent") < len(seen)
    assert is_model_directory(target) and {part: (target / part).stat().st_ino for part in PARTS} != old_parts
