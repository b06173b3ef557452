"""LoRA adapters (through peft) for fine-tuning with little memory.

Low-rank matrices beside each attention and MLP matrix of the blocks are trained; every other
weight stays frozen, so there are no gradients or optimiser state for them. A model directory
trained this way keeps the frozen base in transformer/ and the adapter in adapter/; loading
applies the adapter on top of the base, and `gptdraw merge-adapter --model DIR` bakes it in.

    adapter/adapter_config.json       rank, alpha, the matrices it adapts
    adapter/adapter_model.safetensors the low-rank weights
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

TARGETS = ("c_attn", "c_proj", "c_fc")
"""GPT-2's matrices in each block: attention in and out, MLP in and out (both outs are c_proj)."""
_CONFIG, _WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def add_lora(gpt: GPT2LMHeadModel, rank: int, alpha: float) -> GPT2LMHeadModel:
    """Puts rank-`rank` adapters beside the blocks' matrices, in place, and freezes everything else.

    The adapters start as no change at all (their B matrices are zero), so the model draws as
    before until it trains.
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ImportError("LoRA needs peft: pip install 'gptdraw[lora]'") from None
    if rank < 1:
        raise ValueError(f"the LoRA rank must be at least 1, got {rank}")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(TARGETS), fan_in_fan_out=True,
                        lora_dropout=0.0, bias="none")
    gpt = inject_adapter_in_model(config, gpt)
    for name, parameter in gpt.named_parameters():
        parameter.requires_grad = "lora_" in name
    gpt.config.gptdraw_lora = {"rank": rank, "alpha": alpha}
    return gpt


def has_lora(gpt: torch.nn.Module) -> bool:
    return any("lora_" in name for name, _ in gpt.named_parameters())


def base_weights(gpt: GPT2LMHeadModel) -> dict[str, torch.Tensor]:
    """The frozen weights under their plain GPT-2 names (peft renames x.weight to x.base_layer.weight)."""
    return {name.replace(".base_layer.", "."): tensor for name, tensor in gpt.state_dict().items() if "lora_" not in name}


def save_adapter(gpt: GPT2LMHeadModel, directory: str | Path) -> None:
    """Writes the adapter's config and weights (safetensors) to `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    settings = getattr(gpt.config, "gptdraw_lora", None)
    if not settings:
        raise ValueError("this GPT has no LoRA adapter to save")
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in gpt.state_dict().items() if "lora_" in name}
    save_file(tensors, directory / _WEIGHTS)
    (directory / _CONFIG).write_text(json.dumps({**settings, "targets": list(TARGETS), "n_layer": gpt.config.n_layer,
                                                  "n_embd": gpt.config.n_embd}, indent=2) + "\n")


def load_adapter(gpt: GPT2LMHeadModel, directory: str | Path) -> GPT2LMHeadModel:
    """Applies the adapter in `directory` on top of `gpt`; one made for another base is refused."""
    directory = Path(directory)
    try:
        settings = json.loads((directory / _CONFIG).read_text())
        rank, alpha = int(settings["rank"]), float(settings["alpha"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{directory} is not a readable LoRA adapter: {error}") from None
    if (settings.get("n_layer"), settings.get("n_embd")) != (gpt.config.n_layer, gpt.config.n_embd):
        raise ValueError(f"the adapter in {directory} was made for a GPT of {settings.get('n_layer')} layers × "
                         f"{settings.get('n_embd')}, not this one ({gpt.config.n_layer} × {gpt.config.n_embd})")
    try:
        tensors = load_file(directory / _WEIGHTS)
    except Exception as error:  # safetensors raises its own error type for a cut or damaged file
        raise ValueError(f"{directory / _WEIGHTS} is not a readable safetensors file: {error}") from None
    gpt = add_lora(gpt, rank, alpha)
    expected = {name for name in gpt.state_dict() if "lora_" in name}
    if set(tensors) != expected:
        raise ValueError(f"the adapter in {directory} does not fit this GPT: "
                         f"{len(set(tensors) - expected)} unexpected and {len(expected - set(tensors))} missing tensors")
    try:
        gpt.load_state_dict(tensors, strict=False)  # the adapter's tensors only: checked above to be exactly them
    except RuntimeError as error:
        raise ValueError(f"the adapter in {directory} does not fit this GPT: {str(error).splitlines()[0]}") from None
    return gpt


def base_model(gpt: GPT2LMHeadModel) -> GPT2LMHeadModel:
    """A plain GPT-2 (a copy) holding the weights under the adapters, without them."""
    import copy

    config = copy.deepcopy(gpt.config)
    config.__dict__.pop("gptdraw_lora", None)
    plain = GPT2LMHeadModel(config).to(next(gpt.parameters()).dtype)
    plain.load_state_dict(base_weights(gpt), strict=True)
    plain.tie_weights()
    return plain


def merged(gpt: GPT2LMHeadModel) -> GPT2LMHeadModel:
    """A plain GPT-2 whose weights are the base plus its adapters (W + scale·B·A)."""
    from peft.tuners.lora import LoraLayer

    for module in gpt.modules():
        if isinstance(module, LoraLayer):
            module.merge()
    return base_model(gpt)
