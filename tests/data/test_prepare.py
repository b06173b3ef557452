"""gptdraw prepare: bad input is counted by reason, interrupted runs resume to identical bytes,
shards are checked, work splits across ranks; plus the decoding rules and the CLI."""

from __future__ import annotations

import io
import json
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gptdraw.cli
from conftest import HANG_SECONDS, png_bytes
from gptdraw.data import shapes
from gptdraw.data.decode import BadInput, clean_caption, decode_image
from gptdraw.data.prepare import EvalSplit, prepare
from gptdraw.data.prepare_config import PrepareConfig
from gptdraw.data.shards import ChecksumError, ShardDataset
from gptdraw.data.sources import open_source
from gptdraw.images import uint8_to_tensor
from gptdraw.captions import CaptionTokenizer
from gptdraw.vq.model import ImageTokenizer, vq_preset

SIZE = 32


def tiny_vq_config(**overrides):
    settings = dict(
        image_size=SIZE, block_out_channels=(16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=8, vq_embed_dim=8, num_vq_embeddings=64,
        norm_num_groups=8,
    )
    return vq_preset("shapes-f8", **{**settings, **overrides})


@pytest.fixture(scope="module")
def saved_tokenizers(tmp_path_factory):
    """A tiny random-weight VQGAN and a small BPE, saved (subprocesses and the CLI load them)."""
    root = tmp_path_factory.mktemp("tokenizers")
    torch.manual_seed(0)
    ImageTokenizer(tiny_vq_config()).save_pretrained(root / "vq")
    captions = [caption for _, caption in shapes.generate_examples(200, SIZE, seed=5, heldout=None)]
    CaptionTokenizer.train(captions, vocab_size=300, text_len=16).save_pretrained(root / "text")
    return root / "vq", root / "text"


@pytest.fixture(scope="module")
def tokenizers(saved_tokenizers):
    vq_dir, text_dir = saved_tokenizers
    return ImageTokenizer.from_pretrained(vq_dir), CaptionTokenizer.from_pretrained(text_dir)


def tree_bytes(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


def run_shapes(out, tokenizers, count=14, shard_size=4, workers=0, **runtime):
    """14 shapes in shards of 4, 3 of them held out; `runtime`: prepare's keyword arguments."""
    image_tokenizer, caption_tokenizer = tokenizers
    source = open_source("shapes", count=count, image_size=SIZE, seed=2)
    config = PrepareConfig(shard_size=shard_size, batch_size=3, workers=workers, eval_count=3)
    return prepare(source, out, config, image_tokenizer=image_tokenizer, caption_tokenizer=caption_tokenizer,
                   progress=False, **runtime)


# ---------------------------------------------------------------------------------------------
# Decoding rules
# ---------------------------------------------------------------------------------------------


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width × height pixels but carries almost no data: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decode_converts_modes_and_orientation():
    assert decode_image(encoded(Image.new("L", (40, 40), 100), "PNG"), SIZE)[0, 0].tolist() == [100] * 3
    gray16 = Image.fromarray(np.full((40, 40), 30000, dtype=np.uint16))
    assert decode_image(encoded(gray16, "PNG"), SIZE)[0, 0].tolist() == [117] * 3  # 30000 / 257, not clipped to 255
    transparent = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    assert decode_image(encoded(transparent, "PNG"), SIZE)[5, 5].tolist() == [255, 255, 255]  # on white
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([10, 20, 30] * 256)
    assert decode_image(encoded(palette, "PNG"), SIZE)[0, 0].tolist() == [10, 20, 30]
    cyan = decode_image(encoded(Image.new("CMYK", (40, 40), (255, 0, 0, 0)), "JPEG"), SIZE)[9, 9]
    assert cyan[0] < 30 and cyan[1] > 220 and cyan[2] > 220
    # Left half red, right half blue, stored with EXIF orientation 6 (rotate 90° clockwise to view).
    photo = Image.new("RGB", (64, 48), (0, 0, 255))
    photo.paste((255, 0, 0), (0, 0, 32, 48))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = decode_image(encoded(photo, "JPEG", exif=exif, quality=95), 48)
    assert upright[2, 24, 0] > 200 and upright[45, 24, 2] > 200  # red on top, blue at the bottom
    # Resize the shorter side, keep the centre: a wide image loses its sides.
    wide = Image.new("RGB", (96, 32), (0, 255, 0))
    wide.paste((255, 0, 0), (0, 0, 32, 32))
    assert decode_image(wide, SIZE).shape == (SIZE, SIZE, 3)
    assert decode_image(wide, SIZE)[:, 0].tolist() == [[0, 255, 0]] * SIZE


@pytest.mark.parametrize("data, reason", [
    (b"definitely not an image", "undecodable"),
    (encoded(Image.new("RGB", (8, 8)), "PNG"), "too_small"),
    (png_header_only(9000, 9000), "too_large"),
    (png_header_only(100_000, 100_000), "too_large"),
])
def test_decode_rejects_with_a_reason(data, reason):
    with pytest.raises(BadInput) as raised:
        decode_image(data, SIZE)
    assert raised.value.reason == reason


def test_decode_reports_truncated_and_missing_files(tmp_path):
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = encoded(noisy, "JPEG")
    with pytest.raises(BadInput) as raised:
        decode_image(data[: len(data) // 2], SIZE)
    assert raised.value.reason == "truncated"
    with pytest.raises(BadInput) as raised:
        decode_image(str(tmp_path / "gone.png"), SIZE)
    assert raised.value.reason == "missing_file"


def test_clean_caption():
    assert clean_caption(" a\x00red\tcircle\u200b \n\n at the top\x7f ") == "a red circle at the top"
    for text, reason in ((None, "missing_caption"), ("", "empty_caption"), (" \t\n", "empty_caption"),
                         ("\x00\x01", "empty_caption")):
        with pytest.raises(BadInput) as raised:
            clean_caption(text)
        assert raised.value.reason == reason


# ---------------------------------------------------------------------------------------------
# Bad input in bulk
# ---------------------------------------------------------------------------------------------


def test_bad_items_are_counted_by_reason_and_the_run_goes_on(tmp_path, tokenizers):
    image_tokenizer, caption_tokenizer = tokenizers
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    jpeg = encoded(photo, "JPEG")
    files = {
        "good.png": encoded(photo, "PNG"),
        "gray.png": encoded(photo.convert("L"), "PNG"),
        "cmyk.jpg": encoded(photo.convert("CMYK"), "JPEG"),
        "rgba.png": encoded(photo.convert("RGBA"), "PNG"),
        "gray16.png": encoded(Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257), "PNG"),
        "palette.png": encoded(photo.convert("P"), "PNG"),
        "garbage.jpg": b"\xff\xd8\xff not really",
        "cut.jpg": jpeg[: len(jpeg) // 2],
        "tiny.png": encoded(Image.new("RGB", (6, 6)), "PNG"),
        "bomb.png": png_header_only(100_000, 100_000),
        "bomb2.png": png_header_only(9000, 9000),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    records = [{"image": name, "caption": f"picture {name}"} for name in files]
    records[0]["caption"] = "a\x00 red\x07 circle\r\n"  # control characters: cleaned, kept
    records += [
        {"image": "good.png", "caption": ""},
        {"image": "good.png", "caption": " \t "},
        {"image": "good.png", "caption": None},
        {"image": "absent.png", "caption": "a file that is not there"},
    ]
    lines = [json.dumps(record) for record in records]
    lines.insert(4, '{"image": "good.png", "caption": "cut off')
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")

    result = prepare(open_source(str(tmp_path / "data.jsonl")), tmp_path / "out",
                     PrepareConfig(shard_size=4, batch_size=2, workers=0), image_tokenizer=image_tokenizer,
                     caption_tokenizer=caption_tokenizer, progress=False)
    expected_skips = {"undecodable": 1, "truncated": 1, "too_small": 1, "too_large": 2, "empty_caption": 2,
                      "missing_caption": 1, "broken_line": 1, "missing_file": 1}
    assert result.skipped == expected_skips
    dataset = ShardDataset(tmp_path / "out")
    assert dataset.manifest["skipped"] == expected_skips
    assert dataset.manifest["items"] == len(lines) == 6 + sum(expected_skips.values())
    converted = ["good.png", "gray.png", "cmyk.jpg", "rgba.png", "gray16.png", "palette.png"]
    assert len(dataset) == 6
    assert [dataset.caption(i) for i in range(6)] == ["a red circle"] + [f"picture {n}" for n in converted[1:]]
    pixels = np.stack([decode_image(str(tmp_path / name), SIZE) for name in converted])
    _, codes = dataset.get_batch(range(6))
    assert torch.equal(codes.view(6, *dataset.grid), image_tokenizer.encode(uint8_to_tensor(pixels)))


# ---------------------------------------------------------------------------------------------
# Resume, integrity, ranks
# ---------------------------------------------------------------------------------------------


def test_interrupted_run_resumes_to_identical_bytes(tmp_path, tokenizers):
    reference = run_shapes(tmp_path / "reference", tokenizers)
    assert (reference.examples, reference.eval_examples, reference.shards_written) == (11, 3, 4)

    class Interrupt(Exception):
        pass

    def stop_after_shard_1(index):
        if index == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_shapes(tmp_path / "resumed", tokenizers, on_shard_done=stop_after_shard_1)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    resumed = run_shapes(tmp_path / "resumed", tokenizers)
    assert (resumed.shards_reused, resumed.shards_written) == (2, 2)
    assert tree_bytes(tmp_path / "resumed") == tree_bytes(tmp_path / "reference")
    assert len(ShardDataset(tmp_path / "resumed", split="eval")) == 3


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from gptdraw.data import shards
    from gptdraw.data.prepare import prepare
    from gptdraw.data.prepare_config import PrepareConfig
    from gptdraw.data.sources import open_source
    from gptdraw.captions import CaptionTokenizer
    from gptdraw.vq.model import ImageTokenizer

    vq_dir, text_dir, out = sys.argv[1:4]
    save = shards._save_npy

    def save_then_die(path, array):
        save(path, array)
        if ".tmp-shard-00002" in path.parent.name and path.parent.parent.name != "eval":
            os.kill(os.getpid(), signal.SIGKILL)  # mid-shard: codes.npy written, the rest not

    shards._save_npy = save_then_die
    prepare(open_source("shapes", count=14, image_size=32, seed=2), out,
            PrepareConfig(shard_size=4, batch_size=3, workers=0, eval_count=3),
            image_tokenizer=ImageTokenizer.from_pretrained(vq_dir),
            caption_tokenizer=CaptionTokenizer.from_pretrained(text_dir), progress=False)
""")


def test_sigkilled_run_leaves_no_trusted_partial_shard(tmp_path, saved_tokenizers, tokenizers):
    vq_dir, text_dir = saved_tokenizers
    out = tmp_path / "killed"
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    completed = subprocess.run([sys.executable, str(script), str(vq_dir), str(text_dir), str(out)],
                               capture_output=True, text=True, timeout=HANG_SECONDS)
    assert completed.returncode == -signal.SIGKILL, completed.stderr
    assert [path.name for path in out.glob(".tmp-shard-00002-*")]  # the half-written shard is there…
    assert not (out / "shard-00002").exists()  # …but never under its final name

    resumed = run_shapes(out, tokenizers)
    assert (resumed.shards_reused, resumed.shards_written) == (2, 2)
    assert not list(out.glob(".tmp-*"))
    run_shapes(tmp_path / "reference", tokenizers)
    assert tree_bytes(out) == tree_bytes(tmp_path / "reference")


def test_incomplete_shard_is_redone(tmp_path, tokenizers):
    out = tmp_path / "dataset"
    run_shapes(out, tokenizers)
    reference = tree_bytes(out)
    (out / "shard-00001" / "done.json").unlink()  # as if the process died before finishing it
    codes = out / "shard-00003" / "codes.npy"
    codes.write_bytes(codes.read_bytes()[:-5])  # damaged after the fact
    rerun = run_shapes(out, tokenizers)
    assert (rerun.shards_reused, rerun.shards_written) == (2, 2)
    assert tree_bytes(out) == reference


def test_checksum_mismatch_names_the_shard(tmp_path, tokenizers):
    out = tmp_path / "dataset"
    run_shapes(out, tokenizers)
    path = out / "shard-00002" / "caption_ids.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"shard-00002.*caption_ids\.npy"):
        ShardDataset(out)
    assert len(ShardDataset(out, verify=False)) == 11


def test_other_settings_are_refused(tmp_path, tokenizers):
    out = tmp_path / "dataset"
    run_shapes(out, tokenizers, count=8)
    with pytest.raises(ValueError, match="other inputs or settings"):
        run_shapes(out, tokenizers, count=8, shard_size=5)


def test_ranks_split_the_shards(tmp_path, tokenizers):
    run_shapes(tmp_path / "single", tokenizers)
    out = tmp_path / "ranked"
    # Rank 1 first: it writes shards 1 and 3 and returns; rank 0 then finds them and writes the manifest.
    other = run_shapes(out, tokenizers, rank=1, world_size=2)
    assert not other.complete and other.shards_written == 2
    assert sorted(path.name for path in out.glob("shard-*")) == ["shard-00001", "shard-00003"]
    main = run_shapes(out, tokenizers, rank=0, world_size=2)
    assert main.complete and main.shards_written == 2 and main.examples == 11
    assert tree_bytes(out) == tree_bytes(tmp_path / "single")


def test_decoding_workers_give_the_same_dataset(tmp_path, tokenizers):
    run_shapes(tmp_path / "inline", tokenizers, count=10)
    run_shapes(tmp_path / "pool", tokenizers, count=10, workers=2)
    assert tree_bytes(tmp_path / "pool") == tree_bytes(tmp_path / "inline")


def test_eval_split_takes_an_exact_evenly_spread_share():
    split = EvalSplit.make(100, count=7)
    chosen = [index for index in range(100) if split.is_eval(index)]
    assert len(chosen) == 7 and max(np.diff(chosen)) <= 15
    assert sum(EvalSplit.make(1000, fraction=0.05).is_eval(index) for index in range(1000)) == 50
    assert not any(EvalSplit.make(10).is_eval(index) for index in range(10))
    with pytest.raises(ValueError):
        EvalSplit.make(10, fraction=0.1, count=1)


def test_codebooks_beyond_uint16_are_refused(tmp_path, tokenizers):
    _, caption_tokenizer = tokenizers
    big = ImageTokenizer(tiny_vq_config(num_vq_embeddings=70_000))
    with pytest.raises(ValueError, match="uint16"):
        prepare(open_source("shapes", count=2, image_size=SIZE), tmp_path, image_tokenizer=big,
                caption_tokenizer=caption_tokenizer, progress=False)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_cli_prepare_and_inspect(tmp_path, saved_tokenizers, monkeypatch, capsys):
    vq_dir, _ = saved_tokenizers
    out = tmp_path / "dataset"
    arguments = ["prepare", "shapes", "--count", "12", "--image-tokenizer", str(vq_dir), "--out", str(out),
                 "--text-len", "16", "--vocab-size", "300", "--shard-size", "5", "--workers", "0", "--eval-count", "2", "--no-progress"]
    assert gptdraw.cli.main(arguments) == 0
    printed = capsys.readouterr().out
    assert "10 training examples, 2 eval examples" in printed and "skipped: none" in printed
    dataset = ShardDataset(out)
    assert len(dataset) == 10 and dataset.manifest["image_tokenizer_path"] == str(vq_dir.resolve())
    assert CaptionTokenizer.from_pretrained(out / "text_tokenizer").identity() == dataset.manifest["text_tokenizer"]
    # Rerunning resumes (nothing to do) with the tokenizer the first run trained.
    assert gptdraw.cli.main(arguments) == 0
    assert "0 shards written, 3 already done" in capsys.readouterr().out

    grid = tmp_path / "grid.png"
    assert gptdraw.cli.main(["data", "inspect", str(out), "--out", str(grid), "--count", "6"]) == 0
    printed = capsys.readouterr().out
    assert "10 examples in 3 shards" in printed and dataset.caption(0) in printed
    with Image.open(grid) as image:
        assert image.width > 4 * SIZE and image.height > 2 * SIZE

    assert gptdraw.cli.main(["prepare", "shapes", "--count", "3", "--vq", str(tmp_path / "no-vq"),
                             "--out", str(tmp_path / "x")]) == 2
    assert "image tokenizer directory not found" in capsys.readouterr().err
    assert gptdraw.cli.main(["data", "inspect", str(tmp_path / "x")]) == 2


def test_a_rank_that_died_does_not_leave_rank_zero_waiting_forever(tmp_path, tokenizers):
    out = tmp_path / "ranked"
    # Rank 1 never runs (it "died"): rank 0 writes its own shards, waits, and gives up with a message.
    # The error itself proves rank 0 gave up after its 1 s stall limit (no wall-clock assert: a
    # loaded machine must not fail this).
    with pytest.raises(TimeoutError, match="no shard from the other processes completed in 1 s .*Rerun"):
        run_shapes(out, tokenizers, rank=0, world_size=2, poll_seconds=0.1, stall_seconds=1.0)
    assert sorted(path.name for path in out.glob("shard-*")) == ["shard-00000", "shard-00002"]  # kept for the rerun
    run_shapes(out, tokenizers, rank=1, world_size=2)
    assert run_shapes(out, tokenizers, rank=0, world_size=2).complete


def test_a_source_edited_between_runs_is_noticed_on_resume(tmp_path, tokenizers, caplog):
    image_tokenizer, caption_tokenizer = tokenizers
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(8):
        (folder / f"{index}.png").write_bytes(png_bytes(colour=((index * 30) % 256,) * 3))
        (folder / f"{index}.txt").write_text(f"picture number {index}")

    class Interrupted(Exception):
        pass

    def stop(_shard):
        raise Interrupted

    out = tmp_path / "data"
    with pytest.raises(Interrupted):
        prepare(open_source(str(folder)), out, PrepareConfig(shard_size=4, workers=0), image_tokenizer=image_tokenizer,
                caption_tokenizer=caption_tokenizer, progress=False, on_shard_done=stop)
    (folder / "6.txt").write_text("an edited caption")
    with caplog.at_level("WARNING", logger="gptdraw.data.prepare"):
        result = prepare(open_source(str(folder)), out, PrepareConfig(shard_size=4, workers=0),
                         image_tokenizer=image_tokenizer, caption_tokenizer=caption_tokenizer, progress=False)
    assert result.complete and result.shards_reused == 1
    assert "the source changed since this dataset was started: 1 file(s) differ (6.txt)" in caplog.text
