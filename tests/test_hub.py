"""The Hub: models load by id from huggingface_hub's cache (offline, at a revision) without running
or unpickling anything, and a push uploads the model files with a card and nothing else."""

import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest

from gptdraw.gpt.sampling import SamplingConfig
from gptdraw.hub import push_model
from gptdraw.pipeline import GPTDrawPipeline

COMMITS = {"main": "a" * 40, "v1": "b" * 40}


class Boom:
    """Unpickling this creates a file: proof that something unpickled it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def cache_model(cache: Path, repo: str, folder: Path, commit: str, ref: str) -> None:
    """Lays a model folder out as huggingface_hub lays a download out: blobs by hash, snapshot links, a ref."""
    root = cache / f"models--{repo.replace('/', '--')}"
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            blob = root / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = root / "snapshots" / commit / path.relative_to(folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, gpt, caption_tokenizer, image_tokenizer, layout):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for ref, cfg in (("main", 1.0), ("v1", 3.0)):
        folder = tmp_path / f"model-{ref}"
        GPTDrawPipeline(gpt, caption_tokenizer, image_tokenizer, layout, SamplingConfig(cfg_scale=cfg)).save_pretrained(folder)
        if ref == "main":  # a pickle beside the safetensors: it must never be unpickled
            (folder / "transformer" / "pytorch_model.bin").write_bytes(pickle.dumps(Boom(str(tmp_path / "unpickled"))))
        cache_model(tmp_path / "cache", "someone/tiny-draw", folder, COMMITS[ref], ref)
    return tmp_path


def test_a_model_loads_by_id_from_the_cache_at_a_revision(hub_cache):
    main = GPTDrawPipeline.from_pretrained("someone/tiny-draw", device="cpu")
    tagged = GPTDrawPipeline.from_pretrained("someone/tiny-draw", device="cpu", revision="v1")
    assert main.default_settings.cfg_scale == 1.0 and tagged.default_settings.cfg_scale == 3.0
    assert len(main(["a red circle"], seed=0)) == 1
    assert not (hub_cache / "unpickled").exists()


def test_unknown_ids_and_repositories_that_are_not_models(hub_cache, tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a local folder nor in the Hub cache"):
        GPTDrawPipeline.from_pretrained("someone/absent", device="cpu")
    other = tmp_path / "not-a-model"
    other.mkdir()
    (other / "README.md").write_text("a dataset card")
    cache_model(tmp_path / "cache", "someone/readme-only", other, "c" * 40, "main")
    with pytest.raises(ValueError, match="not a gptdraw model"):
        GPTDrawPipeline.from_pretrained("someone/readme-only", device="cpu")


class RecordingApi:
    """Records what a push asks of huggingface_hub.HfApi (no network here to push to)."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **options):
        self.calls.append(("create_repo", repo_id, options))

    def upload_folder(self, **options):
        self.calls.append(("upload_folder", options))
        return "https://huggingface.co/someone/tiny-draw/commit/0"


def test_push_uploads_the_model_files_with_a_card(pipe_dir):
    from huggingface_hub.utils import filter_repo_objects

    api = RecordingApi()
    url = push_model(pipe_dir, "someone/tiny-draw", license="cc-by-4.0", credits="Twemoji, CC-BY 4.0", api=api)
    assert url.endswith("/commit/0") and api.calls[0][:2] == ("create_repo", "someone/tiny-draw")
    upload = api.calls[1][1]
    files = [str(p.relative_to(pipe_dir)) for p in pipe_dir.rglob("*") if p.is_file()]
    # What huggingface_hub's own filter lets through with these patterns: the model, never the checkpoint.
    sent = set(filter_repo_objects(files, allow_patterns=upload["allow_patterns"]))
    assert "transformer/model.safetensors" in sent and "gptdraw.json" in sent and "README.md" in sent
    assert not any(name.startswith("checkpoints/") for name in sent)
    card = (pipe_dir / "README.md").read_text()
    assert "license: cc-by-4.0" in card and "Twemoji, CC-BY 4.0" in card and 'from_pretrained("someone/tiny-draw")' in card
    with pytest.raises(ValueError, match="not a Hub repository id"):
        push_model(pipe_dir, "no-slash", api=api)


@pytest.fixture
def pipe_dir(tmp_path, gpt, caption_tokenizer, image_tokenizer, layout):
    folder = tmp_path / "run"
    GPTDrawPipeline(gpt, caption_tokenizer, image_tokenizer, layout, SamplingConfig()).save_pretrained(folder)
    (folder / "checkpoints" / "step-00000001").mkdir(parents=True)
    (folder / "checkpoints" / "step-00000001" / "optimizer.pt").write_bytes(b"pickle")
    (folder / "train_config.json").write_text(json.dumps({"model": {"n_layer": 2, "n_embd": 32, "n_head": 2},
                                                          "max_steps": 5, "optimizer": "muon", "lr": 0.002}))
    return folder


def test_a_malformed_config_is_a_clear_error_on_push(pipe_dir):
    (pipe_dir / "train_config.json").write_text("{cut")
    with pytest.raises(ValueError, match="not valid JSON"):
        push_model(pipe_dir, "someone/tiny-draw", api=RecordingApi())
    (pipe_dir / "train_config.json").unlink()
    (pipe_dir / "gptdraw.json").write_text("[]")
    with pytest.raises(ValueError, match="not a gptdraw model config"):
        push_model(pipe_dir, "someone/tiny-draw", api=RecordingApi())
