"""The GPT's configs refuse what they cannot mean, naming the field, so that the CLI, the Python API
and the web page all refuse it alike."""

import math

import pytest

from gptdraw.gpt.config import ModelConfig, SamplingConfig, TrainConfig


@pytest.mark.parametrize("field, value, message", [
    ("temperature", math.nan, "temperature must be a finite number"),
    ("temperature", math.inf, "temperature must be a finite number"),
    ("cfg_scale", math.nan, "cfg_scale must be a finite number"),
    ("cfg_scale", -math.inf, "cfg_scale must be a finite number"),
    ("top_p", math.nan, "top_p must be a finite number"),
    ("top_k", 2.5, "top_k must be a whole number"),
    ("top_k", True, "top_k must be a whole number"),
])
def test_sampling_refuses_nan_infinity_and_non_integers(field, value, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**{field: value})


@pytest.mark.parametrize("field, value, message", [
    ("checkpoint_every", 0, "checkpoint_every must be at least 1"),
    ("log_every", 0, "log_every must be at least 1"),
    ("eval_batches", 0, "eval_batches must be at least 1"),
    ("grad_clip", math.nan, "grad_clip must be a finite number"),
    ("lr", math.inf, "lr must be a finite number"),
    ("seed", 2**64, r"seed must be in \[0, 2\*\*63\)"),
    ("seed", -1, r"seed must be in \[0, 2\*\*63\)"),
    ("eval_every", -1, "eval_every must be ≥ 0"),
    ("max_steps", 2.0, "max_steps must be a whole number"),
    ("betas", (0.9, math.nan), "betas must be two numbers"),
    ("embedding_lr_ratio", 0.0, "embedding_lr_ratio must be positive"),
    ("embedding_lr_ratio", math.nan, "embedding_lr_ratio must be a finite number"),
    ("checkpoint_minutes", -1.0, "checkpoint_minutes must be ≥ 0"),
    ("checkpoint_minutes", math.inf, "checkpoint_minutes must be a finite number"),
    ("part_dropout", 1.5, r"part_dropout must be in \[0, 1\], got 1.5"),
    ("part_dropout", -0.1, r"part_dropout must be in \[0, 1\]"),
    ("part_dropout", math.nan, "part_dropout must be a finite number"),
    ("part_dropout_kind", "keep-two", "part_dropout_kind must be one of keep-one, drop-one, got 'keep-two'"),
])
def test_training_refuses_values_that_would_crash_or_mislead_later(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_zero_still_switches_evaluation_and_samples_off():
    config = TrainConfig(eval_every=0, sample_every=0, grad_clip=0)
    assert (config.eval_every, config.sample_every, config.grad_clip) == (0, 0, 0)


@pytest.mark.parametrize("changes", [dict(n_head=0), dict(n_layer=-1), dict(n_embd=0), dict(dropout=math.nan)])
def test_model_config_refuses_empty_or_undefined_shapes(changes):
    with pytest.raises(ValueError):
        ModelConfig(**{"n_layer": 2, "n_head": 2, "n_embd": 32, **changes})


@pytest.mark.parametrize("changes, message", [
    (dict(n_layer=1_000_000), r"n_layer must be in \[1, 256\]"),
    (dict(n_head=512, n_embd=1024), r"n_head must be in \[1, 256\]"),
    (dict(n_embd=32768), r"n_embd must be in \[1, 16384\]"),
])
def test_model_config_refuses_shapes_too_big_to_build(changes, message):
    """A million layers from a --config file took minutes and gigabytes before failing."""
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{"n_layer": 2, "n_head": 2, "n_embd": 32, **changes})


@pytest.mark.parametrize("changes, message", [
    (dict(tie_head="no"), "tie_head must be true or false"),
    (dict(mask_pads=1), "mask_pads must be true or false"),
    (dict(caption_attention="sideways"), "caption_attention must be one of causal, prefix"),
])
def test_model_config_refuses_a_head_or_caption_attention_it_does_not_know(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{"n_layer": 2, "n_head": 2, "n_embd": 32, **changes})


def test_sampling_refuses_a_top_k_past_any_vocabulary():
    with pytest.raises(ValueError, match=r"top_k must be in \[0, 1048576\]"):
        SamplingConfig(top_k=2**64)  # would overflow the sampler's int64 tensor
    assert SamplingConfig(top_k=2**20).top_k == 2**20
