"""The joint vocabulary and the sequence layout.

One vocabulary holds caption ids and image codes:

    [0, text_vocab_size)                          caption BPE ids (the pad id among them)
    [image_offset, image_offset + codebook_size)  image codes, image_offset = text_vocab_size
    [.., vocab_size)                              unused rows, so the vocabulary is a multiple of
                                                  `pad_vocab_to` (matmul-friendly shapes)

One training example is `[caption (text_len) | image codes (h·w, row-major)]`; the reference
layout is 64 + 16·16 = 320 tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


def round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


@dataclass(frozen=True)
class SequenceLayout:
    """Where captions and codes sit in the joint vocabulary and in a sequence."""

    text_vocab_size: int
    """Number of caption ids, the pad id included."""
    pad_id: int
    """The caption pad id: fills short captions, and all of the blank (CFG) caption."""
    codebook_size: int
    """Number of image codes in the VQGAN codebook."""
    text_len: int
    """Caption tokens per sequence."""
    grid: tuple[int, int]
    """Image code grid (h, w) from the image tokenizer."""
    pad_vocab_to: int = 128
    """The joint vocabulary is rounded up to a multiple of this."""

    def __post_init__(self):
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        if not 0 <= self.pad_id < self.text_vocab_size:
            raise ValueError(f"pad_id {self.pad_id} is outside the text vocabulary")
        if self.codebook_size < 2 or self.text_len < 1 or min(self.grid) < 1:
            raise ValueError(f"invalid layout: {self}")

    @property
    def image_offset(self) -> int:
        return self.text_vocab_size

    @property
    def vocab_size(self) -> int:
        return round_up(self.text_vocab_size + self.codebook_size, self.pad_vocab_to)

    @property
    def image_len(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def seq_len(self) -> int:
        return self.text_len + self.image_len

    def pack(self, caption_ids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """(B, text_len) caption ids + (B, h, w) or (B, h·w) codes → (B, seq_len) joint ids."""
        codes = codes.reshape(codes.shape[0], -1)  # (B, h*w)
        if caption_ids.shape[1] != self.text_len or codes.shape[1] != self.image_len:
            raise ValueError(
                f"expected captions of {self.text_len} ids and {self.image_len} codes, "
                f"got {tuple(caption_ids.shape)} and {tuple(codes.shape)}"
            )
        return torch.cat([caption_ids.long(), codes.long() + self.image_offset], dim=1)

    def unpack(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, seq_len) joint ids → (B, text_len) caption ids and (B, h, w) codes."""
        caption_ids = ids[:, : self.text_len]
        codes = ids[:, self.text_len :] - self.image_offset
        return caption_ids, codes.reshape(ids.shape[0], *self.grid)  # (B, h, w)

    @classmethod
    def from_tokenizers(cls, text_tokenizer, image_tokenizer, grid: tuple[int, int]) -> "SequenceLayout":
        """The layout of a GPT trained on these two tokenizers' ids, for images of `grid` codes
        (the one place that builds it from them)."""
        return cls(text_vocab_size=text_tokenizer.vocab_size, pad_id=text_tokenizer.pad_id,
                   codebook_size=image_tokenizer.codebook_size, text_len=text_tokenizer.text_len, grid=tuple(grid))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SequenceLayout":
        return cls(**{**data, "grid": tuple(data["grid"])})
