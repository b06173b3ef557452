"""A corpus of malformed inputs run through gptdraw's entry points: how many tracebacks, hangs,
losses and leaks do they cause?

Every case feeds one damaged input to one entry point in this process, under a time limit:
  images     mutated PNG/JPEG/GIF files (cut, flipped bytes, junk, lying headers, odd modes) in a
             folder source, beside known-good images that must all be kept
  manifests  CSV/TSV/JSONL with broken lines, junk bytes, missing columns, devices, paths out of the folder
  tars       webdataset tars cut short, flipped, with junk members or members claiming gigabytes
  parquet    parquet rows with broken images, odd captions and paths out of the folder; damaged parquet files
  hf         Hugging Face save_to_disk datasets with the same rows, and with damaged arrow files
  converters mutated flax_model.msgpack files and PyTorch checkpoints through the restricted readers
  shards     prepared shards with flipped bytes, read for training
  resume     training checkpoints cut short or flipped, resumed by `train`; absurd image-tokenizer configs
  prompts    odd prompts (empty, huge, control characters, other scripts) and settings drawn by a pipeline
and, in bench/bad_inputs_runs.py and bench/bad_inputs_page.py, whole runs of the `gptdraw` command:
  model dirs every tampering of tests/test_model_dir_untrusted.py (devices, FIFOs, links out, lying
             headers, absurd fields, NaN weights) through from_pretrained, `generate` and `serve`
  values     odd --device, --out, training and drawing values and --config files (/dev/zero, a FIFO)
  kills      a run killed at each rename of its final export, then run again
  two runs   a run on a folder another run holds; a lock left by a killed run
  full disk  `train` and `data prepare` on a small tmpfs filled up, then run again with space
  page       a served tiny model asked for files outside its drawings, uploads, malformed requests
An outcome is fine when the entry point returns or raises the clear errors gptdraw uses for bad
input (ValueError and its kinds, FileNotFoundError), and a command exits 1 or 2 with one error
line. Anything else is a traceback (an HTTP 5xx too). A case still running at its limit is a
hang. A good example missing, or a model that does not load after the run is repeated, is lost;
a file served or stored that should not be is a leak; a bad value taken without a word is accepted.

    python bench/bad_inputs.py          # the whole corpus: about 1,000 inputs, 3 minutes on one core
    python bench/bad_inputs.py --quick  # a few cases of each family, 30 s (the test runs this)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import resource
import signal
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import add_out_option, machine, write_result  # bench/common.py
from gptdraw.captions import CaptionTokenizer
from gptdraw.data.prepare import prepare
from gptdraw.data.prepare_config import PrepareConfig
from gptdraw.data.shards import ShardDataset
from gptdraw.data.sources import open_source
from gptdraw.gpt.config import ModelConfig
from gptdraw.gpt.model import build_model
from gptdraw.pipeline import GPTDrawPipeline
from gptdraw.sequence import SequenceLayout
from gptdraw.vq.config import VQConfig
from gptdraw.vq.convert import load_restricted_checkpoint, read_flax_msgpack
from gptdraw.vq.model import ImageTokenizer

CLEAR_ERRORS = (ValueError, FileNotFoundError)
"""What gptdraw raises for bad input (BadInput, ChecksumError and the CLI's UserError are kinds of these)."""
CASE_SECONDS = 20
MEMORY_LIMIT = 8 * 2**30
"""Address space the whole corpus may take: a reader that runs away (as /dev/zero once made them)
meets a MemoryError here, counted as a traceback, before it takes a machine shared with others."""
COUNTS = ("tracebacks", "hangs", "lost", "leaks", "accepted")
"""What can go wrong in a case: a traceback printed (or an HTTP 5xx, or one in the server's log),
a hang (still running at its limit), a good example or run lost, a file served or stored that
should not be (a leak), a bad value accepted where it must be refused."""


class Hang(BaseException):
    """A case ran past its time limit (a BaseException: no `except Exception` in gptdraw swallows it)."""


def _alarm(_signum, _frame):
    raise Hang()


@contextlib.contextmanager
def time_limit(seconds: int):
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)


def peak_memory_mib() -> float:
    """This process's peak resident memory since the last reset_peak_memory (Linux's VmHWM)."""
    try:
        status = Path("/proc/self/status").read_text()
        return round(int(status.split("VmHWM:")[1].split()[0]) / 1024, 1)
    except (OSError, IndexError, ValueError):
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def reset_peak_memory() -> None:
    """Starts the peak over from the memory held now, so that each family has its own (Linux ≥ 4.0)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


@dataclasses.dataclass
class Tally:
    """One family's counts."""

    tried: int = 0
    tracebacks: int = 0
    hangs: int = 0
    lost: int = 0
    leaks: int = 0
    accepted: int = 0
    seconds: float = 0.0
    peak_memory_mib: float = 0.0


def last_line(text: str) -> str:
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else ""


class Corpus:
    """Runs cases and keeps the tally, per family of cases."""

    def __init__(self):
        self.families: dict[str, Tally] = {}
        self.cases: dict[str, list[str]] = {count: [] for count in COUNTS}
        """Each failed case as "family: case: what it printed last", by count."""
        self.notes: list[str] = []
        self.family_name = "other"

    @contextlib.contextmanager
    def family(self, name: str):
        """Counts the cases run in the block under `name`, with their time and peak memory."""
        self.family_name = name
        tally = self.families.setdefault(name, Tally())
        reset_peak_memory()
        started = time.perf_counter()
        try:
            yield tally
        finally:
            tally.seconds += round(time.perf_counter() - started, 1)
            tally.peak_memory_mib = max(tally.peak_memory_mib, peak_memory_mib())

    @property
    def tally(self) -> Tally:
        return self.families.setdefault(self.family_name, Tally())

    def total(self, count: str) -> int:
        return sum(getattr(tally, count) for tally in self.families.values())

    def count(self, kind: str, case: str, detail: str = "", number: int = 1) -> None:
        """Counts `number` failures of kind `kind` (one of COUNTS) in `case`."""
        setattr(self.tally, kind, getattr(self.tally, kind) + number)
        self.cases[kind].append(f"{self.family_name}: {case}" + (f": {detail}" if detail else ""))

    def run(self, name: str, function, inputs: int = 1, *, refused: bool = False):
        """Runs one case; returns its result, or None when it raised (counted as it should be).
        refused: the input must be refused, so returning is counted as accepted."""
        self.tally.tried += inputs
        try:
            with time_limit(CASE_SECONDS):
                result = function()
        except Hang:
            self.count("hangs", name)
            return None
        except CLEAR_ERRORS:
            return None
        except Exception:  # anything else is a traceback a user would see
            self.count("tracebacks", name, last_line(traceback.format_exc(limit=3)))
            return None
        if refused:
            self.count("accepted", name, "returned without an error")
        return result

    def command(self, name: str, argv: list[str], *, refused: bool | None = True,
                seconds: int = CASE_SECONDS) -> int | None:
        """Runs `gptdraw ARGV` in this process as a user would (gptdraw.cli.main). A failure must
        be an exit status of 1 or 2 with one `error:` line and no traceback. refused: True, the
        input must be refused (exit 0 counts as accepted); False, the command must succeed (a
        failure loses the run); None, either is fine. Returns the exit status, None when it raised
        or hung."""
        from gptdraw.cli import main as gptdraw_main

        self.tally.tried += 1
        printed = io.StringIO()
        try:
            with contextlib.redirect_stderr(printed), time_limit(seconds):
                status = gptdraw_main(argv)
        except SystemExit as exit:  # argparse's refusal of a flag: usage and one error line
            status = exit.code
        except Hang:
            self.count("hangs", name)
            return None
        except Exception:
            self.count("tracebacks", name, last_line(traceback.format_exc(limit=3)))
            return None
        text = printed.getvalue()
        errors = [line for line in text.replace("\r", "\n").splitlines() if "error:" in line]
        if "Traceback" in text or (status and len(errors) != 1):
            self.count("tracebacks", name, last_line(text))
        elif refused is True and status == 0:
            self.count("accepted", name, "exit status 0")
        elif refused is False and status != 0:
            self.count("lost", name, f"exit status {status}: {last_line(text)}")
        return status


def prepare_leniently(source, out: Path, vq, captions):
    """prepare() as every case runs it: in this process, keeping the corpus's small pictures."""
    return prepare(source, out, PrepareConfig(workers=0, min_image_size=8), image_tokenizer=vq,
                   caption_tokenizer=captions, progress=False)


def encoded(array: np.ndarray, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format, **options)
    return buffer.getvalue()


def mutations(data: bytes, rng: np.random.Generator, count: int) -> list[bytes]:
    """Damaged copies of `data`: cut short, bytes flipped, junk appended or put in front."""
    damaged = [b"", data[:8], data[: len(data) // 2], b"\0" * len(data), rng.bytes(len(data))]
    for _ in range(count):
        flipped = bytearray(data)
        for position in rng.integers(0, len(data), size=rng.integers(1, 16)):
            flipped[position] = rng.integers(0, 256)
        damaged.append(bytes(flipped))
    damaged += [data + rng.bytes(100), rng.bytes(16) + data]
    return damaged[: count + 7]


def odd_images(rng: np.random.Generator, count: int) -> list[bytes]:
    """Real but unusual images, and lying or broken ones."""
    pixels = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    odd = [
        encoded(np.zeros((1, 1, 3), np.uint8), "PNG"),
        encoded(rng.integers(0, 256, (48, 48, 4), dtype=np.uint8), "PNG"),  # RGBA
        encoded((rng.integers(0, 65535, (48, 48)).astype(np.uint16)), "PNG"),  # 16-bit grey
        encoded(pixels, "GIF"),
        encoded(pixels, "JPEG", quality=5),
        encoded(pixels, "BMP"),
        encoded(pixels, "WEBP"),
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\x01\x86\xa0\0\x01\x86\xa0\x08\x02\0\0\0" + b"\0" * 4,  # 100k × 100k claimed
        b"GIF89a" + b"\xff\xff\xff\xff" + rng.bytes(64),
        b"not an image at all",
    ]
    base = encoded(pixels, "PNG") + encoded(pixels, "JPEG")
    return odd + mutations(encoded(pixels, "PNG"), rng, count) + mutations(encoded(pixels, "JPEG"), rng, count)[: count] + [base[:3]]


def count_lost(corpus: Corpus, result, out: Path, name: str, wanted: list[str], by: str) -> None:
    """Counts the good examples (named by their key or their caption, `by`) missing from the dataset
    that prepare wrote to `out` (all of them when it raised)."""
    kept = result.examples if result is not None else 0
    dataset = ShardDataset(out) if kept else None
    found = {getattr(dataset, by)(i) for i in range(kept)}
    for item in wanted:
        if item not in found:
            corpus.count("lost", name, item)


def parts(work: Path):
    """The tiny tokenizers and model every case uses."""
    torch.manual_seed(0)
    vq = ImageTokenizer(VQConfig(
        image_size=16, block_out_channels=(16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, latent_channels=8, vq_embed_dim=8,
        num_vq_embeddings=64, norm_num_groups=8, mid_block_add_attention=False,
    )).eval()
    captions = CaptionTokenizer.train(["a red circle", "a blue square on the left"] * 20, vocab_size=300, text_len=12)
    layout = SequenceLayout(text_vocab_size=captions.vocab_size, pad_id=captions.pad_id, codebook_size=64,
                            text_len=12, grid=(4, 4))
    gpt = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=32), layout)
    return vq, captions, GPTDrawPipeline(gpt, captions, vq, layout)


def image_cases(corpus: Corpus, work: Path, vq, captions, rng, per_kind: int) -> None:
    folder = work / "images"
    folder.mkdir()
    good = 6
    for index in range(good):
        (folder / f"good-{index}.png").write_bytes(encoded(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), "PNG"))
        (folder / f"good-{index}.txt").write_text(f"a good picture {index}")
    bad = odd_images(rng, per_kind)
    for index, data in enumerate(bad):
        (folder / f"bad-{index:03d}.png").write_bytes(data)
        (folder / f"bad-{index:03d}.txt").write_bytes([b"", b"\xff\xfe junk", b"x" * 100_000, b"fine caption"][index % 4])
    result = corpus.run("prepare: folder of mutated images", lambda: prepare_leniently(
        open_source(str(folder)), work / "images-out", vq, captions),
        inputs=len(bad))
    count_lost(corpus, result, work / "images-out", "folder of mutated images",
               [f"good-{index}" for index in range(good)], by="key")


def manifest_cases(corpus: Corpus, work: Path, vq, captions, rng, per_kind: int) -> None:
    folder = work / "manifests"
    folder.mkdir()
    (folder / "ok.png").write_bytes(encoded(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), "PNG"))
    lines = ["ok.png,a good one", "/dev/zero,a device", "../../etc/hostname,outside", "https://x.invalid/a.png,url",
             "missing.png,gone", ",no image", "ok.png", "\0\0\0", "ok.png," + "x" * 50_000]
    # A quote left open runs on to the end of a CSV (a quoted field may hold newlines), taking
    # the rows after it into one broken field: so it comes last, after the row that must be kept.
    last = '"unclosed,quote'

    for index in range(per_kind):
        variants = {
            f"m{index}.csv": "image,caption\n" + "\n".join([*rng.permutation(lines), last]) + "\n",
            f"m{index}.tsv": "image\tcaption\n" + "\n".join(line.replace(",", "\t") for line in rng.permutation(lines)),
            f"m{index}.jsonl": "\n".join([json.dumps({"image": "ok.png", "caption": "good"}), "{broken", "[]", "null",
                                           json.dumps({"image": 7, "caption": None}),
                                           json.dumps({"image": "/dev/zero", "caption": "dev"})]),
        }
        junk = bytes(rng.bytes(200)).replace(b"\n", b" ").replace(b'"', b" ")
        variants[f"j{index}.csv"] = "image,caption\nok.png,fine\n" + junk.decode("latin-1")
        for name, text in variants.items():
            path = folder / name
            path.write_text(text, encoding="utf-8", errors="replace")
            result = corpus.run(f"prepare: manifest {name}", lambda: prepare_leniently(
                open_source(str(path)), work / f"out-{name}", vq, captions))
            if result is None or result.examples < 1:
                corpus.count("lost", f"manifest {name}", "ok.png")  # named, well formed, in every variant


def tar_cases(corpus: Corpus, work: Path, vq, captions, rng, per_kind: int) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for index in range(4):
            for name, payload in ((f"{index:03d}.png", encoded(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), "PNG")),
                                  (f"{index:03d}.txt", b"a caption")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    for index, data in enumerate(mutations(buffer.getvalue(), rng, per_kind)):
        folder = work / f"tar-{index}"
        folder.mkdir()
        (folder / "00000.tar").write_bytes(data)
        corpus.run(f"prepare: webdataset tar #{index}", lambda: prepare_leniently(
            open_source(str(folder)), work / f"tar-out-{index}", vq, captions))


def _mixed_rows(rng, bad: list[bytes]) -> tuple[list, list]:
    """Four good rows (keys good-0..3) among rows with broken images, odd captions and paths."""
    good = [{"bytes": encoded(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), "PNG"), "path": None}] * 4
    images = good + [{"bytes": data, "path": None} for data in bad] + [
        {"bytes": None, "path": "/dev/zero"}, {"bytes": None, "path": "../../etc/hostname"}, {"bytes": None, "path": None}]
    captions = [f"good {index}" for index in range(4)] + [
        [None, "", "x" * 100_000, "\0\x7f\ufffe junk", "fine"][index % 5] for index in range(len(images) - 4)]
    return images, captions


def parquet_cases(corpus: Corpus, work: Path, vq, captions, rng, per_kind: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = work / "parquet"
    folder.mkdir()
    images, texts = _mixed_rows(rng, odd_images(rng, per_kind))
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array(images, type=image_type), "caption": pa.array(texts, type=pa.string())})
    pq.write_table(table, folder / "rows.parquet", row_group_size=7)
    result = corpus.run("prepare: parquet rows with broken images and captions", lambda: prepare_leniently(
        open_source(str(folder / "rows.parquet")), work / "parquet-out", vq, captions), inputs=len(images) - 4)
    count_lost(corpus, result, work / "parquet-out", "parquet rows", [f"good {i}" for i in range(4)], by="caption")
    # Columns of the wrong kind, and damaged files.
    odd_tables = {
        "ints.parquet": pa.table({"image": pa.array([1, 2]), "caption": pa.array([3, 4])}),
        "no-image.parquet": pa.table({"caption": pa.array(["a", "b"])}),
        "strings.parquet": pa.table({"image": pa.array(["not bytes", "x"]), "text": pa.array(["a", "b"])}),
    }
    for name, odd in odd_tables.items():
        pq.write_table(odd, folder / name)
    data = (folder / "rows.parquet").read_bytes()
    for index, damaged in enumerate(mutations(data, rng, per_kind)):
        (folder / f"damaged-{index}.parquet").write_bytes(damaged)
    for path in sorted(folder.glob("*.parquet")):
        if path.name != "rows.parquet":
            corpus.run(f"prepare: parquet {path.name}", lambda: prepare_leniently(
                open_source(str(path)), work / f"parquet-out-{path.stem}", vq, captions))


def huggingface_cases(corpus: Corpus, work: Path, vq, captions, rng, per_kind: int) -> None:
    import datasets

    images, texts = _mixed_rows(rng, odd_images(rng, max(2, per_kind // 4)))
    # datasets checks paths when it saves and refuses a cell with neither bytes nor path: here the
    # images are bytes or null (paths are tried through parquet).
    images = [image if image["bytes"] is not None else None for image in images]
    features = datasets.Features({"image": datasets.Image(decode=False), "caption": datasets.Value("string")})
    saved = work / "hf"
    datasets.Dataset.from_dict({"image": images, "caption": texts}, features=features).save_to_disk(str(saved))
    result = corpus.run("prepare: hf dataset with broken images and captions", lambda: prepare_leniently(
        open_source(str(saved)), work / "hf-out", vq, captions),
        inputs=len(images) - 4)
    count_lost(corpus, result, work / "hf-out", "hf rows", [f"good {i}" for i in range(4)], by="caption")
    arrow = next(saved.glob("*.arrow"))
    original = arrow.read_bytes()
    for index, damaged in enumerate(mutations(original, rng, max(2, per_kind // 4))):
        arrow.write_bytes(damaged)
        corpus.run(f"prepare: hf dataset, damaged arrow #{index}", lambda: prepare_leniently(
            open_source(str(saved)), work / f"hf-out-{index}", vq, captions))
    arrow.write_bytes(original)
    (saved / "state.json").write_text("{broken")
    corpus.run("prepare: hf dataset, broken state.json", lambda: prepare_leniently(
        open_source(str(saved)), work / "hf-out-state", vq, captions))


def converter_cases(corpus: Corpus, work: Path, vq, rng, per_kind: int) -> None:
    import msgpack

    array = msgpack.ExtType(1, msgpack.packb([[2, 2], "float32", np.ones((2, 2), np.float32).tobytes()]))
    flax = msgpack.packb({"params": {"encoder": {"conv_in": {"kernel": array, "bias": array}}}})
    for index, data in enumerate(mutations(flax, rng, per_kind)):
        path = work / f"flax-{index}" / "flax_model.msgpack"
        path.parent.mkdir()
        path.write_bytes(data)
        corpus.run(f"flax msgpack #{index}", lambda: read_flax_msgpack(path))
    saved = work / "weights.ckpt"
    torch.save({"state_dict": {name: value for name, value in vq.model.state_dict().items()}}, saved)
    for index, data in enumerate(mutations(saved.read_bytes(), rng, per_kind)):
        path = work / f"ckpt-{index}.ckpt"
        path.write_bytes(data)
        corpus.run(f"checkpoint #{index}", lambda: load_restricted_checkpoint(path))


def shard_cases(corpus: Corpus, work: Path, vq, captions, rng, per_kind: int) -> None:
    source = open_source("shapes", count=16, image_size=32, seed=0)
    clean = work / "shards"
    prepare_leniently(source, clean, vq, captions)
    files = sorted(path for path in clean.rglob("*") if path.is_file() and path.suffix in (".npy", ".jsonl", ".json"))
    for index in range(per_kind):
        damaged = work / f"shards-{index}"
        import shutil

        shutil.copytree(clean, damaged)
        target = damaged / files[index % len(files)].relative_to(clean)
        data = bytearray(target.read_bytes())
        for position in rng.integers(0, len(data), size=4):
            data[position] = rng.integers(0, 256)
        target.write_bytes(bytes(data))

        def read_all(directory=damaged):
            dataset = ShardDataset(directory)
            return dataset.get_batch(np.arange(len(dataset)))

        corpus.run(f"damaged shard file {target.name} #{index}", read_all)


def checkpoint_and_config_cases(corpus: Corpus, work: Path, vq, captions, rng, per_kind: int) -> None:
    """Damaged training checkpoints resumed by `train`, and damaged image-tokenizer directories loaded."""
    import shutil

    from gptdraw.gpt.config import TrainConfig
    from gptdraw.gpt.train import train

    data = work / "shards"  # written by shard_cases
    config = TrainConfig(model=ModelConfig(n_layer=1, n_head=2, n_embd=32), max_steps=2, micro_batch_size=4,
                         warmup_steps=1, eval_every=0, sample_every=0, checkpoint_every=1, log_every=1,
                         precision="fp32")
    clean = work / "run"
    train(config, ShardDataset(data), clean, captions, vq, progress=False)
    checkpoint_files = sorted(path.relative_to(clean) for path in (clean / "checkpoints").rglob("*") if path.is_file())
    longer = dataclasses.replace(config, max_steps=3)
    for index in range(per_kind):
        run = work / f"run-{index}"
        shutil.copytree(clean, run)
        target = run / checkpoint_files[index % len(checkpoint_files)]
        data_bytes = bytearray(target.read_bytes())
        if index % 3 == 0:
            data_bytes = data_bytes[: len(data_bytes) // 2]
        else:
            for position in rng.integers(0, len(data_bytes), size=8):
                data_bytes[position] = rng.integers(0, 256)
        target.write_bytes(bytes(data_bytes))
        corpus.run(f"resume from damaged {target.name} #{index}",
                   lambda: train(longer, ShardDataset(data), run, captions, vq, progress=False))
    vq.save_pretrained(work / "vq")
    text = (work / "vq" / "config.json").read_text()
    replacements = [("16", "1e10"), ("64", "-1"), ("8", '"eight"'), ("[", "{"), ("true", "null"), ("16", "99999999")]
    for index in range(per_kind):
        folder = work / f"vq-{index}"
        shutil.copytree(work / "vq", folder)
        old, new = replacements[index % len(replacements)]
        damaged = text.replace(old, new, 1) if index < len(replacements) else text[: int(rng.integers(0, len(text)))]
        (folder / "config.json").write_text(damaged)
        corpus.run(f"image tokenizer config #{index}", lambda: ImageTokenizer.from_pretrained(folder))


def prompt_cases(corpus: Corpus, pipe: GPTDrawPipeline, rng, per_kind: int) -> None:
    prompts = ["", "   ", "\0", "x" * 100_000, "a red\ncircle\t", "\u202egnirts lrt", "🟥🔵🔺" * 50, "a\x1b[31m red",
               "\ud800", "ﬁ ligature", "A RED CIRCLE", "drop table;", "\u0000\u0001\u0002"]
    prompts += ["".join(chr(int(code)) for code in rng.integers(32, 0x2FFF, size=rng.integers(1, 80)))
                for _ in range(per_kind)]
    for index, prompt in enumerate(prompts):
        corpus.run(f"prompt #{index}", lambda: pipe([prompt], seed=0, temperature=1.0))
    for settings in ({"temperature": -1}, {"top_k": -5}, {"top_p": 0}, {"top_p": 2}, {"cfg_scale": float("nan")},
                     {"temperature": float("inf")}, {"top_k": 10**9}):
        corpus.run(f"settings {settings}", lambda: pipe(["a red circle"], seed=0, **settings), refused=True)


FAMILIES = ("images", "manifests", "tars", "parquet", "hf", "converters", "shards", "resume", "prompts",
            "model dirs", "values", "kills", "two runs", "full disk", "page")


def run_families(corpus: Corpus, work: Path, rng, per_kind: int, quick: bool) -> None:
    """Every family of cases in turn, each counted under its name."""
    from bad_inputs_page import page_cases  # bench/bad_inputs_page.py
    from bad_inputs_runs import (cli_value_cases, export_kill_cases, full_disk_cases, make_runs,  # bench/
                                 model_dir_cases, two_run_cases)

    vq, captions, pipe = parts(work)
    families = {
        "images": lambda: image_cases(corpus, work, vq, captions, rng, per_kind),
        "manifests": lambda: manifest_cases(corpus, work, vq, captions, rng, max(1, per_kind // 10)),
        "tars": lambda: tar_cases(corpus, work, vq, captions, rng, per_kind),
        "parquet": lambda: parquet_cases(corpus, work, vq, captions, rng, per_kind),
        "hf": lambda: huggingface_cases(corpus, work, vq, captions, rng, per_kind),
        "converters": lambda: converter_cases(corpus, work, vq, rng, per_kind),
        "shards": lambda: shard_cases(corpus, work, vq, captions, rng, per_kind),
        "resume": lambda: checkpoint_and_config_cases(corpus, work, vq, captions, rng, max(3, per_kind // 4)),
        "prompts": lambda: prompt_cases(corpus, pipe, rng, per_kind),
    }
    for name, run in families.items():
        with corpus.family(name):
            run()
    runs = make_runs(work, vq, captions)
    for name, run in {"model dirs": model_dir_cases, "values": cli_value_cases, "kills": export_kill_cases,
                      "two runs": two_run_cases, "full disk": full_disk_cases, "page": page_cases}.items():
        with corpus.family(name):
            run(corpus, runs, quick)


@contextlib.contextmanager
def memory_limit(limit: int):
    """Caps this process's address space for the block (restored after: the tests run it in theirs)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    capped = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (capped, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def print_table(corpus: Corpus) -> None:
    columns = ("tried", *COUNTS, "seconds", "peak_memory_mib")
    print(f"{'family':<12}" + "".join(f"{column.replace('_memory_mib', ' MiB'):>11}" for column in columns))
    for name, tally in corpus.families.items():
        print(f"{name:<12}" + "".join(f"{getattr(tally, column):>11}" for column in columns))
    print(f"{'all':<12}{corpus.total('tried'):>11}" + "".join(f"{corpus.total(count):>11}" for count in COUNTS)
          + f"{round(sum(t.seconds for t in corpus.families.values()), 1):>11}"
          + f"{max(t.peak_memory_mib for t in corpus.families.values()):>11}")
    for kind in COUNTS:
        for line in corpus.cases[kind][:30]:
            print(f"  {kind}: {line}")
    for note in corpus.notes:
        print(f"  note: {note}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=40, help="mutations of each kind of input")
    parser.add_argument("--quick", action="store_true",
                        help="a few cases of each family (3 mutations of each kind; the test runs this)")
    parser.add_argument("--seed", type=int, default=0)
    add_out_option(parser, "bad_inputs")
    args = parser.parse_args(argv)
    per_kind = 3 if args.quick else args.per_kind
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    corpus = Corpus()
    measured_on = machine(torch.device("cpu"))
    with tempfile.TemporaryDirectory() as directory, memory_limit(MEMORY_LIMIT):
        run_families(corpus, Path(directory), rng, per_kind, args.quick)
    result = {
        "machine": measured_on,
        "quick": args.quick,
        "bad_inputs_tried": corpus.total("tried"),
        "tracebacks": corpus.total("tracebacks"),
        "hangs": corpus.total("hangs"),
        "good_examples_lost": corpus.total("lost"),
        "leaks": corpus.total("leaks"),
        "accepted": corpus.total("accepted"),
        "peak_memory_mib": max(tally.peak_memory_mib for tally in corpus.families.values()),
        "families": {name: dataclasses.asdict(tally) for name, tally in corpus.families.items()},
        "traceback_cases": corpus.cases["tracebacks"],
        "hang_cases": corpus.cases["hangs"],
        "lost_cases": corpus.cases["lost"],
        "leak_cases": corpus.cases["leaks"],
        "accepted_cases": corpus.cases["accepted"],
        "notes": corpus.notes,
    }
    print_table(corpus)
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
