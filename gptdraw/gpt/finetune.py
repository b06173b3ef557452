"""Fine-tuning: start training from a trained gptdraw model directory instead of from scratch.

The new pairs must be encoded with the model's own tokenizers, so that a caption id and an image
code mean what they meant when the model learnt them:

    gptdraw data prepare NEW_PAIRS --out data --vq MODEL/image_tokenizer --text-tokenizer MODEL/text_tokenizer
    gptdraw train --data data --out runs/tuned --init-from MODEL
"""

from __future__ import annotations

from pathlib import Path

from transformers import GPT2LMHeadModel

import torch

from gptdraw.captions import CaptionTokenizer
from gptdraw.gpt.model import set_dropout
from gptdraw.model_dir import load_model_directory
from gptdraw.sequence import SequenceLayout
from gptdraw.vq.model import ImageTokenizer


def load_for_finetuning(model_dir: str | Path, caption_tokenizer: CaptionTokenizer, image_tokenizer: ImageTokenizer,
                        layout: SequenceLayout, *, dropout: float = 0.0) -> GPT2LMHeadModel:
    """The GPT of `model_dir`, in float32 on the CPU, to train further on a dataset encoded with
    `caption_tokenizer` and `image_tokenizer`; a dataset made with other ones is refused, naming
    what differs."""
    from gptdraw.data.prepare import image_tokenizer_identity

    model = load_model_directory(model_dir, torch.device("cpu"), torch.float32)
    differences = []
    if (model.text_tokenizer.identity() != caption_tokenizer.identity()
            or model.text_tokenizer.tokenizer.get_vocab() != caption_tokenizer.tokenizer.get_vocab()):
        differences.append("caption tokenizer")
    if image_tokenizer_identity(model.image_tokenizer)["weights_sha256"] != image_tokenizer_identity(image_tokenizer)["weights_sha256"]:
        differences.append("image tokenizer")
    if model.layout != layout:
        differences.append(f"sequence layout ({model.layout.seq_len} tokens, grid {model.layout.grid} against "
                           f"{layout.seq_len}, {layout.grid})")
    if differences:
        raise ValueError(
            f"{model_dir} was trained with another {' and '.join(differences)} than this dataset was prepared with: "
            f"prepare it with --vq {Path(model_dir) / 'image_tokenizer'} --text-tokenizer {Path(model_dir) / 'text_tokenizer'}"
        )
    set_dropout(model.transformer, dropout)
    return model.transformer.train()
