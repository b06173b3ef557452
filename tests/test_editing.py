import json

import pytest
import torch

from gptdraw import cli
from gptdraw.editing import (
    ClipScorer,
    best_of,
    complete,
    guidance_scores,
    image_to_codes,
    kept_codes,
    load_clip_scorer,
    stream_completion,
    variations,
)
from gptdraw.gpt.config import ModelConfig
from gptdraw.gpt.model import attention_mask, build_model
from gptdraw.pipeline import GPTDrawPipeline
from gptdraw.gpt.sampling import SamplingConfig


@pytest.fixture
def pipe(gpt, caption_tokenizer, image_tokenizer, layout):
    return GPTDrawPipeline(gpt, caption_tokenizer, image_tokenizer, layout, SamplingConfig(top_k=20, cfg_scale=2.0))


@pytest.fixture
def picture(pipe):
    # An image the tokenizer made itself, from random codes.
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, pipe.layout.codebook_size, (1, *pipe.layout.grid), generator=generator)
    return pipe.decode_partial(codes.reshape(1, -1))[0]


def test_completion_keeps_the_given_rows(pipe, picture, layout):
    h, w = layout.grid
    kept = kept_codes(pipe, picture, keep_rows=2)
    assert torch.equal(kept, image_to_codes(pipe, picture)[:, :2].reshape(1, -1))
    steps = stream_completion(pipe, "a red circle", picture, keep_rows=2, num_images=3, seed=1, every=layout.image_len)
    final = list(steps)[-1]
    assert final.codes.shape == (3, h * w)
    assert torch.equal(final.codes[:, : 2 * w], kept.expand(3, -1))
    assert not torch.equal(final.codes[0, 2 * w :], final.codes[1, 2 * w :])  # three draws below the kept rows
    images = complete(pipe, "a red circle", picture, keep_rows=2, num_images=3, seed=1)
    assert [image.tobytes() for image in images] == [image.tobytes() for image in final.images]


def test_completion_refuses_bad_rows_and_images(pipe, picture, layout):
    with pytest.raises(ValueError, match="keep_rows must be between 1 and 3"):
        complete(pipe, "a red circle", picture, keep_rows=layout.grid[0])
    with pytest.raises(ValueError, match="keep_rows"):
        complete(pipe, "a red circle", picture, keep_rows=0)
    with pytest.raises(ValueError, match="PIL image or a tensor"):
        complete(pipe, "a red circle", "picture.png", keep_rows=1)
    with pytest.raises(ValueError, match=r"\(1, 3, 16, 16\)"):
        complete(pipe, "a red circle", torch.rand(1, 3, 32, 32), keep_rows=1)


def test_variations_keep_the_top_quarter(pipe, picture, layout):
    _, w = layout.grid  # 4 rows: the top quarter is one row
    first_row = image_to_codes(pipe, picture)[:, 0].reshape(1, w)
    # Without a caption: drawn after the blank caption. With one: a completion of the top quarter.
    for prompt in (None, "a blue square"):
        images = variations(pipe, picture, prompt=prompt, num_images=3, seed=2)
        assert len(images) == 3 and len({image.tobytes() for image in images}) == 3  # three draws
    blank_steps = list(pipe.stream_ids(
        torch.full((3, layout.text_len), layout.pad_id), seed=2, every=layout.image_len,
        prefix_codes=first_row.expand(3, -1), cfg_scale=1.0,
    ))
    assert torch.equal(blank_steps[-1].codes[:, :w], first_row.expand(3, -1))
    unguided = variations(pipe, picture, num_images=3, seed=2)
    assert [i.tobytes() for i in unguided] == [i.tobytes() for i in blank_steps[-1].images]


@pytest.mark.parametrize("attention", ["causal", "prefix", "masked pads"])
def test_guidance_scores_match_a_plain_computation(pipe, gpt, layout, attention):
    kinds = {"prefix": {"caption_attention": "prefix"}, "masked pads": {"mask_pads": True}}
    if attention != "causal":
        gpt = build_model(ModelConfig(n_layer=2, n_head=2, n_embd=32, **kinds[attention]), layout).eval()
    ids, _ = pipe.encode_prompts(["a red circle", "a purple square in the bottom right"])
    codes = torch.randint(0, layout.codebook_size, (2, layout.image_len), generator=torch.Generator().manual_seed(3))
    scores = guidance_scores(gpt, layout, ids, codes)

    def log_likelihood(caption, image_codes):
        # One row at a time, the plain forward, logits of the codebook only.
        with torch.no_grad():
            sequence = layout.pack(caption, image_codes)
            mask = attention_mask(gpt, layout, sequence[:, : layout.text_len], sequence.shape[1])
            logits = gpt(input_ids=sequence, attention_mask=mask).logits[0, layout.text_len - 1 : -1]  # (h*w, V)
        image = logits[:, layout.image_offset : layout.image_offset + layout.codebook_size]
        return image.log_softmax(dim=-1).gather(-1, image_codes[0, :, None]).sum().item()

    blank = torch.full((1, layout.text_len), layout.pad_id)
    expected = [
        log_likelihood(ids[r : r + 1], codes[r : r + 1]) - log_likelihood(blank, codes[r : r + 1]) for r in range(2)
    ]
    assert torch.allclose(scores, torch.tensor(expected), atol=1e-3)
    assert scores[0] != scores[1]


def test_best_of_orders_candidates_by_the_guidance_score(pipe, layout):
    ranking = best_of(pipe, "a red circle", num_candidates=5, keep=3, seed=4)
    assert ranking.ranked_by == "guidance" and ranking.clip is None and "no CLIP" in ranking.message
    assert ranking.guidance.shape == (5,)
    # Kept: the three highest scores, best first.
    assert ranking.guidance[ranking.indices].tolist() == sorted(ranking.guidance.tolist(), reverse=True)[:3]
    # The scores are those of the drawn candidates, and the kept images are those candidates.
    ids, _ = pipe.encode_prompts(["a red circle"])
    assert torch.allclose(ranking.guidance, guidance_scores(pipe.transformer, layout, ids.expand(5, -1), ranking.codes))
    final = list(pipe.stream_ids(ids.expand(5, -1), seed=4, every=layout.image_len))[-1]
    assert [i.tobytes() for i in ranking.images] == [final.images[i].tobytes() for i in ranking.indices]
    with pytest.raises(ValueError, match="keep must be between 1 and num_candidates"):
        best_of(pipe, "a red circle", num_candidates=2, keep=3)


def tiny_clip(directory):
    """A random-weight CLIP with a letters-only tokenizer, saved as a local model directory."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=1, **small
        ),
        vision_config=dict(image_size=32, patch_size=8, **small),
        projection_dim=8,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(directory / "clip")
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = CLIPProcessor(images, tokenizer)
    processor.save_pretrained(directory / "clip")
    return directory / "clip"


def test_best_of_ranks_by_clip_when_one_is_given(pipe, tmp_path):
    clip_dir = tiny_clip(tmp_path)
    ranking = best_of(pipe, "a red circle", num_candidates=4, keep=2, seed=5, clip=clip_dir)
    assert ranking.ranked_by == "clip" and ranking.message == ""
    assert ranking.clip.shape == (4,)
    kept = ranking.clip[ranking.indices]
    assert kept.tolist() == sorted(ranking.clip.tolist(), reverse=True)[:2]
    scorer = ClipScorer.from_pretrained(clip_dir)
    ids, _ = pipe.encode_prompts(["a red circle"])
    final_images = list(pipe.stream_ids(ids.expand(4, -1), seed=5, every=16))[-1].images
    assert torch.allclose(scorer.score(final_images, "a red circle"), ranking.clip)


def test_missing_clip_is_skipped_with_a_message(pipe, tmp_path):
    scorer, message = load_clip_scorer(tmp_path / "no-clip")
    assert scorer is None and "CLIP ranking skipped" in message and "does not exist" in message
    (tmp_path / "not-clip").mkdir()
    ranking = best_of(pipe, "a red circle", num_candidates=2, keep=1, seed=0, clip=tmp_path / "not-clip")
    assert ranking.ranked_by == "guidance" and "not a loadable CLIP" in ranking.message


@pytest.fixture
def command():
    return cli.main


def test_edit_commands(command, pipe, picture, tmp_path, capsys):
    pipe.save_pretrained(tmp_path / "model")
    picture.save(tmp_path / "in.png")
    common = ["--model", str(tmp_path / "model"), "--device", "cpu", "--out", str(tmp_path / "out")]
    image = ["--image", str(tmp_path / "in.png")]
    assert command(["complete", "a red circle", *image, "--keep-rows", "2", "--num-images", "2", *common]) == 0
    assert command(["vary", *image, "--num-images", "2", *common]) == 0
    assert command(["best-of", "a red circle", "--candidates", "3", "--keep", "2", *common]) == 0
    written = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert written == [
        "best-0.png", "best-1.png", "complete-0.png", "complete-1.png", "variation-0.png", "variation-1.png"
    ]
    record = json.loads((tmp_path / "out" / "best-0.json").read_text())
    assert record["ranked_by"] == "guidance" and isinstance(record["guidance_score"], float)
    capsys.readouterr()
    assert command(["complete", "a red circle", *image, "--keep-rows", "9", *common]) == 2
    assert "keep_rows must be between 1 and 3" in capsys.readouterr().err
    assert command(["vary", "--image", str(tmp_path / "missing.png"), *common]) == 2
    assert "missing.png does not exist" in capsys.readouterr().err
