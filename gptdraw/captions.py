"""Caption tokenizer: captions → fixed-length rows of BPE ids.

Two kinds, one class:
- a byte-level BPE trained on the captions themselves (offline, the default), and
- a pretrained GPT-2 tokenizer from a directory (or a hub id, where the network allows),
  for models initialised from GPT-2 weights.

Every caption becomes exactly `text_len` ids: truncated (with a warning from the caller's
side, since the tokenizer reports it) or right-padded with the pad id. The blank caption,
all pad ids, is what classifier-free guidance conditions on for its unconditional row.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from gptdraw.files import write_text_atomic
from gptdraw.untrusted_files import TOKENIZER_LIMIT, read_bytes, read_text, whole

PAD_TOKEN = "<|pad|>"
PART_SEPARATOR = ","
"""What separates the parts of a caption, the things it names ("farmer, medium skin tone, noto"),
which part dropout trains on one at a time (TrainConfig.part_dropout)."""
CONFIG_NAME = "caption_tokenizer.json"
TOKENIZER_NAME = "tokenizer.json"


@dataclass
class EncodedCaptions:
    """A batch of captions as fixed-length id rows."""

    ids: np.ndarray
    """int32 (B, text_len): token ids, right-padded with the pad id."""
    truncated: list[bool]
    """True where the caption had more tokens than text_len and was cut."""


class CaptionTokenizer:
    """Turns captions into fixed-length id rows and back."""

    def __init__(self, tokenizer: Tokenizer, text_len: int, kind: str, name: str = ""):
        if text_len < 1:
            raise ValueError(f"text_len must be at least 1, got {text_len}")
        pad_id = tokenizer.token_to_id(PAD_TOKEN)
        if pad_id is None:
            # Pretrained GPT-2 has no pad token: add one at the end of its vocabulary.
            tokenizer.add_special_tokens([PAD_TOKEN])
            pad_id = tokenizer.token_to_id(PAD_TOKEN)
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.kind = kind
        self.name = name
        self.pad_id: int = pad_id

    # ----------------------------------------------------------------- construction
    @classmethod
    def train(
        cls, captions: Iterable[str], vocab_size: int = 1024, text_len: int = 64
    ) -> "CaptionTokenizer":
        """Trains a byte-level BPE on the captions (lower-cased, NFKC-normalised)."""
        tokenizer = Tokenizer(models.BPE())
        # Prompts typed by people vary in case and unicode forms; the captions rarely matter there.
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Strip()]
        )
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[PAD_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(captions, trainer=trainer)
        return cls(tokenizer, text_len, kind="bpe-trained", name=f"bpe-{tokenizer.get_vocab_size()}")

    @classmethod
    def from_gpt2(cls, name_or_dir: str, text_len: int = 64) -> "CaptionTokenizer":
        """Loads a pretrained GPT-2 tokenizer from a directory or a hub id."""
        path = Path(name_or_dir)
        if path.is_dir():
            if (path / TOKENIZER_NAME).exists():
                tokenizer = read_tokenizer(path / TOKENIZER_NAME)
            elif (path / "vocab.json").exists() and (path / "merges.txt").exists():
                for name in ("vocab.json", "merges.txt"):  # regular files of a sane size, before tokenizers reads them
                    read_bytes(path / name, TOKENIZER_LIMIT, what="tokenizer file")
                tokenizer = Tokenizer(
                    models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt"))
                )
                tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
                tokenizer.decoder = decoders.ByteLevel()
            else:
                raise FileNotFoundError(
                    f"{path} has neither tokenizer.json nor vocab.json + merges.txt: "
                    "not a GPT-2 tokenizer directory"
                )
        else:
            try:
                tokenizer = Tokenizer.from_pretrained(name_or_dir)
            except Exception as error:  # the hub client raises many kinds; say what failed
                raise FileNotFoundError(
                    f"cannot load the GPT-2 tokenizer {name_or_dir!r}: not a local directory, and "
                    f"the hub is unreachable or has no such id ({type(error).__name__})"
                ) from None
        return cls(tokenizer, text_len, kind="gpt2", name=str(name_or_dir))

    # ----------------------------------------------------------------- use
    @property
    def vocab_size(self) -> int:
        """Number of text ids, the pad id included."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode_batch(self, captions: list[str]) -> EncodedCaptions:
        """Tokenizes, then truncates or pads each caption to text_len ids."""
        # Text that is not valid Unicode (a lone surrogate from a web form) becomes "?" here,
        # instead of a TypeError inside the tokenizer.
        captions = [caption.encode("utf-8", errors="replace").decode("utf-8") for caption in captions]
        encodings = self.tokenizer.encode_batch(captions, add_special_tokens=False)
        ids = np.full((len(captions), self.text_len), self.pad_id, dtype=np.int32)
        truncated = []
        for row, encoding in enumerate(encodings):
            tokens = encoding.ids[: self.text_len]
            ids[row, : len(tokens)] = tokens
            truncated.append(len(encoding.ids) > self.text_len)
        return EncodedCaptions(ids=ids, truncated=truncated)

    @property
    def part_separator_id(self) -> int | None:
        """The id of PART_SEPARATOR as a token of its own, None when the vocabulary has none."""
        return self.tokenizer.token_to_id(PART_SEPARATOR)

    def blank(self, batch_size: int = 1) -> np.ndarray:
        """The blank caption (all pad ids), int32 (batch_size, text_len): CFG's unconditional row."""
        return np.full((batch_size, self.text_len), self.pad_id, dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → text, pad ids dropped."""
        return self.tokenizer.decode([int(i) for i in ids if int(i) != self.pad_id])

    def identity(self) -> dict:
        """What made these ids: recorded in datasets and model directories to catch mix-ups."""
        return {
            "kind": self.kind,
            "name": self.name,
            "vocab_size": self.vocab_size,
            "text_len": self.text_len,
            "pad_id": self.pad_id,
        }

    # ----------------------------------------------------------------- save / load
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        # Each file is written whole or not at all, the config last: a folder with a config holds a
        # whole tokenizer, so a run that was killed or ran out of disk here trains it again.
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(directory / TOKENIZER_NAME, self.tokenizer.to_str())
        config = {"format": "gptdraw-caption-tokenizer", "version": 1, **self.identity()}
        write_text_atomic(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, within: Sequence[Path] | None = None) -> "CaptionTokenizer":
        """Loads what save_pretrained wrote. The folder is untrusted: both files are read only as
        regular files under a size cap, and a cut, empty, oversized or foreign file is one line
        naming it. `within`: the folders the files may resolve into."""
        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        tokenizer_path = directory / TOKENIZER_NAME
        for path in (config_path, tokenizer_path):
            if not path.exists():
                raise FileNotFoundError(f"caption tokenizer directory {directory} lacks {path.name}")
        text = read_text(config_path, within=within, what="caption tokenizer config")  # a regular file, size-capped
        try:
            config = json.loads(text)
            if not isinstance(config, dict):
                raise ValueError(f"it holds a {type(config).__name__}, not an object")
            text_len = whole(config.get("text_len"), "text_len", 1, MAX_TEXT_LEN)
            kind, name = config.get("kind", ""), config.get("name", "")
            if not isinstance(kind, str) or not isinstance(name, str):
                raise ValueError(f"kind and name must be text, got {kind!r} and {name!r}")
        except (ValueError, RecursionError) as error:  # json's errors are ValueErrors
            raise ValueError(f"{config_path} is not a valid caption tokenizer config: {error}") from None
        loaded = cls(read_tokenizer(tokenizer_path, within=within), text_len, kind=kind, name=name)
        for field in ("pad_id", "vocab_size"):  # what the config recorded must be what the tokenizer is
            if config.get(field, getattr(loaded, field)) != getattr(loaded, field):
                raise ValueError(f"{directory}: {tokenizer_path.name} has {field} {getattr(loaded, field)}, but "
                                 f"{config_path.name} records {config[field]!r}")
        return loaded


def caption_parts(ids: Sequence[int], separator_id: int, pad_id: int) -> list[list[int]]:
    """A caption's ids split at each separator id, pads and empty parts dropped:
    "farmer, medium skin tone, noto" → [[farmer], [medium, skin, tone], [noto]] as ids. Each part's
    ids are those the part encodes to on its own (the byte-level BPE merges nothing across a comma)."""
    parts, part = [], []
    for token in ids:
        token = int(token)
        if token == separator_id:
            parts.append(part)
            part = []
        elif token != pad_id:
            part.append(token)
    return [part for part in parts + [part] if part]


MAX_TEXT_LEN = 65536
"""The longest caption budget loaded: the GPT's context (gptdraw.gpt.config.MODEL_LIMITS) cannot hold more."""


def read_tokenizer(path: str | os.PathLike, *, within: Sequence[Path] | None = None) -> Tokenizer:
    """A tokenizers JSON file (under gptdraw.untrusted_files.TOKENIZER_LIMIT), parsed; one line naming the file if not."""
    text = read_text(path, TOKENIZER_LIMIT, within=within, what="tokenizer")
    try:
        return Tokenizer.from_str(text)
    except Exception as error:  # tokenizers raises a bare Exception with serde's message
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise ValueError(f"{path} is not a tokenizer file: {reason}") from None
