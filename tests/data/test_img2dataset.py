"""The real img2dataset downloads a TSV of URLs from a local HTTP server; prepare reads its output.

The server (127.0.0.1 only) serves four good images, one corrupt file and nothing for a
fifth URL (404). img2dataset keeps the failures in its metadata; prepare must report
exactly 4 examples and the two failures by img2dataset's status, in every output format.
"""

from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest
import torch

from gptdraw.data import shapes
from gptdraw.data.decode import decode_image
from gptdraw.data.prepare import prepare
from gptdraw.data.prepare_config import PrepareConfig
from gptdraw.data.shards import ShardDataset
from gptdraw.data.sources import detect_format, open_source
from gptdraw.images import uint8_to_tensor

SIZE = 32


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(TSV path, {caption: image bytes}) for images served on 127.0.0.1."""
    root = tmp_path_factory.mktemp("http")
    captions = {}
    for index, (image, caption) in enumerate(shapes.generate_examples(4, 48, seed=4, heldout=None)):
        caption = f"{caption} number {index}"  # distinct even when two scenes are alike
        image.save(root / f"image{index}.png")
        captions[caption] = f"image{index}.png"
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    captions["a corrupt file"] = "corrupt.jpg"
    captions["a missing file"] = "missing.png"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    lines = ["caption\turl"] + [f"{caption}\thttp://127.0.0.1:{port}/{name}" for caption, name in captions.items()]
    (root / "urls.tsv").write_text("\n".join(lines) + "\n")
    yield root / "urls.tsv", captions
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def tokenizers(shapes_tokenizers):
    return shapes_tokenizers


@pytest.mark.parametrize("output_format, detected", [
    ("webdataset", "webdataset"), ("parquet", "parquet"), ("files", "files")])
def test_prepare_reads_img2dataset_output(served, tokenizers, tmp_path, monkeypatch, output_format, detected):
    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")  # no update check over the network
    img2dataset = pytest.importorskip("img2dataset")
    urls, captions = served
    out = tmp_path / "download"
    img2dataset.download(
        url_list=str(urls), input_format="tsv", url_col="url", caption_col="caption",
        output_format=output_format, output_folder=str(out), image_size=SIZE, resize_mode="center_crop",
        processes_count=1, thread_count=2, timeout=60, retries=0, number_sample_per_shard=100,
        enable_wandb=False, disallowed_header_directives=[],
    )
    assert detect_format(str(out)) == detected
    source = open_source(str(out))
    assert len(source) == 6

    image_tokenizer, caption_tokenizer = tokenizers
    result = prepare(source, tmp_path / "dataset", PrepareConfig(shard_size=4, batch_size=2, workers=0),
                     image_tokenizer=image_tokenizer, caption_tokenizer=caption_tokenizer, progress=False)
    assert result.examples == 4
    assert result.skipped == {"failed_to_download": 1, "failed_to_resize": 1}
    dataset = ShardDataset(tmp_path / "dataset")
    assert dataset.manifest["skipped"] == result.skipped and len(dataset) == 4
    kept = [dataset.caption(index) for index in range(4)]
    assert sorted(kept) == sorted(caption for caption in captions if caption.endswith(("0", "1", "2", "3")))

    # The codes are those of the images img2dataset stored, decoded and encoded directly.
    items = {item.caption: item for item in source if item.skip_reason is None}
    pixels = np.stack([decode_image(items[caption].image, SIZE) for caption in kept])
    _, codes = dataset.get_batch(range(4))
    assert torch.equal(codes.view(4, *dataset.grid), image_tokenizer.encode(uint8_to_tensor(pixels)))
    # …and those images are the served ones (lossy JPEG, so close rather than equal).
    served_pixels = np.stack([decode_image(str(urls.parent / captions[caption]), SIZE) for caption in kept])
    assert np.abs(pixels.astype(int) - served_pixels.astype(int)).mean() < 8
