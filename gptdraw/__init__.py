"""gptdraw: train a GPT-2 to draw. Captions and VQGAN image codes form one sequence.

    from gptdraw import GPTDrawPipeline
    pipe = GPTDrawPipeline.from_pretrained("runs/quickstart/model")
    images = pipe(["a large red circle in the center"], num_images_per_prompt=4, seed=0)

The names below are the public API. Each is imported from its module the first time it is used
(a module-level __getattr__), so that `import gptdraw` — and `gptdraw --help` — load no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    # drawing
    "GPTDrawPipeline": "gptdraw.pipeline",
    "DrawingStep": "gptdraw.pipeline",
    "SamplingConfig": "gptdraw.gpt.config",
    # the parts of a model
    "CaptionTokenizer": "gptdraw.captions",
    "ImageTokenizer": "gptdraw.vq.model",
    "SequenceLayout": "gptdraw.sequence",
    "load_model_directory": "gptdraw.model_dir",
    "save_model_directory": "gptdraw.model_dir",
    # training the image tokenizer, preparing data, training the GPT
    "VQConfig": "gptdraw.vq.config",
    "VQTrainConfig": "gptdraw.vq.config",
    "train_vq": "gptdraw.vq.train",
    "PrepareConfig": "gptdraw.data.prepare_config",
    "prepare": "gptdraw.data.prepare",
    "ModelConfig": "gptdraw.gpt.config",
    "TrainConfig": "gptdraw.gpt.config",
    "train": "gptdraw.gpt.train",
    # sharing
    "push_model": "gptdraw.hub",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gptdraw' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and editors; never run
    from gptdraw.captions import CaptionTokenizer
    from gptdraw.data.prepare import prepare
    from gptdraw.data.prepare_config import PrepareConfig
    from gptdraw.gpt.config import ModelConfig, SamplingConfig, TrainConfig
    from gptdraw.gpt.train import train
    from gptdraw.hub import push_model
    from gptdraw.model_dir import load_model_directory, save_model_directory
    from gptdraw.pipeline import DrawingStep, GPTDrawPipeline
    from gptdraw.sequence import SequenceLayout
    from gptdraw.vq.config import VQConfig, VQTrainConfig
    from gptdraw.vq.model import ImageTokenizer
    from gptdraw.vq.train import train_vq
