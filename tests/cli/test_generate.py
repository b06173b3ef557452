"""`gptdraw generate` at scale (issue 23): bounded work, every image kept under a bounded, unique
name, --out checked before any drawing, sidecars that are valid JSON."""

import json
import os

import pytest

from gptdraw.cli import main
from gptdraw.cli.generate import SLUG_LIMIT
from gptdraw.gpt.sampling import SamplingConfig
from gptdraw.pipeline import GPTDrawPipeline

LONG_PROMPT = "a large blue square on the right and a small green circle in the center of the picture " * 3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, gpt, caption_tokenizer, image_tokenizer, layout):
    directory = tmp_path_factory.mktemp("model")
    GPTDrawPipeline(gpt, caption_tokenizer, image_tokenizer, layout, SamplingConfig(top_k=10)).save_pretrained(directory)
    return directory


def strict_json(path):
    """The file as JSON, refusing NaN and Infinity, which json.loads would otherwise accept."""
    def refuse(constant):
        raise ValueError(f"{path.name} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_repeated_prompts_keep_every_drawing_under_bounded_unique_names(model_dir, tmp_path, capsys):
    # 40 prompts of 3 distinct: the long one 34 times grew its name by "-again" past 255 bytes.
    prompts = [LONG_PROMPT] * 34 + ["a red circle", "a blue square"] * 3
    out = tmp_path / "out"
    assert main(["generate", *prompts, "--model", str(model_dir), "--out", str(out), "--batch-size", "16"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 40 == len(set(capsys.readouterr().out.split()))
    assert all(len(path.name) <= SLUG_LIMIT + len("-99.json") for path in out.iterdir())
    assert sorted(path.stem for path in out.glob("*.json")) == sorted(path.stem for path in pngs)
    assert {path.stem for path in out.glob("a-red-circle-*")} == {"a-red-circle-0", "a-red-circle-1", "a-red-circle-2"}
    sidecars = [strict_json(path) for path in out.glob("*.json")]
    assert sorted(sidecar["image_number"] for sidecar in sidecars) == list(range(40))
    assert all(sidecar["images_in_run"] == 40 and sidecar["prompt"] == prompts[sidecar["image_number"]]
               for sidecar in sidecars)


def test_batch_size_changes_no_file(model_dir, tmp_path):
    prompts = ["a red circle", "a blue square", "a green triangle"]
    for size in ("1", "64"):
        argv = ["generate", *prompts, "--model", str(model_dir), "--out", str(tmp_path / size), "--num-images", "2",
                "--seed", "4", "--batch-size", size]
        assert main(argv) == 0
    names = sorted(path.name for path in (tmp_path / "1").iterdir())
    assert len(names) == 12 and names == sorted(path.name for path in (tmp_path / "64").iterdir())
    assert all((tmp_path / "1" / name).read_bytes() == (tmp_path / "64" / name).read_bytes() for name in names)


def test_each_batch_is_written_as_soon_as_it_is_drawn(model_dir, tmp_path, monkeypatch):
    decoded = []
    decode = GPTDrawPipeline.decode_partial

    def fail_in_the_third_batch(self, codes):
        decoded.append(len(codes))
        if len(decoded) == 3:
            raise RuntimeError("the machine went down")
        return decode(self, codes)

    monkeypatch.setattr(GPTDrawPipeline, "decode_partial", fail_in_the_third_batch)
    with pytest.raises(RuntimeError, match="went down"):
        main(["generate", "a red circle", "--model", str(model_dir), "--out", str(tmp_path), "--num-images", "10",
              "--batch-size", "4"])
    assert sorted(path.name for path in tmp_path.glob("*.png")) == [f"a-red-circle-{n}.png" for n in range(8)]
    assert len(list(tmp_path.glob("*.json"))) == 8


def test_files_already_in_out_are_never_overwritten(model_dir, tmp_path, capsys):
    (tmp_path / "a-red-circle-0.png").write_bytes(b"an earlier drawing")
    (tmp_path / "a-red-circle-2.json").write_text("{}")
    argv = ["generate", "a red circle", "--model", str(model_dir), "--out", str(tmp_path), "--num-images", "2"]
    assert main(argv) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "a-red-circle-1.png"), str(tmp_path / "a-red-circle-3.png")]
    assert (tmp_path / "a-red-circle-0.png").read_bytes() == b"an earlier drawing"
    assert (tmp_path / "a-red-circle-2.json").read_text() == "{}"
    assert main(argv) == 0  # a second run numbers past the first
    assert sorted(path.name for path in tmp_path.glob("*.png")) == [f"a-red-circle-{n}.png" for n in (0, 1, 3, 4, 5)]
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize("argv, message", [
    (["a red circle", "a blue square", "--num-images", "5001"], "10,002 images asked for (prompts × images per prompt), more than --max-images 10,000; raise --max-images"),
    (["a red circle", "--num-images", "7", "--max-images", "6"], "more than --max-images 6"),
    (["a red circle", "--max-images", "0"], "--max-images must be a whole number of at least 1"),
    (["a red circle", "--batch-size", "0"], "--batch-size must be a whole number of at least 1"),
    (["a red circle", "--seed", str(2**64)], "argument --seed: a seed must be from 0 to 2**63 - 1"),
])
def test_absurd_work_is_refused_in_one_line_before_the_model_loads(tmp_path, capsys, argv, message):
    # The model does not exist: an error about it would mean the check came after loading.
    try:
        code = main(["generate", *argv, "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "o")])
    except SystemExit as exit:  # argparse's own errors (after the usage lines)
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and message in err.strip().splitlines()[-1] and "Traceback" not in err


def test_a_raised_limit_lets_the_drawing_go_ahead(tmp_path, capsys):
    argv = ["generate", "a red circle", "--num-images", "10001", "--max-images", "10001"]
    assert main([*argv, "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "o")]) == 2
    assert "no-model" in capsys.readouterr().err  # past the limit's check, on to loading the model


def test_a_progress_bar_over_the_images_of_several_batches(model_dir, tmp_path, capsys):
    argv = ["generate", "a red circle", "--model", str(model_dir), "--out", str(tmp_path), "--num-images", "6",
            "--batch-size", "4"]
    assert main(argv) == 0
    assert "6/6" in capsys.readouterr().err


@pytest.mark.parametrize("make_out", [
    pytest.param(lambda tmp: tmp / "a-file", id="a file"),
    pytest.param(lambda tmp: tmp / "a-file" / "below", id="under a file"),
    pytest.param(lambda tmp: "", id="empty"),
    pytest.param("read-only", id="read-only"),
])
def test_an_unusable_out_is_refused_before_any_drawing(tmp_path, capsys, make_out):
    (tmp_path / "a-file").write_text("not a folder")
    if make_out == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder; the other cases cover the check")
        out = tmp_path / "read-only"
        out.mkdir()
        out.chmod(0o500)
    else:
        out = make_out(tmp_path)
    try:
        code = main(["generate", "a red circle", "--model", str(tmp_path / "no-model"), "--out", str(out)])
    finally:
        if make_out == "read-only":
            out.chmod(0o700)
    err = capsys.readouterr().err
    assert code == 2 and "--out" in err and "no-model" not in err and "Traceback" not in err


def test_sidecars_are_valid_json_and_nan_settings_draw_nothing(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "a red circle", "--model", str(model_dir), "--out", str(out), "--temperature", "nan"]) == 2
    assert "temperature" in capsys.readouterr().err and not list(out.glob("*.png"))
    assert main(["generate", "a red circle", "--model", str(model_dir), "--out", str(out), "--temperature", "0",
                 "--cfg-scale", "1.5", "--animate"]) == 0
    sidecar = strict_json(out / "a-red-circle-0.json")
    assert sidecar["temperature"] == 0 and sidecar["cfg_scale"] == 1.5 and sidecar["top_k"] == 10
    assert (out / "a-red-circle-0.gif").exists()


def test_a_device_this_machine_lacks_is_refused_before_out_is_made(tmp_path, capsys):
    """bench/bad_inputs.py saw an empty --out left by a refused --device."""
    from gptdraw.cli import main

    from pathlib import Path

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "model-v1"
    assert main(["generate", "x", "--model", str(fixture), "--device", "bogus",
                 "--out", str(tmp_path / "drawn")]) == 2
    assert "--device 'bogus' is not a device" in capsys.readouterr().err
    assert not (tmp_path / "drawn").exists()
