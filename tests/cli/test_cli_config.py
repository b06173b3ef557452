"""`gptdraw train` takes every TrainConfig field as a flag and from `--config` (YAML or JSON)."""

import dataclasses
import json
import typing

import pytest
import yaml

from gptdraw.cli import build_parser
from gptdraw.cli.train import train_config
from gptdraw.gpt.config import MODEL_PRESETS, TrainConfig, train_preset

BASE = ["train", "--data", "d", "--out", "o", "--preset", "tiny"]


def other_value(field: dataclasses.Field, current):
    """A valid value of the field's type that differs from `current`."""
    hint = typing.get_type_hints(TrainConfig)[field.name]
    if typing.get_origin(hint) is typing.Literal:
        return next(choice for choice in typing.get_args(hint) if choice != current)
    if hint == bool | None:
        return True if current is not True else False
    if hint == str | None:
        return "reduce-overhead" if current != "reduce-overhead" else "max-autotune"
    if hint is bool:
        return not current
    if hint is int:
        return current + 1
    if hint is float:
        return round(current + 0.25, 6)
    if hint is str:
        return "aot_eager" if current != "aot_eager" else "inductor"
    if field.name == "betas":
        return (0.8, 0.95)
    if field.name == "sample_prompts":
        return ("a red circle", "a blue square")
    raise AssertionError(f"no test value for {field.name}: {hint}")


def as_flags(values: dict) -> list[str]:
    flags = []
    for name, value in values.items():
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{name.replace('_', '-')}")
        elif isinstance(value, tuple):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags


def changed_values() -> dict:
    preset = train_preset("tiny")
    return {field.name: other_value(field, getattr(preset, field.name))
            for field in dataclasses.fields(TrainConfig) if field.name != "model"}


def parse(argv):
    return train_config(build_parser().parse_args(argv))


def test_every_training_field_is_a_flag():
    values = changed_values()
    config = parse([*BASE, *as_flags(values)])
    for name, value in values.items():
        assert getattr(config, name) == value, name
    assert config.model == train_preset("tiny").model


def test_the_model_fields_beside_its_sizes_are_flags_over_the_preset_and_the_config_file(tmp_path):
    config = parse([*BASE, "--model", "gpt-draw", "--no-tie-head", "--caption-attention", "prefix"])
    assert config.model == dataclasses.replace(MODEL_PRESETS["gpt-draw"], tie_head=False, caption_attention="prefix")
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "caption_attention": "prefix"}}))
    config = parse([*BASE, "--config", str(path), "--no-tie-head"])
    assert (config.model.n_layer, config.model.caption_attention, config.model.tie_head) == (2, "prefix", False)
    assert parse([*BASE, "--config", str(path)]).model.tie_head is True


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_every_training_field_from_a_config_file(tmp_path, suffix):
    values = {**changed_values(), "model": "gpt-draw"}
    path = tmp_path / f"run{suffix}"
    text = {name: list(value) if isinstance(value, tuple) else value for name, value in values.items()}
    path.write_text(json.dumps(text) if suffix == ".json" else yaml.safe_dump(text))
    config = parse([*BASE, "--config", str(path)])
    for name, value in values.items():
        assert getattr(config, name) == (MODEL_PRESETS["gpt-draw"] if name == "model" else value), name
    # Flags still win over the file.
    assert parse([*BASE, "--config", str(path), "--lr", "0.5"]).lr == 0.5


def test_the_config_a_run_writes_reads_back(tmp_path):
    written = dataclasses.replace(train_preset("gpt-draw"), lr=3e-4, betas=(0.9, 0.95), sample_prompts=("a cat",))
    path = tmp_path / "train_config.json"
    path.write_text(json.dumps(written.to_dict()))  # as a run writes it (gptdraw.gpt.train)
    assert parse([*BASE, "--config", str(path)]) == written


def test_bad_config_files_are_refused(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"lr": 0.1, "learning_rate": 0.1}))
    with pytest.raises(ValueError, match="unknown field.*learning_rate"):
        parse([*BASE, "--config", str(path)])
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a mapping"):
        parse([*BASE, "--config", str(path)])
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        parse([*BASE, "--config", str(path)])
    with pytest.raises(FileNotFoundError, match="config file"):
        parse([*BASE, "--config", str(tmp_path / "missing.json")])


def test_every_vq_training_field_is_a_flag_and_a_config_entry(tmp_path):
    from gptdraw.cli.train_vq import vq_train_config
    from gptdraw.vq.config import VQTrainConfig

    defaults = VQTrainConfig()
    hints = typing.get_type_hints(VQTrainConfig)
    values = {}
    for field in dataclasses.fields(VQTrainConfig):
        current, hint = getattr(defaults, field.name), hints[field.name]
        if field.name == "preset":
            values["preset"] = "taming-f16-16384"
        elif field.name == "image_size":
            values["image_size"] = 128
        elif field.name == "vq_embed_dim":  # None: the preset's
            values["vq_embed_dim"] = 16
        elif field.name == "code_norm":  # None: the preset's
            values["code_norm"] = "l2"
        elif typing.get_origin(hint) is typing.Literal:
            values[field.name] = next(choice for choice in typing.get_args(hint) if choice != current)
        elif hint is bool:
            values[field.name] = not current
        elif hint is int:
            values[field.name] = current + 1
        elif hint is float:
            values[field.name] = round(min(current + 0.05, 0.95), 6) if current < 1 else current + 0.5
        elif hint == (str | None):
            values[field.name] = f"{field.name}.pth"
        else:
            raise AssertionError(f"no test value for {field.name}: {hint}")
    base = ["train-vq", "--out", str(tmp_path / "vq")]
    from_flags = vq_train_config(build_parser().parse_args([*base, *as_flags(values)]))
    path = tmp_path / "vq.yaml"
    path.write_text(yaml.safe_dump(values))
    from_file = vq_train_config(build_parser().parse_args([*base, "--config", str(path)]))
    for name, value in values.items():
        assert getattr(from_flags, name) == value, name
        assert getattr(from_file, name) == value, name


@pytest.mark.parametrize("grouped, older", [
    (["vq", "train", "--out", "o", "--steps", "5"], ["train-vq", "--out", "o", "--steps", "5"]),
    (["data", "prepare", "shapes", "--out", "o", "--vq", "v"], ["prepare", "shapes", "--out", "o", "--vq", "v"]),
])
def test_commands_grouped_by_stage_keep_their_older_spellings(grouped, older):
    new, old = build_parser().parse_args(grouped), build_parser().parse_args(older)
    assert new.func is old.func
    ignored = {"command", "vq_command", "data_command"}
    assert {k: v for k, v in vars(new).items() if k not in ignored} == {k: v for k, v in vars(old).items() if k not in ignored}


PREPARE = ["data", "prepare", "shapes", "--out", "o", "--image-tokenizer", "v"]


def changed_prepare_values() -> dict:
    """A valid value, other than the default, for every PrepareConfig field but eval_count (which
    cannot be given with eval_fraction)."""
    from gptdraw.data.prepare_config import PrepareConfig

    defaults, hints = PrepareConfig(), typing.get_type_hints(PrepareConfig)
    values = {}
    for field in dataclasses.fields(PrepareConfig):
        current, hint = getattr(defaults, field.name), hints[field.name]
        if field.name == "eval_count":
            continue
        if typing.get_origin(hint) is typing.Literal:
            values[field.name] = next(choice for choice in typing.get_args(hint) if choice != current)
        elif hint is str:
            values[field.name] = "gpt2"
        elif hint == (int | None):
            values[field.name] = 3
        elif hint is int:
            values[field.name] = current + 1
        elif hint is float:
            values[field.name] = 0.25
        else:
            raise AssertionError(f"no test value for {field.name}: {hint}")
    return values


def parse_prepare(argv):
    from gptdraw.cli.data import prepare_config

    return prepare_config(build_parser().parse_args(argv))


def test_every_prepare_field_is_a_flag_and_a_config_entry(tmp_path):
    from gptdraw.data.prepare_config import PrepareConfig

    values = changed_prepare_values()
    from_flags = parse_prepare([*PREPARE, *as_flags(values)])
    path = tmp_path / "prepare.yaml"
    path.write_text(yaml.safe_dump(values))
    from_file = parse_prepare([*PREPARE, "--config", str(path)])
    assert from_flags == from_file == PrepareConfig(**values)
    assert parse_prepare([*PREPARE, "--eval-count", "7"]).eval_count == 7
    # Flags win over the file; nothing given, nothing changed.
    assert parse_prepare([*PREPARE, "--config", str(path), "--batch-size", "9"]).batch_size == 9
    assert parse_prepare(PREPARE) == PrepareConfig()


def test_prepare_keeps_its_older_flag_names():
    older = ["prepare", "shapes", "--out", "o", "--vq", "v", "--dtype", "bf16"]
    assert build_parser().parse_args(older).image_tokenizer == "v"
    assert parse_prepare(older).precision == "bf16"
    assert build_parser().parse_args(["data", "inspect", "d", "--vq", "v"]).image_tokenizer == "v"


@pytest.mark.parametrize("fields, message", [
    ({"shard_size": 0}, "shard_size must be at least 1"),
    ({"workers": -1}, "workers must be 0 or more"),
    ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ({"eval_fraction": 1.0}, r"eval_fraction must be in \[0, 1\)"),
    ({"eval_fraction": 0.1, "eval_count": 5}, "not both"),
])
def test_prepare_settings_that_cannot_work_are_refused_naming_the_field(fields, message):
    from gptdraw.data.prepare_config import PrepareConfig

    with pytest.raises(ValueError, match=message):
        PrepareConfig(**fields)


def test_a_config_file_is_read_only_as_a_small_regular_file(tmp_path):
    """`train --config /dev/zero` read until MemoryError, and a FIFO blocked for ever (issue 23)."""
    import os

    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    big = tmp_path / "big.json"
    with open(big, "wb") as file:
        file.truncate(5 * 2**20)  # sparse: no disk written
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    for path, message in (("/dev/zero", "/dev/zero is a device, not a regular file"),
                          (fifo, "fifo.json is a FIFO, not a regular file"), (tmp_path, "is a folder"),
                          (big, "big.json is 5 MiB, over the 4 MiB limit for a config file"),
                          (deep, "deep.json is not valid JSON")):
        with pytest.raises(ValueError) as error:
            parse([*BASE, "--config", str(path)])
        assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("entries, message", [
    ({"checkpoint_every": 0}, "checkpoint_every must be at least 1"),
    ({"log_every": 0}, "log_every must be at least 1"),
    ({"grad_clip": float("nan")}, "grad_clip must be a finite number"),
    ({"seed": 2**64}, r"seed must be in \[0, 2\*\*63\)"),
    ({"lr": "fast"}, "lr must be a finite number"),
])
def test_a_value_the_config_refuses_names_the_file_it_came_from(tmp_path, entries, message):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(entries))  # json writes NaN as NaN, which json (and the page's API) reads back
    with pytest.raises(ValueError, match=f"{path}: {message}"):
        parse([*BASE, "--config", str(path)])


def test_a_model_in_a_config_file_is_bounded_before_anything_is_built(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"model": {"n_layer": 1_000_000, "n_head": 2, "n_embd": 32}}))
    with pytest.raises(ValueError, match=r"n_layer must be in \[1, 256\], got 1000000"):
        parse([*BASE, "--config", str(path)])


@pytest.mark.parametrize("flags, message", [
    (["--checkpoint-every", "0"], "checkpoint_every must be at least 1"),
    (["--log-every", "0"], "log_every must be at least 1"),
    (["--grad-clip", "nan"], "grad_clip must be a finite number"),
    (["--eval-batches", "0"], "eval_batches must be at least 1"),
    (["--seed", str(2**64)], r"seed must be in [0, 2**63)"),
])
def test_training_flags_the_config_refuses_are_one_line(tmp_path, capsys, flags, message):
    from gptdraw.cli import main

    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), *flags]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("gptdraw train: error:") and message in error and "\n" not in error
    assert not (tmp_path / "out").exists()  # refused before anything was made


@pytest.mark.parametrize("flags, message", [
    (["--cfg-scale", "nan"], "cfg_scale must be a finite number"),
    (["--cfg-scale", "inf"], "cfg_scale must be a finite number"),
    (["--temperature", "nan"], "temperature must be a finite number"),
    (["--top-k", "2000000"], "top_k must be in [0, 1048576]"),
])
def test_drawing_flags_the_config_refuses_are_one_line(tmp_path, capsys, flags, message):
    from pathlib import Path

    from gptdraw.cli import main

    model = Path(__file__).parents[1] / "fixtures" / "model-v1" / "model"
    assert main(["generate", "a red circle", "--model", str(model), "--out", str(tmp_path / "out"), *flags]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("INFO ")]
    assert len(errors) == 1 and errors[0].startswith("gptdraw generate: error:") and message in errors[0], errors
    assert not list((tmp_path / "out").glob("*.png"))
