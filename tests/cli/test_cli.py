"""The gptdraw command as a user runs it: files written, and bad input answered in one line."""

import json

import pytest
from PIL import Image

from gptdraw.cli import main
from gptdraw.pipeline import GPTDrawPipeline
from gptdraw.gpt.sampling import SamplingConfig


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, gpt, caption_tokenizer, image_tokenizer, layout):
    directory = tmp_path_factory.mktemp("model")
    GPTDrawPipeline(gpt, caption_tokenizer, image_tokenizer, layout, SamplingConfig(top_k=10)).save_pretrained(directory)
    return directory


def test_generate_writes_pngs_with_sidecars(model_dir, tmp_path):
    code = main(["generate", "a small red circle in the top left", "a blue square", "--model", str(model_dir),
                 "--out", str(tmp_path), "--num-images", "2", "--seed", "3", "--temperature", "0.7", "--animate"])
    assert code == 0
    pngs = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in pngs] == ["a-blue-square-0.png", "a-blue-square-1.png",
                                      "a-small-red-circle-in-the-top-left-0.png", "a-small-red-circle-in-the-top-left-1.png"]
    sidecar = json.loads((tmp_path / "a-blue-square-1.json").read_text())
    assert sidecar["prompt"] == "a blue square" and sidecar["seed"] == 3 and sidecar["temperature"] == 0.7
    assert sidecar["top_k"] == 10  # the model's default, recorded
    assert Image.open(pngs[0]).size == (16, 16)
    gif = Image.open(tmp_path / "a-blue-square-0.gif")
    assert gif.n_frames > 1


def test_generate_same_seed_same_images(model_dir, tmp_path):
    for out in ("a", "b"):
        assert main(["generate", "a red circle", "--model", str(model_dir), "--out", str(tmp_path / out), "--seed", "9"]) == 0
    assert (tmp_path / "a" / "a-red-circle-0.png").read_bytes() == (tmp_path / "b" / "a-red-circle-0.png").read_bytes()


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "   ", "--model", "MODEL"], "prompt is empty"),
        (["generate", "a red circle", "--model", "MISSING"], "does not exist"),
        (["generate", "a red circle", "--model", "MODEL", "--num-images", "0"], "--num-images"),
        (["generate", "a red circle", "--model", "MODEL", "--top-p", "1.5"], "top_p"),
    ],
)
def test_bad_input_is_one_clear_line(model_dir, tmp_path, capsys, args, message):
    args = [str(model_dir) if a == "MODEL" else str(tmp_path / "missing") if a == "MISSING" else a for a in args]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_incomplete_model_directory(model_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "gptdraw.json").write_text((model_dir / "gptdraw.json").read_text())
    assert main(["generate", "a red circle", "--model", str(broken), "--out", str(tmp_path / "o")]) == 2
    assert "lacks transformer" in capsys.readouterr().err


def test_overlong_prompt_is_truncated_with_a_warning(model_dir, tmp_path, caplog):
    prompt = "a large blue square on the right and a green circle in the center " * 4
    with caplog.at_level("WARNING"):
        assert main(["generate", prompt, "--model", str(model_dir), "--out", str(tmp_path)]) == 0
    assert "truncated" in caplog.text
