import pytest
import torch

from gptdraw.gpt.config import ModelConfig
from gptdraw.gpt.model import build_model

from gptdraw.gpt.sampling import (
    CodeDrawer,
    DrawerConfig,
    SamplingTensors,
    SamplingConfig,
    apply_cfg,
    cumulative_sum,
    draw_uniform,
    filter_logits,
    image_logits,
    next_codes,
    pick_codes,
    sample_codes,
)


def captions(layout, batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, layout.text_vocab_size, (batch, layout.text_len), generator=generator)
    ids[:, -2:] = layout.pad_id
    return ids


def draw(gpt, layout, ids, settings=SamplingConfig(), seed=0, prefix=None, drawer=None, **options):
    """A whole drawing: (B, h, w) codes, by `drawer` or a new CodeDrawer with these DrawerConfig."""
    drawer = drawer or CodeDrawer(gpt, layout, DrawerConfig(**options))
    return sample_codes(drawer.iter_codes(ids, settings, torch.Generator().manual_seed(seed), prefix), layout)


@pytest.mark.parametrize(
    "settings",
    [
        SamplingConfig(temperature=0),
        SamplingConfig(temperature=1.0, top_k=10),
        SamplingConfig(temperature=0.8, top_p=0.9, cfg_scale=3.0),
    ],
)
def test_cached_equals_uncached(gpt, layout, settings):
    ids = captions(layout)
    cached = draw(gpt, layout, ids, settings, seed=7, use_cache=True)
    uncached = draw(gpt, layout, ids, settings, seed=7, use_cache=False)
    assert cached.shape == (3, *layout.grid)
    assert torch.equal(cached, uncached)


def test_seed_reproducible_and_seeds_differ(gpt, layout):
    ids = captions(layout)
    a = draw(gpt, layout, ids, seed=1)
    b = draw(gpt, layout, ids, seed=1)
    c = draw(gpt, layout, ids, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_cfg_scale_one_equals_conditional(gpt, layout):
    # Scale 1 is conditional sampling: the drawer then runs no blank-caption rows at all, and
    # mixing them in at scale 1 would pick exactly the conditional rows' codes (checked below on
    # the step that mixes them).
    ids = captions(layout)
    plain = draw(gpt, layout, ids, SamplingConfig(cfg_scale=1.0), seed=3)
    generator = torch.Generator().manual_seed(2)
    cond, uncond = torch.randn(4, 50, generator=generator), torch.randn(4, 50, generator=generator)
    # uncond + (cond − uncond) rounds to within a float32 step of the values involved (about 1e-7),
    # which is far from cond relatively where cond is near 0: hence an absolute tolerance.
    assert torch.allclose(apply_cfg(cond, uncond, 1.0), cond, atol=1e-6)
    assert torch.allclose(apply_cfg(cond, uncond, 0.0), uncond, atol=1e-6)
    # The batched guided rows mixed at scale 1 pick what the conditional rows pick alone.
    hidden = torch.randn(8, gpt.config.n_embd, generator=torch.Generator().manual_seed(4))
    uniform = draw_uniform(4, torch.Generator().manual_seed(5), "cpu")
    for settings in (SamplingConfig(cfg_scale=1.0), SamplingConfig(temperature=0, cfg_scale=1.0)):
        knobs = SamplingTensors.of(settings, "cpu")
        assert torch.equal(next_codes(gpt, layout, hidden, uniform, knobs), next_codes(gpt, layout, hidden[:4], uniform, knobs))
    assert not SamplingConfig(cfg_scale=1.0).guided
    # And guidance with scale ≠ 1 is a different draw on an untrained model.
    guided = draw(gpt, layout, ids, SamplingConfig(cfg_scale=4.0), seed=3)
    assert not torch.equal(plain, guided)


def test_only_image_codes_are_drawn(layout, gpt):
    # Push the model towards text ids: the sampler must still only draw codes.
    biased = type(gpt)(gpt.config)
    biased.load_state_dict(gpt.state_dict())
    with torch.no_grad():
        biased.lm_head.weight[: layout.text_vocab_size] *= 50
        biased.lm_head.weight[layout.text_vocab_size + layout.codebook_size :] += 5
    codes = draw(biased.eval(), layout, captions(layout), SamplingConfig(temperature=2.0))
    assert codes.min() >= 0 and codes.max() < layout.codebook_size


def test_prefix_codes_are_kept(gpt, layout):
    prefix = torch.randint(0, layout.codebook_size, (3, layout.grid[1]))
    codes = draw(gpt, layout, captions(layout), prefix=prefix)
    assert torch.equal(codes.reshape(3, -1)[:, : layout.grid[1]], prefix)


def test_iter_codes_yields_every_step(gpt, layout):
    for use_cache in (True, False):
        drawer = CodeDrawer(gpt, layout, DrawerConfig(use_cache=use_cache))
        steps = list(drawer.iter_codes(captions(layout, batch=1), SamplingConfig(temperature=0)))
        assert [s.shape[1] for s in steps] == list(range(1, layout.image_len + 1))
    with pytest.raises(ValueError, match="before its image was whole"):
        sample_codes(steps[:-1], layout)


def test_guidance_on_hidden_states_equals_guidance_on_logits(gpt, layout):
    # The LM head is linear: mixing the last hidden states, then one head, gives the mixed logits.
    hidden = torch.randn(6, gpt.config.n_embd, generator=torch.Generator().manual_seed(0))
    cond, uncond = hidden.chunk(2)
    for scale in (0.0, 2.5, 7.0):
        mixed_logits = apply_cfg(image_logits(gpt, layout, cond), image_logits(gpt, layout, uncond), scale)
        logits_of_mixed = image_logits(gpt, layout, apply_cfg(cond, uncond, scale))
        torch.testing.assert_close(logits_of_mixed, mixed_logits, rtol=1e-5, atol=1e-5)
    # So the guided rows pick from the mixed logits' distribution, row for row.
    knobs = SamplingTensors.of(SamplingConfig(temperature=0, cfg_scale=2.5), "cpu")
    picked = next_codes(gpt, layout, hidden, torch.zeros(3, 1), knobs)
    assert torch.equal(picked, apply_cfg(image_logits(gpt, layout, cond), image_logits(gpt, layout, uncond), 2.5).argmax(-1))


def test_filter_logits():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    # probs ≈ [.03, .09, .24, .64]: the nucleus for 0.7 is the top two.
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[True, True, False, False]]
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[True, True, True, False]]


def test_settings_validation():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=-1)
    with pytest.raises(ValueError, match="use_cache"):
        DrawerConfig(compile=True, use_cache=False)


def test_compiled_knobs_keep_filters_that_keep_everything_as_numbers():
    # Tensors let new filter values reuse a compiled step; numbers let it skip the codebook sort.
    plain = SamplingTensors.of(SamplingConfig(temperature=0.7, cfg_scale=2.0), "cpu", compiled=True)
    assert (plain.top_k, plain.top_p) == (0, 1.0) and not isinstance(plain.top_k, torch.Tensor)
    filtered = SamplingTensors.of(SamplingConfig(top_k=5), "cpu", compiled=True)
    assert isinstance(filtered.top_k, torch.Tensor) and isinstance(filtered.top_p, torch.Tensor)
    assert int(filtered.top_k) == 5 and float(filtered.top_p) == 1.0
    assert not isinstance(SamplingTensors.of(SamplingConfig(top_k=5), "cpu").top_k, torch.Tensor)


# ------------------------------------------------------------------------------ the fast sampler
SETTINGS = [
    SamplingConfig(temperature=0),
    SamplingConfig(temperature=1.0, top_k=10),
    SamplingConfig(temperature=0.8, top_p=0.9, cfg_scale=3.0),
    SamplingConfig(temperature=0, cfg_scale=2.0),
]


ATTENTIONS = {"causal": {}, "prefix": {"caption_attention": "prefix"}, "masked pads": {"mask_pads": True}}
"""How a test GPT attends (ModelConfig fields): each needs its own masks in the fast sampler."""


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("attention", list(ATTENTIONS))
def test_static_cache_equals_reference_loop(gpt, layout, settings, attention):
    # The fast loop (static KV cache, batched CFG, codebook-only logits) draws the reference's codes,
    # with a prefix-mask prefill, and with the pads masked in the prefill and every decode step.
    if attention != "causal":
        gpt = build_model(ModelConfig(n_layer=2, n_head=2, n_embd=32, **ATTENTIONS[attention]), layout).eval()
    ids = captions(layout)
    prefix = torch.randint(0, layout.codebook_size, (3, 5), generator=torch.Generator().manual_seed(1))
    for start in (None, prefix):
        fast = draw(gpt, layout, ids, settings, seed=7, prefix=start)
        slow = draw(gpt, layout, ids, settings, seed=7, prefix=start, use_cache=False)
        assert torch.equal(fast, slow)


@pytest.mark.parametrize("attention", ["causal", "masked pads"])
def test_compiled_step_equals_reference_and_is_reused(gpt, layout, attention):
    # The compiled path on CPU: dynamo traces the whole step (fullgraph) and AOT functionalises the
    # in-place cache updates, as for inductor/CUDA graphs; the graph runs without code generation.
    # Masked pads feed each step a mask: a tensor input of the same graph, not a recompile.
    from torch._dynamo import lookup_backend

    if attention != "causal":
        gpt = build_model(ModelConfig(n_layer=2, n_head=2, n_embd=32, **ATTENTIONS[attention]), layout).eval()
    graphs = []

    def counting_aot_eager(graph_module, example_inputs):
        graphs.append(graph_module)
        return lookup_backend("aot_eager")(graph_module, example_inputs)

    drawer = CodeDrawer(gpt, layout, DrawerConfig(compile=True, backend=counting_aot_eager))
    ids = captions(layout)  # 3 captions: padded to a batch of 4 inside the compiled drawer
    filtering = (SETTINGS[2], SamplingConfig(temperature=1.3, top_k=5, cfg_scale=1.5))
    for settings in (*filtering, SamplingConfig(temperature=0.9, cfg_scale=2.0)):
        fast = draw(gpt, layout, ids, settings, seed=11, drawer=drawer)
        slow = draw(gpt, layout, ids, settings, seed=11, use_cache=False)
        assert torch.equal(fast, slow)
    # Other filter values are tensors fed to the same graph; settings that filter nothing compile
    # a second graph, without the filter. One kept cache (4 × 2 rows).
    assert len(graphs) == 2
    assert list(drawer._caches) == [(8, torch.float32, torch.device("cpu"))]


def test_whole_prefix_is_returned_as_is(gpt, layout):
    prefix = torch.randint(0, layout.codebook_size, (2, layout.image_len))
    steps = list(CodeDrawer(gpt, layout).iter_codes(captions(layout, batch=2), prefix_codes=prefix))
    assert len(steps) == 1 and torch.equal(steps[0], prefix)


def test_bad_prefix_is_refused(gpt, layout):
    with pytest.raises(ValueError, match="prefix codes must be in"):
        draw(gpt, layout, captions(layout), prefix=torch.full((3, 2), layout.codebook_size))
    with pytest.raises(ValueError, match="rows"):
        draw(gpt, layout, captions(layout), prefix=torch.zeros(2, 2, dtype=torch.long))


def test_pick_codes_draws_from_the_filtered_distribution():
    # Inverse-CDF sampling is a categorical draw: frequencies follow softmax(logits / T).
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]])).expand(40000, 4)
    generator = torch.Generator().manual_seed(0)
    for compiled in (False, True):  # settings as numbers (skipped filters) or as tensors
        codes = pick_codes(logits, draw_uniform(40000, generator, "cpu"), SamplingTensors.of(SamplingConfig(), "cpu", compiled))
        frequencies = torch.bincount(codes, minlength=4).float() / 40000
        assert torch.allclose(frequencies, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.01)
        # top-k 2 renormalises over the two likeliest: 3/7 and 4/7.
        top2 = SamplingTensors.of(SamplingConfig(top_k=2), "cpu", compiled)
        codes = pick_codes(logits, draw_uniform(40000, generator, "cpu"), top2)
        frequencies = torch.bincount(codes, minlength=4).float() / 40000
        assert torch.allclose(frequencies, torch.tensor([0, 0, 3 / 7, 4 / 7]), atol=0.01)
    # The extremes of the uniform number still land on kept codes, and greedy ignores it.
    edges = torch.tensor([[0.0], [1.0 - 2**-24], [1.0]])
    top2 = SamplingTensors.of(SamplingConfig(top_k=2), "cpu")
    assert pick_codes(logits[:3], edges, top2).tolist() == [2, 3, 3]
    greedy = SamplingTensors.of(SamplingConfig(temperature=0), "cpu")
    assert pick_codes(logits[:3], edges, greedy).tolist() == [3, 3, 3]


def test_filter_logits_with_tensor_settings_matches_numbers():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    for top_k, top_p in [(0, 1.0), (7, 1.0), (0, 0.6), (12, 0.8)]:
        by_number = filter_logits(logits, top_k, top_p)
        by_tensor = filter_logits(logits, torch.tensor(top_k), torch.tensor(top_p))
        assert torch.equal(by_number, by_tensor)
        kept = torch.isfinite(by_number).sum(dim=-1)
        assert (kept >= 1).all() and (kept <= (top_k or 50)).all()


@pytest.mark.parametrize("length", [1, 100, 128, 300, 16384])
def test_cumulative_sum_is_cumsum(length):
    probs = torch.rand(3, length, generator=torch.Generator().manual_seed(length)).softmax(dim=-1)
    cdf = cumulative_sum(probs)
    assert cdf.shape == probs.shape
    torch.testing.assert_close(cdf, probs.cumsum(dim=-1), rtol=1e-5, atol=1e-6)
    assert (cdf.diff(dim=-1) >= 0).all()  # a cdf never falls
