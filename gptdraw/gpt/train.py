"""The training loop: pre-encoded shards → a GPT-2 that draws (Accelerate, one or many processes).

Everything that decides a step — which examples, which captions are blanked for CFG, the
learning rate — is a pure function of (seed, step), and a checkpoint holds the model, the
optimiser and the step. So a run killed at any moment and resumed from its last checkpoint
takes exactly the steps an uninterrupted run would have taken.

The same loop runs on one process, under DDP, or under FSDP (`accelerate launch --use_fsdp
--fsdp_version 2`), where each process holds only a shard of the weights and optimiser state.
Checkpoints are always gathered whole, in the files a single process writes, so a run can
resume under another launcher or process count (same global batch: micro-batch × processes).

Run directory (`--out`), which is also a model directory that `gptdraw generate` reads:

    transformer/ text_tokenizer/ image_tokenizer/ gptdraw.json   the model (updated at each checkpoint)
    checkpoints/step-00000200/     model.safetensors, optimizer.pt, trainer_state.json
    metrics.jsonl                  one JSON object per logged step
    logs/                          TensorBoard events
    samples/step-00000200.png      sample grids of fixed prompts
    loss.png                       the loss curves
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from gptdraw.gpt.config import TrainConfig
from gptdraw.data.loader import EpochBatches
from gptdraw.images import make_grid
from gptdraw.gpt.model import TrainingForward, build_model, check_model_fits_layout, split_targets, weighted_loss
from gptdraw.pipeline import GPTDrawPipeline
from gptdraw import schedule
from gptdraw.runtime import resolve_mixed_precision
from gptdraw.gpt.sampling import SamplingSettings
from gptdraw.sequence import SequenceLayout
from gptdraw.captions import CaptionTokenizer
from gptdraw.vq.model import ImageTokenizer

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_NAME = "trainer_state.json"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What a training run ended with."""

    step: int
    """The last optimiser step taken."""
    train_loss: float
    """Loss of the last logged step."""
    eval_loss: float | None
    """Loss on the held-out split at the end (None without one)."""
    seconds: float
    """Wall time of this invocation."""
    tokens_per_s: float
    """Training tokens per second over this invocation, all processes together."""
    main_process: bool = True
    """Whether this is the process that logs and writes the run directory (the others return
    the same figures), so that callers print them once."""


# ----------------------------------------------------------------------------- schedule
def learning_rate(step: int, config: TrainConfig) -> float:
    """The configured schedule's learning rate at `step` (gptdraw.schedule)."""
    return schedule.learning_rate(step, config.lr, config.warmup_steps, config.max_steps, config.schedule, config.min_lr_ratio)


# ----------------------------------------------------------------------------- data order
def micro_batch_indices(order: EpochBatches, micro_step: int) -> np.ndarray:
    """This process's examples for global micro-batch number `micro_step` (a seeded
    permutation per epoch, cut into global micro-batches, sliced per process)."""
    epoch, step = divmod(micro_step, order.steps_per_epoch)
    return order.indices(epoch, step)


def blank_captions(
    ids: torch.Tensor, layout: SequenceLayout, probability: float, seed: int, micro_step: int, rank: int, world_size: int
) -> torch.Tensor:
    """Caption dropout: replaces each caption by the blank caption with `probability`.

    The draw is made for the whole global micro-batch and sliced per process, so which
    examples are blanked does not depend on how many processes share the batch.
    """
    if probability == 0:
        return ids
    batch = ids.shape[0]
    draws = np.random.default_rng([seed, micro_step, 1]).random(batch * world_size)
    drop = torch.from_numpy(draws[rank * batch : (rank + 1) * batch] < probability)  # (B,)
    ids = ids.clone()
    ids[drop, : layout.text_len] = layout.pad_id
    return ids


# ----------------------------------------------------------------------------- checkpoints
def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint is complete once its state file exists)."""
    root = out_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / STATE_NAME).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def gather_model_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The GPT's whole weights on the CPU, keyed as GPT2LMHeadModel keys them (less the tied head).

    model: the prepared TrainingForward (plain, DDP or FSDP). Under FSDP the shards are
    gathered, so every process must call this; only the main process gets the weights
    (the others get an empty dict), so that one copy of the model exists on the CPUs.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # TrainingForward holds the GPT as `.gpt`; wrappers (DDP, FSDP, compile) add nothing to these
    # names. The LM head is left out: it is tied to the token embedding.
    return {name.removeprefix("gpt."): tensor for name, tensor in state.items() if name != "gpt.lm_head.weight"}


def gather_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The whole optimiser state on the CPU, numbered as torch's `optimizer.state_dict()` numbers
    it (parameters 0, 1, … through the groups), so that a single process can load it.

    Under FSDP every process must call this; only the main process gets the state.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    named = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not named:
        return {}
    # torch numbers parameters in the order the groups list them: the same order as these names.
    number = {name: i for i, name in enumerate(name for group in named["param_groups"] for name in group["params"])}
    return {
        "state": {number[name]: value for name, value in named["state"].items()},
        "param_groups": [{**group, "params": [number[name] for name in group["params"]]} for group in named["param_groups"]],
    }


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, param_names: list[str]) -> None:
    """Loads a whole, torch-numbered optimiser state into the prepared model's optimiser; under
    FSDP each process keeps its own shard of it.

    param_names: the names (as `gpt.…`) of the optimiser's parameters, in its order.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    count = sum(len(group["params"]) for group in state["param_groups"])
    if count != len(param_names) or len(state["param_groups"]) != len(optimizer.param_groups):
        raise ValueError(
            f"it holds optimiser state for {count} parameters in {len(state['param_groups'])} groups; "
            f"the model has {len(param_names)} in {len(optimizer.param_groups)}"
        )
    named = {
        "state": {param_names[number]: value for number, value in state["state"].items()},
        "param_groups": [{**group, "params": [param_names[number] for number in group["params"]]} for group in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, named, options=StateDictOptions(full_state_dict=True))


def load_gpt_weights(gpt, weights: dict[str, torch.Tensor]) -> None:
    """Copies whole weights into an unsharded GPT; refuses weights that do not fit it."""
    missing, unexpected = gpt.load_state_dict(weights, strict=False)
    # The tied head is not stored; anything else missing is a broken checkpoint.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")


def save_checkpoint(
    out_dir: Path, step: int, weights: dict[str, torch.Tensor], optimizer_state: dict, config: TrainConfig,
    layout: SequenceLayout, history: dict, wandb_run_id: str | None = None,
) -> Path:
    """Writes a checkpoint (whole weights and optimiser state, from gather_model_weights and
    gather_optimizer_state) to a temporary directory and renames it into place."""
    root = out_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    temporary = root / f".tmp-step-{step:08d}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    state = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    save_file(state, temporary / "model.safetensors")
    torch.save(optimizer_state, temporary / "optimizer.pt")
    trainer_state = {
        "step": step,
        "config": config.to_dict(),
        "layout": layout.to_dict(),
        "torch_rng": torch.get_rng_state().tolist(),
        "history": history,
        "wandb_run_id": wandb_run_id,
    }
    # The state file is written last: its presence marks the checkpoint complete.
    (temporary / STATE_NAME).write_text(json.dumps(trainer_state))
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    return final


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, gpt, layout: SequenceLayout) -> tuple[dict, dict]:
    """Restores the (unsharded, not yet prepared) GPT and the RNG from a checkpoint; returns the
    trainer state and the optimiser state for load_optimizer_state. Refuses a checkpoint made
    for another layout."""
    try:
        trainer_state = json.loads((path / STATE_NAME).read_text())
        saved_layout = SequenceLayout.from_dict(trainer_state["layout"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"checkpoint {path} is unreadable or corrupt: {error}") from None
    if saved_layout != layout:
        raise ValueError(
            f"checkpoint {path} was made for another vocabulary or grid ({saved_layout}); "
            f"this run uses {layout}. Use another --out or the data it was trained on."
        )
    try:
        load_gpt_weights(gpt, load_file(path / "model.safetensors"))
        optimizer_state = torch.load(path / "optimizer.pt", weights_only=True)
    except Exception as error:  # safetensors, torch.load and load_state_dict raise many kinds
        raise ValueError(f"checkpoint {path} is corrupt or does not fit the model: {error}") from None
    torch.set_rng_state(torch.tensor(trainer_state["torch_rng"], dtype=torch.uint8))
    return trainer_state, optimizer_state


def open_metrics(path: Path, start_step: int):
    """Opens metrics.jsonl for appending, first dropping rows logged after the checkpoint
    being resumed from (a killed run logged steps that will now be taken again)."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= start_step]
        temporary = path.with_suffix(".tmp")
        temporary.write_text("".join(line + "\n" for line in kept))
        os.replace(temporary, path)
    return open(path, "a")


# ----------------------------------------------------------------------------- plots
def plot_losses(metrics_path: Path, out_path: Path) -> None:
    """Writes the train / eval loss curves from metrics.jsonl as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for key, label in (("loss", "train"), ("text_loss", "train text"), ("image_loss", "train image"), ("eval_loss", "eval")):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            steps, values = zip(*points)
            axes.plot(steps, values, label=label, marker="o" if key == "eval_loss" else None, markersize=3)
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy (nats)")
    axes.set_yscale("log")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(out_path)


# ----------------------------------------------------------------------------- the loop
def evaluate(model, dataset, layout: SequenceLayout, config: TrainConfig, accelerator) -> float:
    """Mean loss over the first eval_batches micro-batches of the held-out split.

    model: the prepared TrainingForward. Going through its forward is what lets FSDP gather
    the weights; every process evaluates the same batches.
    """
    model.eval()
    losses = []
    batch = config.micro_batch_size
    with torch.no_grad():
        for start in range(0, min(len(dataset), config.eval_batches * batch), batch):
            indices = np.arange(start, min(start + batch, len(dataset)))
            captions, codes = dataset.get_batch(indices)
            ids = layout.pack(captions, codes).to(accelerator.device)
            with accelerator.autocast():
                text_sum, image_sum = model(ids)
            text_count = max(int((split_targets(ids, layout)[0] != -100).sum()), 1)
            image_count = ids.shape[0] * layout.image_len
            loss = weighted_loss(text_sum / text_count, image_sum / image_count, config.text_loss_weight, config.image_loss_weight)
            losses.append(loss.item())
    model.train()
    return float(np.mean(losses)) if losses else float("nan")


def import_wandb():
    """The wandb module, or a clear error when W&B logging is asked for but not installed."""
    try:
        import wandb
    except ImportError:
        raise ValueError(
            "Weights & Biases logging was asked for (--wandb / TrainConfig.wandb) but the wandb "
            "package is not installed: pip install wandb"
        ) from None
    return wandb


def start_wandb(config: TrainConfig, out_dir: Path, run_id: str | None, world: int):
    """Opens this training run's W&B run, or reopens it when the training run resumes.

    The project is WANDB_PROJECT or "gptdraw"; the files go under WANDB_DIR or the run
    directory; WANDB_MODE=offline logs without a network (`wandb sync` uploads later).
    """
    wandb = import_wandb()
    return wandb.init(
        project=os.environ.get("WANDB_PROJECT", "gptdraw"),
        name=out_dir.name,
        id=run_id,  # None: a new run, with an id of wandb's choosing
        resume="allow",
        dir=os.environ.get("WANDB_DIR", str(out_dir)),
        config={**config.to_dict(), "processes": world},
    )


def fsdp_settings():
    """Accelerate's FSDP settings, as `accelerate launch` or its config file set them, or None
    when the launch did not ask for FSDP.

    One setting is ours: rank-0-only loading (fsdp_cpu_ram_efficient_loading) is off. Every
    process builds the whole GPT here anyway, and that path moves the model to the meta device
    and back, which unties the LM head from the token embedding of a module that is not a
    transformers model (TrainingForward): the head would silently stop learning.
    """
    from accelerate.utils import FullyShardedDataParallelPlugin

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    return FullyShardedDataParallelPlugin(cpu_ram_efficient_loading=False)


def train(
    config: TrainConfig,
    train_data,
    out_dir: str | os.PathLike,
    caption_tokenizer: CaptionTokenizer,
    image_tokenizer: ImageTokenizer,
    eval_data=None,
    sampling: SamplingSettings = SamplingSettings(),
    init_model=None,
    progress: bool = True,
    stop_after: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Trains (or resumes training of) a GPT on pre-encoded shards; returns the final losses.

    train_data / eval_data: datasets with `__len__`, `get_batch(indices)` → (caption ids
    (B, text_len), codes (B, h·w)), `.grid` and `.text_len` (gptdraw.data.shards.ShardDataset).
    init_model: a GPT to start from (e.g. pretrained GPT-2 adapted to the layout) instead of
    a fresh one. stop_after: end this invocation after that many steps (for tests and slicing
    long runs); the run resumes from there next time.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, set_seed

    if config.wandb:
        import_wandb()  # on every process, before any work: a missing package fails all alike
    out_dir = Path(out_dir)
    layout = SequenceLayout(
        text_vocab_size=caption_tokenizer.vocab_size,
        pad_id=caption_tokenizer.pad_id,
        codebook_size=image_tokenizer.codebook_size,
        text_len=caption_tokenizer.text_len,
        grid=tuple(train_data.grid),
    )
    if train_data.text_len != layout.text_len:
        raise ValueError(f"the data has captions of {train_data.text_len} ids, the tokenizer {layout.text_len}")
    # Accelerate keeps one precision and one distributed type per process (an FSDP run marks
    # the process as FSDP for good); a library caller may train twice with different settings,
    # so drop the previous run's state. The process group itself is kept.
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(config.mixed_precision), fsdp_plugin=fsdp_settings())
    rank, world = accelerator.process_index, accelerator.num_processes
    # Under FSDP no process holds the whole model once it is prepared.
    sharded = accelerator.distributed_type == DistributedType.FSDP
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not sharded and accelerator.is_main_process:
        # Accelerate turns FSDP on only over GPU-like devices; on CPUs it quietly runs DDP.
        logger.warning("FSDP was asked for, but Accelerate trains with %s on %s", accelerator.distributed_type, accelerator.device)
    if accelerator.is_main_process:
        logger.info("training with %s on %d process(es), %s, precision %s", accelerator.distributed_type.value, world,
                    accelerator.device, accelerator.mixed_precision)
    set_seed(config.seed)

    gpt = init_model if init_model is not None else build_model(config.model, layout, seed=config.seed)
    check_model_fits_layout(gpt, layout, "train")
    if config.gradient_checkpointing:
        gpt.gradient_checkpointing_enable()
    gpt.train()
    if not sharded:
        # On the device before the optimiser is made, so that it picks its fused CUDA kernel.
        gpt.to(accelerator.device)
    optimizer = make_optimizer(gpt, config)
    # Checkpoints number the optimiser's parameters as torch does; loading them into a
    # sharded optimiser needs their names.
    names = {id(p): f"gpt.{name}" for name, p in gpt.named_parameters()}
    param_names = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]

    start_step, history, optimizer_state, wandb_run_id = 0, {"best_eval": None}, None, None
    checkpoints = list_checkpoints(out_dir)
    if checkpoints:
        trainer_state, optimizer_state = load_checkpoint(checkpoints[-1], gpt, layout)
        start_step, history = trainer_state["step"], trainer_state["history"]
        wandb_run_id = trainer_state.get("wandb_run_id")
        if accelerator.is_main_process:
            logger.info("resuming from %s (step %d)", checkpoints[-1], start_step)
    # Samples and the model directory come from an unsharded GPT: the trained one itself, or
    # under FSDP a copy on the main process, refreshed from the shards when they are needed.
    export_gpt = copy.deepcopy(gpt) if sharded and accelerator.is_main_process else gpt
    forward = TrainingForward(gpt, layout, config.loss_chunk)
    if config.compile:
        forward = torch.compile(forward, backend=config.compile_backend)
    forward, optimizer = accelerator.prepare(forward, optimizer)
    if gpt.config.tie_word_embeddings and gpt.get_output_embeddings().weight is not gpt.get_input_embeddings().weight:
        # A head cut loose from the embedding would get no optimiser updates: refuse to train.
        raise RuntimeError(
            f"preparing the model for {accelerator.distributed_type} untied the GPT's LM head from its "
            "token embedding, so the head would stop learning; launch with DDP or FSDP version 2"
        )
    if optimizer_state is not None:
        try:
            load_optimizer_state(forward, optimizer.optimizer, optimizer_state, param_names)
        except Exception as error:  # the state may not fit the optimiser in many ways
            raise ValueError(f"checkpoint {checkpoints[-1]} does not fit the optimiser: {error}") from None

    order = EpochBatches(len(train_data), config.micro_batch_size * world, config.seed, rank, world)
    writer = metrics_file = wandb_run = pipeline_parts = None
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        pipeline_parts = GPTDrawPipeline(export_gpt, caption_tokenizer, image_tokenizer, layout, sampling)
        gpt.train()  # the pipeline put it in eval mode
        if not (out_dir / "gptdraw.json").exists():
            pipeline_parts.save_pretrained(out_dir)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "logs"))
        metrics_file = open_metrics(out_dir / "metrics.jsonl", start_step)

    tokens_per_step = config.micro_batch_size * config.grad_accum * world * (layout.seq_len - 1)
    end_step = config.max_steps if stop_after is None else min(config.max_steps, start_step + stop_after)
    bar = tqdm(total=config.max_steps, initial=start_step, desc="train", unit="step", disable=not (progress and accelerator.is_main_process), dynamic_ncols=True)
    started = time.perf_counter()
    last_log_time, last_log_step = started, start_step
    loss_value, eval_loss = float("nan"), None
    step = start_step
    finished = False
    try:
        if config.wandb and accelerator.is_main_process:
            wandb_run = start_wandb(config, out_dir, wandb_run_id, world)
            wandb_run_id = wandb_run.id
        for step in range(start_step, end_step):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, config)
            # Load the step's micro-batches first: the loss is normalised by the token counts of
            # the whole step on all processes, so that accumulating k micro-batches, or splitting
            # a batch over processes, gives exactly the gradient of the one big batch.
            micro_batches, text_targets = [], 0
            for micro in range(config.grad_accum):
                micro_step = step * config.grad_accum + micro
                captions, codes = train_data.get_batch(micro_batch_indices(order, micro_step))
                ids = blank_captions(layout.pack(captions, codes), layout, config.caption_dropout, config.seed, micro_step, rank, world)
                # Counted on the CPU: counting on the GPU would wait for it at every micro-batch.
                text_targets += int((split_targets(ids, layout)[0] != -100).sum())
                micro_batches.append(ids.to(accelerator.device, non_blocking=True))
            counts = torch.tensor(
                [text_targets, sum(ids.shape[0] * layout.image_len for ids in micro_batches)],
                dtype=torch.float32,
            ).to(accelerator.device)
            counts = accelerator.reduce(counts, reduction="sum").clamp(min=1)
            sums = torch.zeros(2, device=accelerator.device)  # text, image loss sums
            for micro, ids in enumerate(micro_batches):
                # Gradients are synchronised across processes only on the last micro-batch.
                sync = micro == config.grad_accum - 1
                with (accelerator.autocast(), _no_sync(accelerator, forward, not sync)):
                    text_sum, image_sum = forward(ids)
                    loss = weighted_loss(text_sum / counts[0], image_sum / counts[1], config.text_loss_weight, config.image_loss_weight)
                    # DDP and FSDP average gradients over processes; the loss is already a global mean.
                    accelerator.backward(loss * world)
                sums += torch.stack([text_sum.detach(), image_sum.detach()]).float()
            means = accelerator.reduce(sums, reduction="sum") / counts  # text, image
            totals = torch.stack([weighted_loss(means[0], means[1], config.text_loss_weight, config.image_loss_weight), means[0], means[1]])
            if not torch.isfinite(totals).all():
                raise NonFiniteLossError(
                    f"the loss became {totals[0].item()} at step {step}; stopping. The last good "
                    f"checkpoint is kept in {out_dir / CHECKPOINTS}. Try a lower --lr or fp32."
                )
            grad_norm = accelerator.clip_grad_norm_(forward.parameters(), config.grad_clip or float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = totals[0].item()
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{learning_rate(step, config):.2e}")
            if on_step is not None:
                on_step(done, loss_value)

            record = None
            if done % config.log_every == 0 or done == end_step:
                now = time.perf_counter()
                record = {
                    "step": done,
                    "loss": loss_value,
                    "text_loss": totals[1].item(),
                    "image_loss": totals[2].item(),
                    "lr": learning_rate(step, config),
                    "grad_norm": float(grad_norm),
                    "tokens_seen": done * tokens_per_step,
                    "tokens_per_s": (done - last_log_step) * tokens_per_step / max(now - last_log_time, 1e-9),
                }
                last_log_time, last_log_step = now, done
            if eval_data is not None and config.eval_every and (done % config.eval_every == 0 or done == config.max_steps):
                eval_loss = evaluate(forward, eval_data, layout, config, accelerator)
                record = record or {"step": done}
                record["eval_loss"] = eval_loss
            if record is not None and accelerator.is_main_process:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                for key, value in record.items():
                    if key != "step":
                        writer.add_scalar(f"train/{key}" if key != "eval_loss" else "eval/loss", value, done)
                if wandb_run is not None:
                    wandb_run.log({k: v for k, v in record.items() if k != "step"}, step=done)

            sample_now = bool(config.sample_every and config.sample_prompts and done % config.sample_every == 0)
            checkpoint_now = done % config.checkpoint_every == 0 or done == end_step
            weights = None
            if checkpoint_now or (sample_now and sharded):
                # Under FSDP every process takes part in gathering the shards.
                weights = gather_model_weights(forward)
                if sharded and accelerator.is_main_process:
                    load_gpt_weights(export_gpt, weights)
            if sample_now and accelerator.is_main_process:
                write_sample_grid(pipeline_parts, config, out_dir / "samples" / f"step-{done:08d}.png", writer, done, accelerator.device)
            if checkpoint_now:
                optimizer_state = gather_optimizer_state(forward, optimizer.optimizer)
                if accelerator.is_main_process:
                    save_checkpoint(out_dir, done, weights, optimizer_state, config, layout, history, wandb_run_id)
                    prune_checkpoints(out_dir, config.keep_checkpoints)
                    pipeline_parts.save_pretrained(out_dir)
                    plot_losses(out_dir / "metrics.jsonl", out_dir / "loss.png")
                del weights, optimizer_state
                accelerator.wait_for_everyone()
        finished = True
    finally:
        bar.close()
        if writer is not None:
            writer.close()
            metrics_file.close()
        if wandb_run is not None:
            wandb_run.finish(exit_code=0 if finished else 1)
    seconds = time.perf_counter() - started
    steps_run = max(0, end_step - start_step)
    return TrainResult(
        step=max(start_step, end_step),
        train_loss=loss_value,
        eval_loss=eval_loss,
        seconds=seconds,
        tokens_per_s=steps_run * tokens_per_step / max(seconds, 1e-9),
        main_process=accelerator.is_main_process,
    )


class _no_sync:
    """Skips DDP's gradient all-reduce (FSDP's reduce-scatter) for accumulation micro-batches
    (no-op on one process)."""

    def __init__(self, accelerator, model, skip: bool):
        self.context = accelerator.no_sync(model) if skip else None

    def __enter__(self):
        if self.context is not None:
            self.context.__enter__()

    def __exit__(self, *exc):
        if self.context is not None:
            return self.context.__exit__(*exc)
        return False


def make_optimizer(model, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (fused where the device supports it) with decay on matrices only, or Adafactor."""
    matrices = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": matrices, "weight_decay": config.weight_decay},
        {"params": vectors, "weight_decay": 0.0},
    ]
    if config.optimizer == "adafactor":
        return torch.optim.Adafactor(groups, lr=config.lr)
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=fused or None)


def write_sample_grid(pipeline: GPTDrawPipeline, config: TrainConfig, path: Path, writer, step: int, device: torch.device) -> None:
    """Draws the fixed prompts on `device` and saves them as one labelled grid."""
    was_training, home = pipeline.gpt.training, pipeline.device
    pipeline.gpt.to(device)  # FSDP's unsharded copy waits on the CPU between grids
    images = pipeline(list(config.sample_prompts), num_images_per_prompt=1, seed=config.seed)
    pipeline.gpt.to(home).train(was_training)
    grid = make_grid(images, columns=min(8, len(images)), labels=list(config.sample_prompts))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    if writer is not None:
        writer.add_image("samples", np.asarray(grid), step, dataformats="HWC")
