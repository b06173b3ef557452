import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from gptdraw import GPTDrawPipeline
from gptdraw.pipeline import finished_drawing
from gptdraw.gpt.sampling import CodeDrawer, DrawerConfig, SamplingConfig
from gptdraw.vq.model import ImageTokenizer


@pytest.fixture
def pipe(gpt, caption_tokenizer, image_tokenizer, layout):
    return GPTDrawPipeline(gpt, caption_tokenizer, image_tokenizer, layout, SamplingConfig(top_k=20, cfg_scale=2.0))


def test_save_load_draws_identical_images(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "model")
    # float32 throughout, as `pipe` was made (auto may decode in bf16 on this CPU: see below).
    loaded = GPTDrawPipeline.from_pretrained(tmp_path / "model", device="cpu", precision="fp32")
    assert loaded.default_settings == pipe.default_settings
    a = pipe(["a red circle", "a blue square at the top"], num_images_per_prompt=2, seed=5)
    b = loaded(["a red circle", "a blue square at the top"], num_images_per_prompt=2, seed=5)
    assert len(a) == 4
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def test_missing_or_incomplete_model_directory(pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GPTDrawPipeline.from_pretrained(tmp_path / "nothing")
    pipe.save_pretrained(tmp_path / "model")
    shutil.rmtree(tmp_path / "model" / "image_tokenizer")
    with pytest.raises(FileNotFoundError, match="lacks image_tokenizer"):
        GPTDrawPipeline.from_pretrained(tmp_path / "model")


def test_mismatched_image_tokenizer_is_refused(gpt, caption_tokenizer, layout):
    from conftest import tiny_vq_config

    other = ImageTokenizer(replace(tiny_vq_config(), num_vq_embeddings=128))
    with pytest.raises(ValueError, match="128 codes"):
        GPTDrawPipeline(gpt, caption_tokenizer, other, layout)


def test_bad_prompts(pipe, caplog):
    with pytest.raises(ValueError, match="empty"):
        pipe(["  "])
    with pytest.raises(ValueError, match="must be text"):
        pipe([42])
    with caplog.at_level("WARNING"):
        _, warnings = pipe.encode_prompts(["a large blue square on the right and a green circle in the center " * 3])
    assert warnings and "truncated" in warnings[0]
    assert "truncated" in caplog.text


def test_stream_fills_in(pipe, layout):
    steps = list(pipe.stream("a red circle", seed=0, every=4))
    assert steps[-1].codes_drawn == layout.image_len
    assert [s.codes_drawn for s in steps[:-1]] == list(range(4, layout.image_len, 4))
    first = np.asarray(steps[0].images[0]).astype(int)
    # Undrawn positions are grey in a partial image.
    assert (np.abs(first[-4:, -4:] - 128) <= 1).all()


def test_stream_ids_matches_stream(pipe, layout):
    # Captions already encoded draw what the prompts draw, with the same seed.
    ids, _ = pipe.encode_prompts(["a red circle"])
    by_prompt = list(pipe.stream("a red circle", num_images_per_prompt=2, seed=3, every=layout.image_len))[-1]
    by_ids = list(pipe.stream_ids(ids.expand(2, -1), seed=3, every=layout.image_len))[-1]
    assert torch.equal(by_prompt.codes, by_ids.codes)
    assert not torch.equal(by_ids.codes[0], by_ids.codes[1])  # two draws, not one copied


def test_bfloat16_and_compiled_pipelines_load_and_draw(pipe, tmp_path, layout):
    pipe.save_pretrained(tmp_path / "model")
    bf16 = GPTDrawPipeline.from_pretrained(tmp_path / "model", device="cpu", precision="bf16")
    assert next(bf16.transformer.parameters()).dtype == torch.bfloat16
    assert bf16.image_tokenizer.codebook.dtype == torch.bfloat16
    images = bf16("a red circle", num_images_per_prompt=2, seed=0)
    assert len(images) == 2 and images[0].size == (16, 16)
    compiled = GPTDrawPipeline.from_pretrained(tmp_path / "model", device="cpu", precision="fp32", compile=True)
    assert compiled.drawer.options.compile
    # The same compiled step traced by aot_eager (no code generation: seconds, not a minute)
    # must draw what the uncompiled pipeline draws.
    compiled.drawer = CodeDrawer(compiled.transformer, compiled.layout, DrawerConfig(compile=True, backend="aot_eager"))
    plain = GPTDrawPipeline.from_pretrained(tmp_path / "model", device="cpu", precision="fp32")
    drawn = compiled(["a red circle", "a blue square"], num_images_per_prompt=2, seed=4)
    expected = plain(["a red circle", "a blue square"], num_images_per_prompt=2, seed=4)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(drawn, expected))
    with pytest.raises(ValueError, match="unknown precision 'float8'"):
        GPTDrawPipeline.from_pretrained(tmp_path / "model", device="cpu", precision="float8")


def test_the_old_dtype_argument_still_loads_with_a_warning(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "model")
    with pytest.warns(DeprecationWarning, match="precision"):
        old = GPTDrawPipeline.from_pretrained(tmp_path / "model", device="cpu", dtype="bfloat16")
    assert next(old.transformer.parameters()).dtype == torch.bfloat16


def test_old_attribute_names_are_deprecated_aliases(pipe):
    with pytest.warns(DeprecationWarning, match="transformer"):
        assert pipe.gpt is pipe.transformer
    with pytest.warns(DeprecationWarning, match="text_tokenizer"):
        assert pipe.caption_tokenizer is pipe.text_tokenizer


def test_without_a_seed_each_drawing_is_new(pipe):
    first, second = pipe("a red circle"), pipe("a red circle")
    assert first[0].tobytes() != second[0].tobytes()


def test_bf16_decode_on_cpus_that_have_it(pipe, tmp_path):
    from gptdraw.runtime import native_bf16

    pipe.save_pretrained(tmp_path / "model")
    auto = GPTDrawPipeline.from_pretrained(tmp_path / "model", device="cpu")
    assert auto.decode_in_bf16 == native_bf16(torch.device("cpu"))
    assert next(auto.transformer.parameters()).dtype == torch.float32  # only the pixels, never the codes
    fp32 = GPTDrawPipeline.from_pretrained(tmp_path / "model", device="cpu", precision="fp32")
    assert not fp32.decode_in_bf16
    fp32.decode_in_bf16 = True  # bf16 autocast runs (emulated) on any CPU
    codes = torch.randint(0, pipe.layout.codebook_size, (3, pipe.layout.image_len))
    exact = [np.asarray(image, dtype=float) for image in pipe.decode_partial(codes)]
    rounded = [np.asarray(image, dtype=float) for image in fp32.decode_partial(codes)]
    differences = np.abs(np.stack(exact) - np.stack(rounded))
    assert differences.mean() < 2.0 and differences.max() <= 16  # 0–255 pixel levels


# ----------------------------------------------------------------- bounded work (issue 23)
def drawn_codes(pipe, prompts, n, seed, **options):
    return finished_drawing(pipe.stream(prompts, n, seed=seed, every=pipe.layout.image_len, **options))


def test_the_same_seed_draws_the_same_images_in_one_batch_or_several(pipe):
    prompts = ["a red circle", "a blue square at the top", "a green triangle"]
    whole = drawn_codes(pipe, prompts, 3, seed=6, max_batch=9)
    for max_batch in (1, 2, 4):
        split = drawn_codes(pipe, prompts, 3, seed=6, max_batch=max_batch)
        assert torch.equal(split.codes, whole.codes), max_batch
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(split.images, whole.images))
    assert len(whole.images) == 9 and len({image.tobytes() for image in whole.images}) > 1
    # __call__ batches the same way, and an image prompt (prefix codes) is split with its rows.
    assert [a.tobytes() for a in pipe(prompts, 3, seed=6, max_batch=2)] == [a.tobytes() for a in whole.images]
    prefix = whole.codes[:, :5]
    kept = [pipe(prompts, 3, seed=1, prefix_codes=prefix, max_batch=size) for size in (9, 4)]
    assert [a.tobytes() for a in kept[0]] == [a.tobytes() for a in kept[1]]


def test_a_drawing_of_several_batches_streams_each_in_turn(pipe, layout, capsys):
    steps = list(pipe.stream(["a red circle", "a blue square"], 3, seed=0, every=8, max_batch=4))
    assert [(step.first, len(step.images)) for step in steps if step.codes_drawn == layout.image_len] == [(0, 4), (4, 2)]
    assert [step.codes_drawn for step in steps if step.first == 4] == list(range(8, layout.image_len + 1, 8))
    assert "6/6" in capsys.readouterr().err  # a progress bar over the images, as there are two batches
    pipe("a red circle", 2, seed=0)
    assert "img" not in capsys.readouterr().err  # none for one batch


def test_absurd_totals_are_refused_before_any_work(pipe, monkeypatch):
    def no_drawing(*args, **kwargs):
        raise AssertionError("drew before refusing")

    monkeypatch.setattr(pipe.drawer, "iter_codes", no_drawing)
    monkeypatch.setattr(pipe, "encode_prompts", no_drawing)
    with pytest.raises(ValueError, match="more than max_images 5; raise max_images"):
        pipe(["a red circle"] * 3, num_images_per_prompt=2, max_images=5)
    with pytest.raises(ValueError, match="10,001 images .* more than max_images 10,000"):
        pipe("a red circle", num_images_per_prompt=10_001)
    with pytest.raises(ValueError, match="max_images"):
        pipe.stream_ids(torch.zeros(11, pipe.layout.text_len, dtype=torch.long), max_images=10)
    for bad in ({"max_batch": 0}, {"every": 0}, {"seed": 2**64}, {"seed": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):  # at the call, not at the first step
            pipe.stream_ids(torch.zeros(2, pipe.layout.text_len, dtype=torch.long), **bad)
    monkeypatch.undo()
    assert len(pipe("a red circle", num_images_per_prompt=3, max_images=3, seed=0)) == 3


def test_codes_are_decoded_a_few_images_at_a_time(pipe, monkeypatch):
    import gptdraw.pipeline

    codes = torch.randint(0, pipe.layout.codebook_size, (5, pipe.layout.image_len), generator=torch.Generator().manual_seed(0))
    alone = [pipe.decode_partial(row[None])[0] for row in codes]
    sizes = []
    decode = pipe.image_tokenizer.decode
    monkeypatch.setattr(pipe.image_tokenizer, "decode", lambda grid: sizes.append(len(grid)) or decode(grid))
    monkeypatch.setattr(gptdraw.pipeline, "DECODE_BATCH", 2)
    # Finished images one by one: each image's pixels are what it gives alone.
    assert [image.tobytes() for image in pipe.decode_partial(codes)] == [image.tobytes() for image in alone]
    assert sizes == [1] * 5
    sizes.clear()
    assert len(pipe.decode_partial(codes[:, :7])) == 5  # previews a few at a time
    assert sizes == [2, 2, 1]
