"""Sharing models on the Hugging Face Hub: push a model directory with a model card, load one by id.

    gptdraw push --model runs/mine --repo user/name          # GPTDrawPipeline.push_to_hub
    gptdraw generate "a red bus" --model user/name --revision main

Only the files a model directory is made of travel, in both directions: JSON configs, safetensors
weights, the caption tokenizer's JSON, the card and its pictures. Checkpoints (whose optimiser
state is a pickle), logs and anything else stay behind on a push and are never fetched on a load,
so loading a repository neither runs code from it nor unpickles anything. Downloads go through
huggingface_hub's cache (HF_HUB_CACHE; HF_HUB_OFFLINE=1 uses only what is cached).
"""

from __future__ import annotations

import json
from pathlib import Path

from gptdraw.model_dir import MODEL_CONFIG_NAME, MODEL_FILES, is_model_directory
from gptdraw.repo_id import is_repo_id, looks_like_repo_id
from gptdraw.untrusted_files import read_json, read_json_object, read_text

METRICS_LIMIT = 256 * 2**20
"""Largest metrics.jsonl read for a model card (256 MiB: a million logged steps)."""


def resolve_model(name: str | Path, revision: str | None = None) -> Path:
    """A local model directory as it is, or a Hub repository id fetched into the cache (model files only)."""
    if not looks_like_repo_id(str(name)):
        return Path(name)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        folder = Path(snapshot_download(str(name), revision=revision, allow_patterns=MODEL_FILES))
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise FileNotFoundError(f"no model {name!r}{f' at revision {revision}' if revision else ''} on the Hub: "
                                f"{str(error).splitlines()[0]}") from None
    except LocalEntryNotFoundError:
        raise FileNotFoundError(f"{name!r} is neither a local folder nor in the Hub cache, and the Hub cannot be "
                                "reached (offline?)") from None
    except HfHubHTTPError as error:
        raise FileNotFoundError(f"cannot fetch {name!r} from the Hub: {str(error).splitlines()[0]}") from None
    if not is_model_directory(folder):
        raise ValueError(f"the Hub repository {name!r} is not a gptdraw model: it has no {MODEL_CONFIG_NAME}")
    return folder


def model_card(model_dir: Path, license: str, credits: str) -> str:
    """A model card from what the directory holds: layout, sampling, training settings, figures, samples."""
    # The folder may be one fetched from someone else: each file read as a regular file under a cap.
    config = read_json(model_dir / MODEL_CONFIG_NAME, what="model config")
    training = (read_json_object(model_dir / "train_config.json", what="training config")
                if (model_dir / "train_config.json").is_file() else {})
    if not isinstance(config, dict) or not isinstance(config.get("layout"), dict):
        raise ValueError(f"{model_dir / MODEL_CONFIG_NAME} is not a gptdraw model config")
    layout = config["layout"]
    last = {}
    metrics = model_dir / "metrics.jsonl"
    if metrics.is_file():
        try:
            rows = [json.loads(line) for line in read_text(metrics, METRICS_LIMIT, what="metrics log").splitlines()
                    if line.strip()]
        except json.JSONDecodeError as error:
            raise ValueError(f"{metrics} is not JSON lines: {error}") from None
        last = next((row for row in reversed(rows) if isinstance(row, dict) and "loss" in row), {})
    samples = sorted((model_dir / "samples").glob("*.png")) if (model_dir / "samples").is_dir() else []
    lines = [
        "---", f"license: {license}", "library_name: gptdraw", "tags: [text-to-image, gptdraw, vqgan, gpt2]", "---", "",
        f"# {model_dir.name}", "",
        "A GPT-2 that draws: a caption's tokens and an image's VQGAN codes as one sequence "
        "([gptdraw](https://github.com/)).", "",
        "```python", "from gptdraw import GPTDrawPipeline",
        "pipe = GPTDrawPipeline.from_pretrained(\"REPO_ID\")", "images = pipe([\"your caption\"], seed=0)", "```", "",
        "## Model", "",
        f"- sequence: {layout.get('text_len')} caption tokens + {layout.get('grid')} image codes "
        f"(codebook {layout.get('codebook_size')})",
        f"- sampling defaults: {json.dumps(config.get('sampling', {}))}",
    ]
    if training:
        model = training.get("model", {})
        lines += [f"- GPT: {model.get('n_layer')} layers × {model.get('n_embd')} wide, {model.get('n_head')} heads; "
                  f"trained {training.get('max_steps')} steps, optimiser {training.get('optimizer')}, lr {training.get('lr')}"]
    if last:
        lines += [f"- last logged step {last.get('step')}: loss {last.get('loss'):.4f}"]
    if samples:
        lines += ["", "## Samples", "", f"![samples](samples/{samples[-1].name})"]
    lines += ["", "## Data and credits", "", credits or "Not stated by the uploader.", ""]
    return "\n".join(lines)


def push_model(model_dir: str | Path, repo_id: str, *, license: str = "other", credits: str = "", private: bool = False,
               token: str | None = None, api=None) -> str:
    """Uploads the model files of `model_dir` with a model card (README.md) to `repo_id`; returns the commit URL.

    api: a huggingface_hub.HfApi (by default one with `token`).
    """
    model_dir = Path(model_dir)
    if not is_model_directory(model_dir):
        raise FileNotFoundError(f"{model_dir} is not a gptdraw model directory: it has no {MODEL_CONFIG_NAME}")
    if not is_repo_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hub repository id (user/name)")
    card = model_card(model_dir, license, credits).replace("REPO_ID", repo_id)
    (model_dir / "README.md").write_text(card)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(model_dir), allow_patterns=MODEL_FILES,
                               commit_message="Upload gptdraw model")
    return str(getattr(commit, "commit_url", commit))
