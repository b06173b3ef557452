"""Every source format round-trips through prepare: the shards hold the codes of a direct
encoding of the same images, and the same captions, in source order."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from gptdraw.data import shapes
from gptdraw.data.prepare import prepare
from gptdraw.data.prepare_config import PrepareConfig
from gptdraw.data.shards import ShardDataset
from gptdraw.data.sources import SourceItem, detect_format, open_source
from gptdraw.images import pil_to_tensor

SIZE = 32


@pytest.fixture(scope="module")
def tokenizers(shapes_tokenizers):
    return shapes_tokenizers


def examples(count: int, seed: int = 1) -> list[tuple[Image.Image, str]]:
    return list(shapes.generate_examples(count, SIZE, seed=seed, heldout=None))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def prepare_and_check(source, tmp_path, tokenizers, images, captions, skipped=None):
    """Prepare `source`; the dataset must hold exactly `images` (encoded directly) and `captions`."""
    image_tokenizer, caption_tokenizer = tokenizers
    result = prepare(source, tmp_path / "dataset", PrepareConfig(shard_size=3, batch_size=2, workers=0),
                     image_tokenizer=image_tokenizer, caption_tokenizer=caption_tokenizer, progress=False)
    dataset = ShardDataset(tmp_path / "dataset")
    assert result.examples == len(dataset) == len(images)
    assert result.skipped == (skipped or {})
    assert dataset.manifest["skipped"] == (skipped or {})
    caption_ids, codes = dataset.get_batch(np.arange(len(dataset)))
    expected = image_tokenizer.encode(pil_to_tensor(images))  # (B, h, w)
    assert len(expected.unique()) > 1  # the check below could not tell images apart otherwise
    assert torch.equal(codes.view(len(dataset), *dataset.grid), expected)
    assert [dataset.caption(i) for i in range(len(dataset))] == captions
    assert np.array_equal(caption_ids.numpy(), caption_tokenizer.encode_batch(captions).ids)
    return dataset


def test_shapes_source_is_the_training_split(tmp_path, tokenizers):
    source = open_source("shapes", count=7, image_size=SIZE, seed=3)
    # Both held-out sets are left out: the one settings are tuned on and the one figures are reported on.
    heldout = shapes.heldout_union(shapes.evaluation_sets())
    expected = list(shapes.generate_examples(7, SIZE, seed=3, heldout=heldout, split="train"))
    assert len(source) == 7 and detect_format("shapes") == "shapes"
    assert not any(shapes.is_heldout(caption, heldout) for _, caption in expected)
    # Reading from the middle gives the same items as reading from the start.
    assert [item.caption for item in source.read(4, 7)] == [caption for _, caption in expected[4:]]
    prepare_and_check(source, tmp_path, tokenizers, [image for image, _ in expected],
                      [caption for _, caption in expected])


def test_shapes_source_leaves_out_both_heldout_sets_and_mixes_as_asked():
    tuning, report = shapes.evaluation_sets()
    source = open_source("shapes", count=600, image_size=SIZE, seed=5, two_object_prob=0.9)
    captions = [item.caption for item in source.read(0, 600)]
    assert not any(shapes.is_heldout(c, tuning) or shapes.is_heldout(c, report) for c in captions)
    two = sum(len(shapes.parse_caption(c)) == 2 for c in captions) / len(captions)
    assert 0.85 < two < 0.95  # 0.9 asked; the default mix is half and half
    with pytest.raises(ValueError, match="two_object_prob"):
        open_source("shapes", count=6, image_size=SIZE, two_object_prob=1.5)


def test_folder_with_txt_captions(tmp_path, tokenizers):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    pairs = examples(5)
    names = ["a.png", "b.png", "sub/c.png", "sub/d.png", "z.png"]
    for name, (image, caption) in zip(names, pairs):
        image.save(root / name)
        if name != "z.png":  # the last image has no caption beside it
            (root / name).with_suffix(".txt").write_text(f"  {caption}\n")
    (root / "notes.md").write_text("not an image")
    source = open_source(str(root))
    assert detect_format(str(root)) == "folder" and len(source) == 5
    assert [item.key for item in source] == ["a", "b", "sub/c", "sub/d", "z"]
    prepare_and_check(source, tmp_path, tokenizers, [image for image, _ in pairs[:4]],
                      [caption for _, caption in pairs[:4]], skipped={"missing_caption": 1})


def test_csv_manifest_with_header_and_quoted_captions(tmp_path, tokenizers):
    pairs = examples(4)
    (tmp_path / "img").mkdir()
    captions = [caption for _, caption in pairs]
    captions[1] = 'a caption, with a comma and "quotes"'
    captions[2] = "a caption over\ntwo lines"
    with open(tmp_path / "data.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["file_name", "caption"])
        for index, ((image, _), caption) in enumerate(zip(pairs, captions)):
            image.save(tmp_path / "img" / f"{index}.png")
            writer.writerow([f"img/{index}.png", caption])
    source = open_source(str(tmp_path / "data.csv"))
    assert len(source) == 4
    assert [item.caption for item in source] == captions
    cleaned = [" ".join(caption.split()) for caption in captions]
    prepare_and_check(source, tmp_path, tokenizers, [image for image, _ in pairs], cleaned)


def test_headerless_tsv_of_urls_with_a_url_map(tmp_path, tokenizers):
    """Conceptual Captions' layout: caption<TAB>url, no header; downloaded files named by a url map."""
    pairs = examples(4)
    lines, mapping = [], []
    for index, (image, caption) in enumerate(pairs):
        url = f"https://example.com/photos/{index}.jpg?size=large"
        lines.append(f"{caption}\t{url}\n")
        if index != 2:  # one URL was never downloaded
            image.save(tmp_path / f"download-{index}.png")
            mapping.append(f"{url}\tdownload-{index}.png\n")
    (tmp_path / "cc.tsv").write_text("".join(lines))
    (tmp_path / "map.tsv").write_text("".join(mapping))
    source = open_source(str(tmp_path / "cc.tsv"), url_map=str(tmp_path / "map.tsv"))
    assert [item.skip_reason for item in source] == [None, None, "not_downloaded", None]
    kept = [pairs[i] for i in (0, 1, 3)]
    prepare_and_check(source, tmp_path, tokenizers, [image for image, _ in kept],
                      [caption for _, caption in kept], skipped={"not_downloaded": 1})
    # Without a map every URL is reported, not fetched.
    assert {item.skip_reason for item in open_source(str(tmp_path / "cc.tsv"))} == {"not_downloaded"}


def test_jsonl_manifest(tmp_path, tokenizers):
    pairs = examples(4)
    lines = []
    for index, (image, caption) in enumerate(pairs):
        image.save(tmp_path / f"{index}.png")
        lines.append(json.dumps({"image": f"{index}.png", "text": caption}))
    lines.insert(2, '{"image": "broken.png", "text": ')  # a cut line
    lines.insert(3, "")  # blank lines are not items
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    source = open_source(str(tmp_path / "data.jsonl"))
    assert len(source) == 5 and [item.skip_reason for item in source][2] == "broken_line"
    prepare_and_check(source, tmp_path, tokenizers, [image for image, _ in pairs],
                      [caption for _, caption in pairs], skipped={"broken_line": 1})


def test_parquet_with_image_structs(tmp_path, tokenizers):
    """A Hugging Face style parquet export: image {bytes, path} structs and a text column."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pairs = examples(5)
    table = pa.table({
        "image": [{"bytes": png_bytes(image), "path": None} for image, _ in pairs],
        "text": [caption for _, caption in pairs],
    })
    (tmp_path / "parquet").mkdir()
    pq.write_table(table.slice(0, 3), tmp_path / "parquet" / "part-0.parquet", row_group_size=2)
    pq.write_table(table.slice(3), tmp_path / "parquet" / "part-1.parquet")
    source = open_source(str(tmp_path / "parquet"))
    assert detect_format(str(tmp_path / "parquet")) == "parquet" and len(source) == 5
    assert [item.caption for item in source.read(1, 4)] == [caption for _, caption in pairs[1:4]]
    assert list(source.captions()) == [caption for _, caption in pairs]
    prepare_and_check(source, tmp_path, tokenizers, [image for image, _ in pairs],
                      [caption for _, caption in pairs])


def test_huggingface_dataset_saved_to_disk(tmp_path, tokenizers):
    datasets = pytest.importorskip("datasets")
    pairs = examples(4)
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                                  "other": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict(
        {"image": [image for image, _ in pairs], "caption": [caption for _, caption in pairs],
         "other": ["x"] * 4}, features=features)
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "hf"))
    source = open_source(str(tmp_path / "hf"))
    assert detect_format(str(tmp_path / "hf")) == "huggingface"
    assert (source.image_column, source.text_column) == ("image", "caption")
    assert all(isinstance(item.image, bytes) for item in source)  # undecoded: size checks come first
    prepare_and_check(source, tmp_path, tokenizers, [image for image, _ in pairs],
                      [caption for _, caption in pairs])


def test_open_source_reports_bad_specs(tmp_path):
    with pytest.raises(FileNotFoundError, match="source not found"):
        open_source(str(tmp_path / "nothing-here"))
    with pytest.raises(ValueError, match="count"):
        open_source("shapes", image_size=SIZE)
    with pytest.raises(ValueError, match="do not apply"):
        open_source("shapes", count=3, image_size=SIZE, url_map="x")
    (tmp_path / "a.csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(ValueError, match="image_column"):
        open_source(str(tmp_path / "a.csv"))
    assert SourceItem("k", "c", None).skip_reason is None
