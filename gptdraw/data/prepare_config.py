"""What `gptdraw data prepare` is asked to do: `PrepareConfig`, whose fields are the command's flags.

The CLI builds its parser from this class, and `gptdraw --help` must not load torch, so this
module imports none (the decoding limits' defaults come from gptdraw.data.decode, which is
torch-free too). The runtime choices that do not change what a dataset holds — the device,
the process's rank, the progress bar — are arguments of `prepare` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from gptdraw.data.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE
from gptdraw.runtime import Precision, canonical_precision

DEFAULT_SHARD_SIZE = 10_000


@dataclass(frozen=True)
class PrepareConfig:
    """How a source becomes a dataset. `caption_tokenizer_for` reads the text fields (it makes the
    caption tokenizer that `prepare` is then given); `prepare` reads the others."""

    text_tokenizer: str = "train"
    """'train' (a byte-level BPE trained on the source's captions), a caption tokenizer folder, or a
    GPT-2 tokenizer folder or hub id."""
    text_len: int = 64
    """Caption tokens per example when training a BPE or loading a GPT-2 tokenizer (a saved caption
    tokenizer keeps its own)."""
    vocab_size: int = 16384
    """Vocabulary size of the BPE that 'train' trains."""
    train_captions: int = 1_000_000
    """At most this many captions, from the start of the source, train that BPE."""
    shard_size: int = DEFAULT_SHARD_SIZE
    """Source items per shard: the unit of resuming and of sharing the work between processes."""
    batch_size: int = 64
    """Images per VQ encoding batch."""
    workers: int | None = None
    """Image decoding processes (default: all cores but one; 0: decode in this process)."""
    precision: Precision = "auto"
    """Autocast precision of the VQ encoder; auto: bf16 on a GPU that has it, fp32 on a CPU (so that
    the codes do not depend on which CPU ran)."""
    eval_fraction: float = 0.0
    """Share of the source's items kept out for DIR/eval, spread evenly over it."""
    eval_count: int = 0
    """Number of items kept out for DIR/eval (instead of a share)."""
    min_image_size: int = DEFAULT_MIN_SIZE
    """Images whose shorter side is smaller are skipped (too_small)."""
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    """Images with more pixels are skipped before any is decoded (a decompression-bomb guard)."""
    max_image_bytes: int = DEFAULT_MAX_BYTES
    """Image files or blobs bigger than this are skipped unread (too_many_bytes)."""

    def __post_init__(self) -> None:
        for name in ("text_len", "vocab_size", "train_captions", "shard_size", "batch_size", "min_image_size",
                     "max_image_pixels", "max_image_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be 0 or more, got {self.workers}")
        if not self.text_tokenizer:
            raise ValueError("text_tokenizer must be 'train', a folder or a hub id, got an empty name")
        canonical_precision(self.precision)  # an unknown name is a one-line error naming the choices
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.eval_count < 0:
            raise ValueError(f"eval_count must be 0 or more, got {self.eval_count}")
        if self.eval_fraction and self.eval_count:
            raise ValueError("give eval_fraction or eval_count, not both")
