import pytest
import torch

from gptdraw.sampling import SamplingSettings, apply_cfg, filter_logits, iter_codes, sample_codes
from gptdraw.sequence import SequenceLayout


def captions(layout, batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, layout.text_vocab_size, (batch, layout.text_len), generator=generator)
    ids[:, -2:] = layout.pad_id
    return ids


@pytest.mark.parametrize(
    "settings",
    [
        SamplingSettings(temperature=0),
        SamplingSettings(temperature=1.0, top_k=10),
        SamplingSettings(temperature=0.8, top_p=0.9, cfg_scale=3.0),
    ],
)
def test_cached_equals_uncached(gpt, layout, settings):
    ids = captions(layout)
    cached = sample_codes(gpt, layout, ids, settings, torch.Generator().manual_seed(7), use_cache=True)
    uncached = sample_codes(gpt, layout, ids, settings, torch.Generator().manual_seed(7), use_cache=False)
    assert cached.shape == (3, *layout.grid)
    assert torch.equal(cached, uncached)


def test_seed_reproducible_and_seeds_differ(gpt, layout):
    ids = captions(layout)
    a = sample_codes(gpt, layout, ids, SamplingSettings(), torch.Generator().manual_seed(1))
    b = sample_codes(gpt, layout, ids, SamplingSettings(), torch.Generator().manual_seed(1))
    c = sample_codes(gpt, layout, ids, SamplingSettings(), torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_cfg_scale_one_equals_conditional(gpt, layout):
    # Scale 1 must not change the distribution: same draws as plain conditional sampling.
    ids = captions(layout)
    plain = sample_codes(gpt, layout, ids, SamplingSettings(cfg_scale=1.0), torch.Generator().manual_seed(3))
    cond = torch.randn(4, 50)
    uncond = torch.randn(4, 50)
    assert torch.allclose(apply_cfg(cond, uncond, 1.0), cond)
    assert torch.allclose(apply_cfg(cond, uncond, 0.0), uncond)
    # And guidance with scale ≠ 1 is a different draw on an untrained model.
    guided = sample_codes(gpt, layout, ids, SamplingSettings(cfg_scale=4.0), torch.Generator().manual_seed(3))
    assert not torch.equal(plain, guided)


def test_only_image_codes_are_drawn(layout, gpt):
    # Push the model towards text ids: the sampler must still only draw codes.
    biased = type(gpt)(gpt.config)
    biased.load_state_dict(gpt.state_dict())
    with torch.no_grad():
        biased.lm_head.weight[: layout.text_vocab_size] *= 50
        biased.lm_head.weight[layout.text_vocab_size + layout.codebook_size :] += 5
    codes = sample_codes(biased.eval(), layout, captions(layout), SamplingSettings(temperature=2.0), torch.Generator().manual_seed(0))
    assert codes.min() >= 0 and codes.max() < layout.codebook_size


def test_prefix_codes_are_kept(gpt, layout):
    prefix = torch.randint(0, layout.codebook_size, (3, layout.grid[1]))
    codes = sample_codes(gpt, layout, captions(layout), SamplingSettings(), torch.Generator().manual_seed(0), prefix_codes=prefix)
    assert torch.equal(codes.reshape(3, -1)[:, : layout.grid[1]], prefix)


def test_iter_codes_yields_every_step(gpt, layout):
    steps = list(iter_codes(gpt, layout, captions(layout, batch=1), SamplingSettings(temperature=0)))
    assert [s.shape[1] for s in steps] == list(range(1, layout.image_len + 1))


def test_filter_logits():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    # probs ≈ [.03, .09, .24, .64]: the nucleus for 0.7 is the top two.
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[True, True, False, False]]
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[True, True, True, False]]


def test_settings_validation():
    with pytest.raises(ValueError, match="top_p"):
        SamplingSettings(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingSettings(temperature=-1)
