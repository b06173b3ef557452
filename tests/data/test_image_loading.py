"""One way to read a picture: a transparent PNG and a phone photo taken sideways give the same
codes through `prepare`, `vq encode`, `complete` and `train-vq`'s loader."""

import numpy as np
import pytest
import torch
from PIL import Image

from gptdraw.cli import main
from gptdraw.data.decode import decode_image, image_files, load_images
from gptdraw.data.prepare import prepare
from gptdraw.data.prepare_config import PrepareConfig
from gptdraw.data.shards import ShardDataset
from gptdraw.data.sources import FolderSource
from gptdraw.editing import image_to_codes
from gptdraw.images import pil_to_tensor, uint8_to_tensor
from gptdraw.pipeline import GPTDrawPipeline

EXIF_ORIENTATION = 0x0112


@pytest.fixture
def pictures(tmp_path):
    """A transparent PNG and an EXIF-rotated JPEG, each with a caption."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    rgba = np.zeros((40, 56, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red where opaque; the colour under transparent pixels must not show
    rgba[8:32, 8:36, 3] = 255
    rgba[:, 44:, 3] = 128
    Image.fromarray(rgba, "RGBA").save(folder / "transparent.png")
    stored = np.zeros((48, 64, 3), dtype=np.uint8)
    stored[..., 1] = np.linspace(0, 255, 64, dtype=np.uint8)[None, :]  # a left-to-right ramp
    stored[:12, :, 2] = 255  # a blue band along the stored top edge
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # shown rotated 90° clockwise: the band becomes the right edge
    Image.fromarray(stored).save(folder / "rotated.jpg", exif=exif, quality=95)
    for name in ("transparent", "rotated"):
        (folder / f"{name}.txt").write_text(f"a {name} picture")
    return folder


def test_pictures_are_read_upright_and_on_white(pictures):
    transparent = decode_image(str(pictures / "transparent.png"), 16)
    assert (transparent[0, 0] == 255).all()  # a fully transparent corner is white, not red
    rotated = decode_image(str(pictures / "rotated.jpg"), 16)
    assert rotated[:, -2:, 2].mean() > 200 and rotated[:, :2, 2].mean() < 60  # the band is on the right


def test_every_command_reads_a_picture_the_same_way(pictures, tmp_path, image_tokenizer, caption_tokenizer, layout, gpt):
    size = image_tokenizer.config.image_size
    paths = image_files(pictures)
    assert [path.name for path in paths] == ["rotated.jpg", "transparent.png"]

    # prepare (what training reads)
    prepare(FolderSource(pictures), tmp_path / "data", PrepareConfig(workers=0), image_tokenizer=image_tokenizer,
            caption_tokenizer=caption_tokenizer, progress=False)
    data = ShardDataset(tmp_path / "data")
    _, codes = data.get_batch(np.arange(len(data)))
    prepared = {data.key(i): codes[i].reshape(layout.grid) for i in range(len(data))}
    assert set(prepared) == {"rotated", "transparent"}

    # gptdraw vq encode
    image_tokenizer.save_pretrained(tmp_path / "vq")
    assert main(["vq", "encode", *map(str, paths), "--vq", str(tmp_path / "vq"), "--out", str(tmp_path / "codes.npy")]) == 0
    encoded = np.load(tmp_path / "codes.npy")

    # complete / vary (an image prompt opened by the user)
    pipe = GPTDrawPipeline(gpt, caption_tokenizer, image_tokenizer, layout)

    # train-vq --images
    pixels, kept, skipped = load_images(paths, size)
    assert kept == paths and not skipped
    with torch.no_grad():
        loader_codes = image_tokenizer.encode(uint8_to_tensor(pixels))

    for index, path in enumerate(paths):
        expected = prepared[path.stem]
        with Image.open(path) as image:
            prompt = image_to_codes(pipe, image)[0]
        assert torch.equal(prompt, expected), f"complete reads {path.name} differently from prepare"
        assert torch.equal(torch.from_numpy(encoded[index]), expected), f"vq encode reads {path.name} differently"
        assert torch.equal(loader_codes[index], expected), f"train-vq reads {path.name} differently"
        with Image.open(path) as image:
            assert torch.equal(pil_to_tensor([image], size=size)[0], uint8_to_tensor(pixels[index : index + 1])[0])
