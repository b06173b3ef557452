"""The one precision vocabulary and resolver (gptdraw.runtime), and the configs that speak it."""

import logging

import pytest
import torch

from gptdraw.gpt.config import TrainConfig
from gptdraw.runtime import accelerate_precision, canonical_precision, native_bf16, resolve_precision, torch_dtype

CPU = torch.device("cpu")


@pytest.mark.parametrize("name, expected", [("auto", "auto"), ("fp32", "fp32"), ("float32", "fp32"), ("no", "fp32"),
                                            ("bfloat16", "bf16"), ("bf16", "bf16"), ("float16", "fp16")])
def test_every_alias_maps_into_the_one_vocabulary(name, expected):
    assert canonical_precision(name) == expected


def test_an_unknown_precision_is_a_one_line_error_naming_the_choices():
    with pytest.raises(ValueError, match=r"unknown precision 'fp8'; choose one of auto, fp32, bf16, fp16") as error:
        canonical_precision("fp8")
    assert "\n" not in str(error.value)


def test_auto_follows_the_hardware_and_the_job(caplog):
    with caplog.at_level(logging.INFO, logger="gptdraw.runtime"):
        training = resolve_precision("auto", CPU, purpose="training")
        encoding = resolve_precision("auto", CPU, purpose="pre-encoding", bf16_on_cpu=False)
    assert training == ("bf16" if native_bf16(CPU) else "fp32")
    assert encoding == "fp32"  # codes must not depend on which CPU encoded them
    assert resolve_precision("bfloat16", CPU, purpose="drawing") == "bf16"  # asked for: given, even where emulated
    logged = [record.getMessage() for record in caplog.records]
    assert logged[0].startswith(f"training in {training} (auto: ") and logged[1].startswith("pre-encoding in fp32")


def test_names_for_torch_and_accelerate():
    assert torch_dtype("bf16") is torch.bfloat16 and torch_dtype("float32") is torch.float32
    assert accelerate_precision("fp32") == "no" and accelerate_precision("fp16") == "fp16"


def test_train_config_reads_the_old_field_name_and_old_values():
    old = TrainConfig().to_dict()
    del old["precision"]
    old["mixed_precision"] = "no"  # a train_config.json as runs before the rename wrote it
    assert TrainConfig.from_dict(old).precision == "fp32"
    assert TrainConfig(precision="bfloat16").precision == "bf16"
    with pytest.raises(ValueError, match="unknown precision"):
        TrainConfig(precision="half")

