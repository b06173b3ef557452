"""Fine-tuning from a trained model directory: it starts where the model left off, and a dataset
made with other tokenizers is refused, naming what differs."""

import json

import pytest
import torch

from conftest import tiny_vq_config
from gptdraw.cli import main
from gptdraw.data.prepare import prepare
from gptdraw.data.prepare_config import PrepareConfig
from gptdraw.data.sources import ShapesSource
from gptdraw.vq.model import ImageTokenizer

FLAGS = ["--max-steps", "12", "--lr", "3e-3", "--warmup-steps", "2", "--precision", "fp32", "--eval-every", "0",
         "--sample-every", "0", "--log-every", "1", "--checkpoint-every", "100", "--seed", "1", "--micro-batch-size", "16"]


def first_loss(run) -> float:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["loss"]


@pytest.fixture(scope="module")
def trained(shapes_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    (root / "small.json").write_text(json.dumps({"model": {"n_layer": 2, "n_head": 2, "n_embd": 32}}))
    run = root / "base"
    assert main(["train", "--data", str(shapes_data.data_dir), "--out", str(run), "--config", str(root / "small.json"),
                 *FLAGS]) == 0
    return run


def test_fine_tuning_starts_from_the_trained_model(shapes_data, trained, tmp_path):
    tuned = tmp_path / "tuned"
    # The preset's architecture (4 layers × 256) differs: the model directory's (2 × 32) wins.
    assert main(["train", "--data", str(shapes_data.data_dir), "--out", str(tuned), "--init-from", str(trained),
                 *FLAGS[2:], "--max-steps", "2"]) == 0
    config = json.loads((tuned / "train_config.json").read_text())
    assert (config["model"]["n_layer"], config["model"]["n_embd"]) == (2, 32)
    base_losses = [json.loads(line)["loss"] for line in (trained / "metrics.jsonl").read_text().splitlines()]
    # Its first loss is that of a trained model, far below the fresh model's first.
    assert first_loss(tuned) < base_losses[0] - 0.5 and first_loss(tuned) < base_losses[-1] + 0.3


def test_a_dataset_of_other_tokenizers_is_refused(shapes_data, trained, tmp_path, caption_tokenizer, capsys):
    torch.manual_seed(7)
    other = ImageTokenizer(tiny_vq_config(image_size=32)).eval()
    other.save_pretrained(tmp_path / "other_vq")
    prepare(ShapesSource(40, 32, seed=1), tmp_path / "other_data", PrepareConfig(eval_count=8, workers=0),
            image_tokenizer=other, caption_tokenizer=caption_tokenizer, progress=False,
            image_tokenizer_path=str(tmp_path / "other_vq"))
    assert main(["train", "--data", str(tmp_path / "other_data"), "--out", str(tmp_path / "tuned"), "--init-from",
                 str(trained), *FLAGS]) == 2
    error = capsys.readouterr().err
    assert "another image tokenizer" in error and "--vq" in error and "caption" not in error.split(":")[1]
