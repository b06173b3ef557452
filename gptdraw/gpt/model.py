"""The GPT-2 that learns captions and image codes as one language, and its loss.

The model is transformers' GPT2LMHeadModel, unchanged: it loads pretrained GPT-2 weights and
works with the rest of the Hugging Face ecosystem. What is ours is the vocabulary and context
(from the sequence layout) and the loss, which weighs caption and image tokens separately, gives
each its own softmax (a caption position over the caption ids, an image position over the codes:
DALL·E's and minDALL-E's way, and what the sampler draws from), and never holds fp32 logits for a
whole micro-batch at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.activations import ACT2FN

from gptdraw.gpt.config import CAPTION_ATTENTIONS, MODEL_LIMITS, ModelConfig
from gptdraw.sequence import SequenceLayout
from gptdraw.untrusted_files import check_finite, check_tensors, read_json_object, real, safetensors_header, whole


def gpt2_config(model: ModelConfig, layout: SequenceLayout) -> GPT2Config:
    return GPT2Config(
        vocab_size=layout.vocab_size,
        n_positions=layout.seq_len,
        n_embd=model.n_embd,
        n_layer=model.n_layer,
        n_head=model.n_head,
        resid_pdrop=model.dropout,
        embd_pdrop=model.dropout,
        attn_pdrop=model.dropout,
        # GPT-2's own BOS/EOS ids are meaningless in the joint vocabulary. The caption's pads are
        # part of the learnt sequence, attended unless mask_pads (then attention_mask hides them):
        # given a pad id, transformers would only warn that they are not masked.
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=model.tie_head,
        # The same tanh approximation as GPT-2's "gelu_new", as one kernel rather than a Python
        # formula of several that autocast runs in fp32.
        activation_function="gelu_pytorch_tanh",
        gptdraw_caption_attention=model.caption_attention,
        gptdraw_mask_pads=model.mask_pads,
    )


def caption_attention(gpt: GPT2LMHeadModel) -> str:
    """"causal" or "prefix": how this GPT's caption positions attend (a GPT saved before the choice
    existed is causal)."""
    return getattr(gpt.config, "gptdraw_caption_attention", "causal")


def masks_pads(gpt: GPT2LMHeadModel) -> bool:
    """Whether this GPT's later positions skip the caption's pads (ModelConfig.mask_pads; a GPT saved
    before the choice existed attends them)."""
    return bool(getattr(gpt.config, "gptdraw_mask_pads", False))


def attention_mask(gpt: GPT2LMHeadModel, layout: SequenceLayout, captions: torch.Tensor, queries: int,
                   keys: int | None = None, first: int = 0) -> torch.Tensor | None:
    """The attention mask for running `queries` positions, the first at position `first`, against
    `keys` key slots (default first + queries; a static cache has seq_len of them), for rows whose
    (R, text_len) caption ids are `captions`.

    None where transformers' own causal mask is the right one (it may then use its fastest causal
    kernels): a causal GPT that attends its pads, and a prefix GPT's decode steps, which causal
    attention already shows the whole caption. Otherwise a boolean (R or 1, 1, queries, keys) mask
    (additive for eager attention): causal, a prefix GPT's caption positions also seeing the whole
    caption, and with mask_pads no position seeing another's pad (each still sees itself, so a blank
    caption's rows and the pad that predicts the first code have a key to attend).
    """
    prefix, skip_pads = caption_attention(gpt) == "prefix", masks_pads(gpt)
    if not skip_pads and not (prefix and first < layout.text_len):
        return None
    device = captions.device
    keys = first + queries if keys is None else keys
    query = torch.arange(first, first + queries, device=device)[:, None]  # (queries, 1)
    key = torch.arange(keys, device=device)[None]  # (1, keys)
    allowed = key <= query  # (queries, keys)
    if prefix:
        allowed = allowed | ((query < layout.text_len) & (key < layout.text_len))
    allowed = allowed[None, None]  # (1, 1, queries, keys)
    if skip_pads:
        pads = torch.zeros(captions.shape[0], keys, dtype=torch.bool, device=device)  # (R, keys)
        text = min(keys, layout.text_len)
        pads[:, :text] = captions[:, :text] == layout.pad_id
        allowed = allowed & (~pads[:, None, None, :] | (key == query))  # (R, 1, queries, keys)
    implementation = gpt.config._attn_implementation
    if implementation == "eager":  # eager attention adds its mask to the scores
        return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, torch.finfo(torch.float32).min)
    if implementation != "sdpa":
        raise ValueError(f"a prefix caption mask or masked pads need sdpa or eager attention, not {implementation!r}")
    return allowed


def build_model(model: ModelConfig, layout: SequenceLayout, seed: int = 0) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 for this layout (deterministic for a seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gpt = GPT2LMHeadModel(gpt2_config(model, layout))
    return gpt


def check_model_fits_layout(gpt: GPT2LMHeadModel, layout: SequenceLayout, where: str) -> None:
    """Refuses a GPT whose vocabulary or context does not match the layout it is used with."""
    check_config_fits_layout(gpt.config, layout, where)


def check_config_fits_layout(config: GPT2Config, layout: SequenceLayout, where: str) -> None:
    """check_model_fits_layout on a GPT's config alone, before the GPT is built from it."""
    if config.vocab_size != layout.vocab_size:
        raise ValueError(
            f"{where}: the GPT has a vocabulary of {config.vocab_size} but the layout needs "
            f"{layout.vocab_size} ({layout.text_vocab_size} caption ids + {layout.codebook_size} "
            "image codes, padded): it was trained with other tokenizers"
        )
    if config.n_positions < layout.seq_len:
        raise ValueError(
            f"{where}: the GPT's context is {config.n_positions} tokens but the layout needs "
            f"{layout.seq_len} ({layout.text_len} caption + {layout.image_len} image codes)"
        )


@dataclass
class LossOutput:
    """The loss of a batch, and its parts as sums and counts so that callers can average
    over many micro-batches and processes exactly (every token weighs the same)."""

    loss: torch.Tensor
    """Weighted mean of the text and image losses of this batch."""
    text_loss: torch.Tensor
    """Mean cross-entropy over non-pad caption targets."""
    image_loss: torch.Tensor
    """Mean cross-entropy over image-code targets."""
    text_sum: torch.Tensor
    """Summed cross-entropy over non-pad caption targets (with gradient)."""
    image_sum: torch.Tensor
    """Summed cross-entropy over image-code targets (with gradient)."""
    text_count: torch.Tensor
    """Number of non-pad caption targets (a tensor: counting must not wait for the device)."""
    image_count: int
    """Number of image-code targets."""


def logsumexp_(x: torch.Tensor) -> torch.Tensor:
    """`torch.logsumexp(x, dim=-1)` of a (n, V) tensor, bit for bit (the same steps as ATen's),
    without its (n, V) temporary: `x` is overwritten with exp(x − row max)."""
    maxes = x.amax(dim=-1, keepdim=True)  # (n, 1)
    maxes.masked_fill_(maxes.abs() == float("inf"), 0)
    return x.sub_(maxes).exp_().sum(dim=-1).log_().add_(maxes.squeeze(-1))


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` against targets, computed in chunks of rows.

    The gradients are worked out chunk by chunk during the forward pass, so neither the
    (rows, vocab) logits nor their fp32 softmax ever exist whole, and nothing is recomputed
    in the backward pass (unlike activation checkpointing, which repeats the head matmul).
    Matmuls run in the autocast dtype when autocast is on; softmax and sums in fp32.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        compute_dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else hidden.dtype
        # A frozen head (LoRA) needs no weight gradient: neither its fp32 (V, C) buffer nor its matmul.
        needs_hidden, needs_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        needs_grad = needs_hidden or needs_weight
        with torch.autocast(hidden.device.type, enabled=False):
            h_all, w = hidden.to(compute_dtype), weight.to(compute_dtype)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(hidden) if needs_hidden else None
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_weight else None
            for start in range(0, targets.numel(), chunk):
                rows = slice(start, start + chunk)
                h, t = h_all[rows], targets[rows]
                scores = h @ w.t()  # (n, V) in the compute dtype
                # The fp32 logits get a buffer of their own (copied even from fp32 scores): the
                # softmax and its gradient are made in it in place, and the logits again from the
                # scores in between, so no other (n, V) fp32 tensor is ever allocated.
                logits = scores.to(torch.float32, copy=True)
                valid = t != -100
                safe = t.clamp(min=0)
                picked = logits.gather(1, safe[:, None]).squeeze(1)
                log_norm = logsumexp_(logits)  # (n,)
                total += ((log_norm - picked) * valid).sum()
                if not needs_grad:
                    del scores, logits  # before the next chunk makes its own
                    continue
                # d(sum CE)/d logits = softmax − one_hot(target), zero on ignored rows.
                grad_logits = logits.copy_(scores).sub_(log_norm[:, None]).exp_()
                grad_logits[torch.arange(len(t), device=t.device), safe] -= 1
                grad_logits *= valid[:, None]
                if compute_dtype != torch.float32:
                    grad_logits = scores.copy_(grad_logits)  # cast into the scores' buffer
                del scores, logits
                if needs_hidden:
                    grad_hidden[rows] = (grad_logits @ w).to(hidden.dtype)
                if needs_weight:
                    grad_weight += (grad_logits.t() @ h).float()
                del grad_logits  # before the next chunk makes its own
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype) if needs_weight else None)
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (grad_hidden * grad_total if grad_hidden is not None else None,
                grad_weight * grad_total if grad_weight is not None else None, None, None)


def split_targets(ids: torch.Tensor, layout: SequenceLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token targets of (B, seq_len) ids: caption targets (pad → -100) and image targets."""
    targets = ids[:, 1:]
    text_targets = targets[:, : layout.text_len - 1].masked_fill(targets[:, : layout.text_len - 1] == layout.pad_id, -100)
    return text_targets, targets[:, layout.text_len - 1 :]  # (B, text_len-1), (B, h*w)


def caption_target_count(ids: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
    """Non-pad caption targets of (B, seq_len) ids: the denominator of the caption loss."""
    return (split_targets(ids, layout)[0] != -100).sum()


def weighted_loss(text_mean: torch.Tensor, image_mean: torch.Tensor, text_weight: float, image_weight: float) -> torch.Tensor:
    return (text_weight * text_mean + image_weight * image_mean) / (text_weight + image_weight)


LOSS_VOCABULARIES = ("per-modality", "joint")


def summed_losses(gpt: GPT2LMHeadModel, ids: torch.Tensor, layout: SequenceLayout, chunk: int = 4096,
                  vocabulary: str = "per-modality") -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy of (B, seq_len) joint ids: (caption targets, image targets).

    vocabulary "per-modality": a caption position is normalised over the caption ids and an image
    position over the codebook only (rows of the one tied head), since an image position can only
    be a code; "joint": both over the whole joint vocabulary, as the model was first trained.
    The head and the cross-entropy run in chunks of `chunk` positions (LinearCrossEntropy), so
    memory holds one chunk of logits, never (B, T, V) of them.
    """
    if vocabulary not in LOSS_VOCABULARIES:
        raise ValueError(f"unknown loss vocabulary {vocabulary!r}; choose one of {', '.join(LOSS_VOCABULARIES)}")
    text_targets, image_targets = split_targets(ids, layout)
    mask = attention_mask(gpt, layout, ids[:, : layout.text_len], ids.shape[1] - 1)
    hidden = gpt.transformer(input_ids=ids[:, :-1], attention_mask=mask).last_hidden_state  # (B, T-1, C)
    weight = gpt.lm_head.weight  # (V, C)
    text_weight, image_weight = weight, weight
    if vocabulary == "per-modality":
        text_weight = weight[: layout.text_vocab_size]  # (text vocab, C)
        image_weight = weight[layout.image_offset : layout.image_offset + layout.codebook_size]  # (K, C)
        image_targets = image_targets - layout.image_offset  # joint ids → codes

    def summed(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # (B, n, C) → (B*n, C) rows against (B*n,) targets
        return LinearCrossEntropy.apply(h.reshape(-1, h.shape[-1]), w, t.reshape(-1), chunk)

    return (summed(hidden[:, : layout.text_len - 1], text_weight, text_targets),
            summed(hidden[:, layout.text_len - 1 :], image_weight, image_targets))


def sequence_loss(
    gpt: GPT2LMHeadModel,
    ids: torch.Tensor,
    layout: SequenceLayout,
    text_weight: float = 1.0,
    image_weight: float = 1.0,
    chunk: int = 4096,
    vocabulary: str = "per-modality",
) -> LossOutput:
    """Next-token loss on (B, seq_len) joint ids, caption and image targets weighed apart (see summed_losses)."""
    text_sum, image_sum = summed_losses(gpt, ids, layout, chunk, vocabulary)
    text_count = caption_target_count(ids, layout)
    image_count = ids.shape[0] * layout.image_len
    text_loss = text_sum / text_count.clamp(min=1)
    image_loss = image_sum / image_count
    return LossOutput(
        loss=weighted_loss(text_loss, image_loss, text_weight, image_weight),
        text_loss=text_loss.detach(),
        image_loss=image_loss.detach(),
        text_sum=text_sum,
        image_sum=image_sum,
        text_count=text_count,
        image_count=image_count,
    )


class TrainingForward(torch.nn.Module):
    """The GPT and its loss as one module, so that DDP, FSDP and torch.compile wrap the whole
    training forward (DDP only synchronises gradients of work done through its forward)."""

    def __init__(self, gpt: GPT2LMHeadModel, layout: SequenceLayout, chunk: int = 4096,
                 vocabulary: str = "per-modality"):
        super().__init__()
        self.gpt = gpt
        self.layout = layout
        self.chunk = chunk
        self.vocabulary = vocabulary

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, seq_len) ids → summed text and image cross-entropy (see summed_losses). Nothing
        here reads a value back to the host, so a compiled forward is one graph."""
        return summed_losses(self.gpt, ids, self.layout, self.chunk, self.vocabulary)


def save_transformer(gpt: GPT2LMHeadModel, directory: str | Path) -> None:
    """Saves the GPT as a transformers directory (config.json + model.safetensors)."""
    gpt.save_pretrained(directory, safe_serialization=True)


CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
"""A saved GPT's files, as transformers' save_pretrained writes them (one weights file below 50 GB)."""
_FLAGS = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
          "tie_word_embeddings": True, "use_cache": True, "gptdraw_mask_pads": False}
"""The GPT-2 config's true/false fields gptdraw reads, with transformers' defaults (gptdraw_mask_pads: ours,
false for a GPT saved before it existed)."""


def read_transformer_config(path: str | Path, *, within: Sequence[Path] | None = None) -> GPT2Config:
    """A saved GPT's config.json, every field that shapes the network checked for type and range
    (gptdraw.gpt.config.MODEL_LIMITS) before anything is built; fields gptdraw does not use (a
    quantisation or an attention kernel, say) are left out rather than obeyed. `within`: the
    folders the file may resolve into."""
    data = read_json_object(path, within=within, what="GPT config")
    try:
        return GPT2Config(**_gpt2_fields(data))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _gpt2_fields(data: dict) -> dict:
    if data.get("model_type", "gpt2") != "gpt2" or data.get("add_cross_attention", False) is not False:
        raise ValueError(f"not a gptdraw GPT (model_type {data.get('model_type')!r}, add_cross_attention "
                         f"{data.get('add_cross_attention', False)!r})")
    fields = {name: whole(data.get(name), name, 1, MODEL_LIMITS[name])
              for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")}
    if fields["n_embd"] % fields["n_head"]:
        raise ValueError(f"n_embd {fields['n_embd']} is not divisible by n_head {fields['n_head']}")
    if data.get("n_inner") is not None:
        fields["n_inner"] = whole(data["n_inner"], "n_inner", 1, 4 * MODEL_LIMITS["n_embd"])
    activation = data.get("activation_function", "gelu_new")
    if not isinstance(activation, str) or activation not in ACT2FN:
        raise ValueError(f"activation_function {activation!r} is not one transformers knows")
    fields["activation_function"] = activation
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        fields[name] = real(data.get(name, 0.0), name, 0.0, 1.0, open_high=True)
    fields["layer_norm_epsilon"] = real(data.get("layer_norm_epsilon", 1e-5), "layer_norm_epsilon", 1e-12, 1.0)
    fields["initializer_range"] = real(data.get("initializer_range", 0.02), "initializer_range", 0.0, 1.0)
    for name, default in _FLAGS.items():
        fields[name] = data.get(name, default)
        if not isinstance(fields[name], bool):
            raise ValueError(f"{name} must be true or false, got {fields[name]!r}")
    fields["gptdraw_caption_attention"] = data.get("gptdraw_caption_attention", "causal")
    if fields["gptdraw_caption_attention"] not in CAPTION_ATTENTIONS:
        raise ValueError(f"gptdraw_caption_attention must be one of {', '.join(CAPTION_ATTENTIONS)}, "
                         f"got {fields['gptdraw_caption_attention']!r}")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):  # shape nothing; GPT-2's own are past a small vocabulary
        value = data.get(name)
        fields[name] = None if value is None else whole(value, name, 0, 2**31 - 1)
    return fields


def load_transformer(directory: str | Path, device: str | torch.device = "cpu", *, config: GPT2Config | None = None,
                     within: Sequence[Path] | None = None) -> GPT2LMHeadModel:
    """Loads a saved GPT strictly from safetensors (never pickle), treating the folder as untrusted.

    The config (`config`, or read from config.json) is checked first, then the weights' header
    against the tensors that config makes (names, shapes, floating dtypes; offsets inside the
    file), all before a byte of weights is read; NaN or infinite weights are refused by name.
    The network is built on the meta device and takes the loaded tensors as they are.
    """
    directory = Path(directory)
    if config is None:
        config = read_transformer_config(directory / CONFIG_FILE, within=within)
    weights = directory / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"{directory} has no {WEIGHTS_FILE}: not a saved gptdraw GPT")
    with torch.device("meta"):
        gpt = GPT2LMHeadModel(config)
    tied = ("lm_head.weight",) if config.tie_word_embeddings else ()
    expected = {name: tuple(tensor.shape) for name, tensor in gpt.state_dict().items()}
    check_tensors(weights, safetensors_header(weights, within=within), expected, optional=tied)
    try:
        state = load_file(str(weights))
    except Exception as error:  # safetensors' own error for what the header check let through
        raise ValueError(f"cannot read {weights}: {str(error).splitlines()[0] if str(error) else error!r}") from None
    check_finite(weights, state.items())
    gpt.load_state_dict(state, strict=False, assign=True)  # exactly the expected tensors: checked above
    gpt.tie_weights()
    left = [name for name, tensor in gpt.state_dict(keep_vars=True).items() if tensor.is_meta]
    if left:
        raise ValueError(f"{weights}: tensors left without weights after loading: {left[:3]}")
    return gpt.to(device).eval()


def set_dropout(gpt: GPT2LMHeadModel, dropout: float) -> None:
    """Sets every dropout of a loaded GPT-2, in its config and in its modules, to `dropout`."""
    gpt.config.resid_pdrop = gpt.config.embd_pdrop = gpt.config.attn_pdrop = dropout
    for module in gpt.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = dropout


def adapt_pretrained_gpt2(name_or_dir: str | Path, layout: SequenceLayout, dropout: float = 0.0) -> GPT2LMHeadModel:
    """Starts from pretrained GPT-2 weights: keeps its text embeddings, adds rows for the pad
    id and the image codes, and lengthens the position table if the layout needs more context.

    The caption tokenizer must be GPT-2's own (`CaptionTokenizer.from_gpt2`), so that caption
    id i means the same token to the pretrained embeddings.
    """
    if (Path(name_or_dir) / CONFIG_FILE).is_file():  # a local folder: its sizes checked before transformers builds them
        read_transformer_config(Path(name_or_dir) / CONFIG_FILE)
    try:
        gpt, info = GPT2LMHeadModel.from_pretrained(str(name_or_dir), use_safetensors=True, output_loading_info=True)
    except OSError as error:
        raise FileNotFoundError(f"cannot load pretrained GPT-2 from {name_or_dir}: {error}") from None
    # The tied LM head may be absent from a saved GPT-2: it is the token embedding.
    missing = [k for k in info.get("missing_keys", []) if k != "lm_head.weight"]
    problems = {k: v for k, v in info.items() if v and k in ("unexpected_keys", "mismatched_keys")}
    if missing:
        problems["missing_keys"] = missing
    if problems:
        raise ValueError(f"{name_or_dir}: pretrained GPT-2 weights do not match its config: {problems}")
    pretrained_vocab = gpt.config.vocab_size
    if layout.text_vocab_size < pretrained_vocab:
        raise ValueError(
            f"{name_or_dir} has {pretrained_vocab} token ids but the caption tokenizer only "
            f"{layout.text_vocab_size}: use the pretrained model's own tokenizer for captions"
        )
    gpt.resize_token_embeddings(layout.vocab_size, mean_resizing=False)
    if gpt.config.n_positions < layout.seq_len:
        old = gpt.transformer.wpe.weight.data
        grown = torch.nn.Embedding(layout.seq_len, old.shape[1])
        torch.nn.init.normal_(grown.weight, std=gpt.config.initializer_range)
        grown.weight.data[: old.shape[0]] = old
        gpt.transformer.wpe = grown
        gpt.config.n_positions = layout.seq_len
    set_dropout(gpt, dropout)  # GPT-2 trains with dropout 0.1; the reference recipe uses none
    gpt.config.bos_token_id = gpt.config.eos_token_id = gpt.config.pad_token_id = None  # as gpt2_config's
    return gpt
