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
    export.json                    the checkpoint step the model was last exported from, written after it
    checkpoints/step-00000200/     model.safetensors, optimizer.pt, trainer_state.json
    train_config.json              the TrainConfig of the last invocation (`gptdraw train --config` reads it)
    metrics.jsonl                  one JSON object per logged step
    logs/                          TensorBoard events
    samples/step-00000200.png      sample grids of fixed prompts
    loss.png                       the loss curves

A run killed in the middle of writing any of these loses nothing: every file and folder is
replaced whole (gptdraw.files), what a kill leaves half-written is cleaned up when the run starts
again, and a start that finds the model directory incomplete or behind its last checkpoint (its
export.json says which step it holds) exports it again from that checkpoint. So rerunning the same
command repairs a run killed during its final export.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from gptdraw import schedule
from gptdraw.captions import CaptionTokenizer, caption_parts
from gptdraw.data.loader import EpochBatches
from gptdraw.gpt.checkpoint import (
    CHECKPOINTS, BackgroundWriter, gather_model_weights, gather_optimizer_state, host_copy, list_checkpoints,
    load_checkpoint, load_gpt_weights, load_optimizer_state, prune_checkpoints, recover_checkpoints, save_checkpoint,
)
from gptdraw.gpt.config import TrainConfig
from gptdraw.gpt.lora import add_lora
from gptdraw.gpt.model import (TrainingForward, build_model, caption_attention, caption_target_count,
                               check_model_fits_layout, weighted_loss)
from gptdraw.gpt.optimizer import make_optimizer
from gptdraw.gpt.run_log import RunLog, import_wandb
from gptdraw.gpt.sampling import CodeDrawer, DrawerConfig, SamplingConfig, sample_codes
from gptdraw.files import recover_leftovers, reporting_full_disk, write_json_atomic
from gptdraw.images import make_grid, tensor_to_pil
from gptdraw.model_dir import ADAPTER_DIR, MODEL_CONFIG_NAME, PARTS, save_model_directory
from gptdraw.runtime import accelerate_precision, evaluation_mode, resolve_device, resolve_precision
from gptdraw.sequence import SequenceLayout
from gptdraw.vq.model import ImageTokenizer

logger = logging.getLogger(__name__)

CONFIG_NAME = "train_config.json"
EXPORT_NAME = "export.json"
"""Which checkpoint step the run directory's model holds: written once its export is whole."""


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


def process_draws(seed: int, micro_step: int, stream: int, batch: int, rank: int, world_size: int,
                  per_row: int = 1) -> np.ndarray:
    """Uniform numbers for this process's `batch` rows of a global micro-batch, (B,) or (B, per_row).

    They are drawn for the whole global micro-batch from `stream` (one per use) and sliced per
    process, so which examples a dropout picks does not depend on how many processes share the batch.
    """
    rows = batch * world_size
    draws = np.random.default_rng([seed, micro_step, stream]).random(rows if per_row == 1 else (rows, per_row))
    return draws[rank * batch : (rank + 1) * batch]


def blank_captions(
    ids: torch.Tensor, layout: SequenceLayout, probability: float, seed: int, micro_step: int, rank: int, world_size: int
) -> torch.Tensor:
    """Caption dropout: replaces each caption by the blank caption with `probability` (drawn as
    process_draws says)."""
    if probability == 0:
        return ids
    draws = process_draws(seed, micro_step, 1, ids.shape[0], rank, world_size)  # (B,)
    drop = torch.from_numpy(draws < probability)
    ids = ids.clone()
    ids[drop, : layout.text_len] = layout.pad_id
    return ids


def drop_parts(
    ids: torch.Tensor, layout: SequenceLayout, separator_id: int | None, probability: float, kind: str, seed: int,
    micro_step: int, rank: int, world_size: int,
) -> torch.Tensor:
    """Part dropout: with `probability`, a caption of several comma-separated parts is cut to one of
    them chosen at random (kind "keep-one": "farmer, medium skin tone, noto" → "medium skin tone"),
    or loses one of them (kind "drop-one": → "farmer, noto"), so that a part learns what it draws
    whatever else the caption names (drawn as process_draws says)."""
    if probability == 0 or separator_id is None:
        return ids
    draws = process_draws(seed, micro_step, 2, ids.shape[0], rank, world_size, per_row=2)  # (B, 2): whether, which part
    ids = ids.clone()
    for row in np.flatnonzero(draws[:, 0] < probability):
        parts = caption_parts(ids[row, : layout.text_len].tolist(), separator_id, layout.pad_id)
        if len(parts) > 1:
            chosen = int(draws[row, 1] * len(parts))
            if kind == "keep-one":
                kept = parts[chosen]
            else:  # the other parts, joined by the separator as the caption tokenizer writes them
                others = parts[:chosen] + parts[chosen + 1 :]
                kept = [token for part in others for token in (separator_id, *part)][1:]
            ids[row, : layout.text_len] = layout.pad_id
            ids[row, : len(kept)] = torch.tensor(kept, dtype=ids.dtype)
    return ids


# ----------------------------------------------------------------------------- the parts of a run
def eval_loss(model, dataset, layout: SequenceLayout, config: TrainConfig, accelerator) -> float:
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
            ids = layout.pack(captions, codes)
            text_count = max(int(caption_target_count(ids, layout)), 1)  # on the CPU: no wait
            with accelerator.autocast():
                text_sum, image_sum = model(ids.to(accelerator.device))
            image_count = ids.shape[0] * layout.image_len
            loss = weighted_loss(text_sum / text_count, image_sum / image_count, config.text_loss_weight, config.image_loss_weight)
            losses.append(loss.item())
    model.train()
    return float(np.mean(losses)) if losses else float("nan")


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


def start_accelerator(config: TrainConfig):
    """An Accelerator for this run, and whether it shards the model (FSDP)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    # Accelerate keeps one precision and one distributed type per process (an FSDP run marks
    # the process as FSDP for good); a library caller may train twice with different settings,
    # so drop the previous run's state. The process group itself is kept.
    AcceleratorState._reset_state(reset_partial_state=True)
    precision = resolve_precision(config.precision, resolve_device(None), purpose="training", fp16_on_gpu=True)
    accelerator = Accelerator(mixed_precision=accelerate_precision(precision), fsdp_plugin=fsdp_settings())
    # Under FSDP no process holds the whole model once it is prepared.
    sharded = accelerator.distributed_type == DistributedType.FSDP
    if accelerator.is_main_process:
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not sharded:
            # Accelerate turns FSDP on only over GPU-like devices; on CPUs it quietly runs DDP.
            logger.warning("FSDP was asked for, but Accelerate trains with %s on %s", accelerator.distributed_type, accelerator.device)
        logger.info("training with %s on %d process(es), %s, precision %s", accelerator.distributed_type.value,
                    accelerator.num_processes, accelerator.device, accelerator.mixed_precision)
    return accelerator, sharded


def prepare_model(gpt, optimizer, layout: SequenceLayout, config: TrainConfig, accelerator):
    """The GPT and its loss as one module, compiled if asked, wrapped for the launch (DDP, FSDP);
    returns it and the wrapped optimiser."""
    forward = TrainingForward(gpt, layout, config.loss_chunk, config.loss_vocabulary)
    if compiles(config, accelerator.device):
        # One graph for the forward (and so one for the backward): a break would split them and
        # run the pieces between in Python.
        forward = torch.compile(forward, backend=config.compile_backend, mode=config.compile_mode, fullgraph=True)
    forward, optimizer = accelerator.prepare(forward, optimizer)
    if gpt.config.tie_word_embeddings and gpt.get_output_embeddings().weight is not gpt.get_input_embeddings().weight:
        # A head cut loose from the embedding would get no optimiser updates: refuse to train.
        raise RuntimeError(
            f"preparing the model for {accelerator.distributed_type} untied the GPT's LM head from its "
            "token embedding, so the head would stop learning; launch with DDP or FSDP version 2"
        )
    return forward, optimizer


def compiles(config: TrainConfig, device: torch.device) -> bool:
    """Whether the run compiles its training step: as asked, or by default on a GPU."""
    return config.compile if config.compile is not None else device.type == "cuda"


@dataclass
class HostBatches:
    """One optimiser step's micro-batches as read on the host, and its target counts."""

    micro_batches: list[torch.Tensor]
    """(B, seq_len) joint ids per micro-batch, pinned when they go to a GPU."""
    counts: torch.Tensor
    """(text targets, image targets) of this process, float32 on the host."""


def read_step(train_data, order: EpochBatches, step: int, layout: SequenceLayout, config: TrainConfig, *, rank: int,
              world: int, pin: bool, separator_id: int | None = None) -> HostBatches:
    """This process's micro-batches of optimiser step `step`, read and counted on the host (never
    waiting for the device), pinned so that the copy to a GPU can overlap its work.
    separator_id: the caption tokenizer's part_separator_id, for part dropout."""
    micro_batches, text_targets = [], 0
    for micro in range(config.grad_accum):
        micro_step = step * config.grad_accum + micro
        captions, codes = train_data.get_batch(micro_batch_indices(order, micro_step))
        ids = drop_parts(layout.pack(captions, codes), layout, separator_id, config.part_dropout,
                         config.part_dropout_kind, config.seed, micro_step, rank, world)
        ids = blank_captions(ids, layout, config.caption_dropout, config.seed, micro_step, rank, world)
        text_targets += int(caption_target_count(ids, layout))
        micro_batches.append(ids.pin_memory() if pin else ids)
    image_targets = sum(ids.shape[0] * layout.image_len for ids in micro_batches)
    return HostBatches(micro_batches=micro_batches, counts=torch.tensor([text_targets, image_targets], dtype=torch.float32))


class Prefetcher:
    """Reads step s+1's micro-batches on a background thread while step s trains (memmap reads and
    caption dropout release the GIL or are small); the order of examples is that of `read` alone."""

    def __init__(self, read: Callable[[int], HostBatches]):
        self.read = read
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptdraw-batches")
        self.pending: dict[int, Future] = {}

    def get(self, step: int) -> HostBatches:
        future = self.pending.pop(step, None) or self.pool.submit(self.read, step)
        self.pending[step + 1] = self.pool.submit(self.read, step + 1)
        return future.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def to_device(batches: HostBatches, accelerator) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The micro-batches on the device (copied without blocking) and the step's counts summed
    over all processes."""
    device = accelerator.device
    micro_batches = [ids.to(device, non_blocking=True) for ids in batches.micro_batches]
    counts = accelerator.reduce(batches.counts.to(device, non_blocking=True), reduction="sum").clamp(min=1)
    return micro_batches, counts


def train_step(forward, optimizer, micro_batches: list[torch.Tensor], counts: torch.Tensor, config: TrainConfig, accelerator):
    """One optimiser step over the micro-batches; returns ((loss, text loss, image loss), grad norm).

    The loss is normalised by the token counts of the whole step on all processes (`counts`),
    so that accumulating k micro-batches, or splitting a batch over processes, gives exactly
    the gradient of the one big batch.
    """
    world = accelerator.num_processes
    sums = torch.zeros(2, device=accelerator.device)  # text, image loss sums
    # One autocast region for all the micro-batches: autocast keeps the bf16 copies of the weights
    # it makes until its region ends, so each weight is cast once per optimiser step, not once per
    # micro-batch (the weights do not change until the step).
    with accelerator.autocast():
        for micro, ids in enumerate(micro_batches):
            # Gradients are synchronised across processes only on the last micro-batch.
            sync = micro == len(micro_batches) - 1
            with _no_sync(accelerator, forward, not sync):
                text_sum, image_sum = forward(ids)
                loss = weighted_loss(text_sum / counts[0], image_sum / counts[1], config.text_loss_weight,
                                     config.image_loss_weight)
                # DDP and FSDP average gradients over processes; the loss is already a global mean.
                accelerator.backward(loss * world)
            sums += torch.stack([text_sum.detach(), image_sum.detach()]).float()
    means = accelerator.reduce(sums, reduction="sum") / counts  # text, image
    # Left on the device: reading them back would make the host wait for the step to end. The
    # run checks them for NaN at its log and checkpoint steps (TrainingRun.after_step).
    losses = torch.stack([weighted_loss(means[0], means[1], config.text_loss_weight, config.image_loss_weight), *means])
    grad_norm = accelerator.clip_grad_norm_(forward.parameters(), config.grad_clip or float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return losses, grad_norm


@dataclass
class Resumed:
    """Where a run starts: from scratch, or from its last checkpoint."""

    step: int = 0
    history: dict | None = None
    optimizer_state: dict | None = None
    wandb_run_id: str | None = None
    checkpoint: Path | None = None


def resume(out_dir: Path, gpt, layout: SequenceLayout, accelerator) -> Resumed:
    """Loads the run's last checkpoint into the (unprepared) GPT, if there is one."""
    checkpoints = list_checkpoints(out_dir)
    if not checkpoints:
        return Resumed(history={"best_eval": None})
    trainer_state, optimizer_state = load_checkpoint(checkpoints[-1], gpt, layout)
    if accelerator.is_main_process:
        logger.info("resuming from %s (step %d)", checkpoints[-1], trainer_state["step"])
    return Resumed(trainer_state["step"], trainer_state["history"], optimizer_state,
                   trainer_state.get("wandb_run_id"), checkpoints[-1])


class TrainingRun:
    """One invocation of a training run, set up and ready to step: the prepared model and
    optimiser, the data order, the run's log and where it resumed from.

    `train()` makes one and walks it through the steps; each step is `take_step` (one
    optimiser step) then `after_step` (log, evaluate, draw samples, checkpoint).
    """

    def __init__(self, config: TrainConfig, train_data, out_dir: str | os.PathLike, caption_tokenizer: CaptionTokenizer,
                 image_tokenizer: ImageTokenizer, eval_data=None, sampling: SamplingConfig = SamplingConfig(),
                 init_model=None):
        from accelerate.utils import set_seed

        if config.wandb:
            import_wandb()  # on every process, before any work: a missing package fails all alike
        self.config, self.train_data, self.eval_data, self.out_dir = config, train_data, eval_data, Path(out_dir)
        self.caption_tokenizer, self.image_tokenizer, self.sampling = caption_tokenizer, image_tokenizer, sampling
        self.layout = layout = SequenceLayout.from_tokenizers(caption_tokenizer, image_tokenizer, train_data.grid)
        if config.part_dropout and caption_tokenizer.part_separator_id is None:
            raise ValueError("part_dropout splits captions at commas, but this caption tokenizer has no ',' token")
        if train_data.text_len != layout.text_len:
            raise ValueError(f"the data has captions of {train_data.text_len} ids, the tokenizer {layout.text_len}")
        self.accelerator, self.sharded = start_accelerator(config)
        if self.sharded and config.optimizer == "muon":
            raise ValueError("optimizer muon orthogonalises whole matrices: it cannot train sharded under FSDP; use adamw")
        if self.sharded and config.lora_rank:
            raise ValueError("LoRA is for one process with little memory; it is not supported under FSDP")
        self.main, world = self.accelerator.is_main_process, self.accelerator.num_processes
        if self.main:  # before any process lists the checkpoints
            recover_run_directory(self.out_dir)
        self.accelerator.wait_for_everyone()
        set_seed(config.seed)

        gpt = init_model if init_model is not None else build_model(config.model, layout, seed=config.seed)
        check_model_fits_layout(gpt, layout, "train")
        if caption_attention(gpt) == "prefix" and config.text_loss_weight:
            raise ValueError("a GPT whose captions attend as a prefix sees each next word: it has no caption loss "
                             f"to learn; train it with text_loss_weight 0 (got {config.text_loss_weight})")
        if config.lora_rank:
            torch.manual_seed(config.seed)  # the adapters' A matrices start random: the same on a resume
            gpt = add_lora(gpt, config.lora_rank, config.lora_alpha)
        if config.gradient_checkpointing:
            gpt.gradient_checkpointing_enable()
        gpt.train()
        if not self.sharded:
            # On the device before the optimiser is made, so that it picks its fused CUDA kernel.
            gpt.to(self.accelerator.device)
        optimizer = make_optimizer(gpt, config)
        # Checkpoints number the optimiser's parameters as torch does; a sharded optimiser loads by name.
        names = {id(p): f"gpt.{name}" for name, p in gpt.named_parameters()}
        param_names = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
        self.resumed = resume(self.out_dir, gpt, layout, self.accelerator)
        # Samples and the model directory come from an unsharded GPT: the trained one itself, or
        # under FSDP a copy on the main process, refreshed from the shards when they are needed.
        self.export_gpt = copy.deepcopy(gpt) if self.sharded and self.main else gpt
        self.forward, self.optimizer = prepare_model(gpt, optimizer, layout, config, self.accelerator)
        if self.resumed.optimizer_state is not None:
            try:
                load_optimizer_state(self.forward, self.optimizer.optimizer, self.resumed.optimizer_state, param_names)
            except Exception as error:  # the state may not fit the optimiser in many ways
                raise ValueError(f"checkpoint {self.resumed.checkpoint} does not fit the optimiser: {error}") from None

        self.order = EpochBatches(len(train_data), config.micro_batch_size * world, config.seed,
                                  self.accelerator.process_index, world)
        rank, pin = self.accelerator.process_index, self.accelerator.device.type == "cuda"
        separator_id = caption_tokenizer.part_separator_id
        self.batches = Prefetcher(lambda step: read_step(train_data, self.order, step, layout, config, rank=rank,
                                                         world=world, pin=pin, separator_id=separator_id))
        # The sample grids' sampler, kept between grids so that its caches (and compiled step) are reused.
        self.drawer = CodeDrawer(self.export_gpt, layout, DrawerConfig(compile=compiles(config, self.accelerator.device)))
        self.log = None
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            # What this invocation trains with, as `gptdraw train --config` reads it back.
            write_json_atomic(self.out_dir / CONFIG_NAME, config.to_dict())
            if not export_is_current(self.out_dir, self.resumed.step):
                self.export(self.resumed.step)  # a fresh run's first model, or one a kill left half-written
            self.log = RunLog(self.out_dir, self.resumed.step, config, world, self.resumed.wandb_run_id)
        self.wandb_run_id = self.log.wandb_run_id if self.log is not None else self.resumed.wandb_run_id
        self.tokens_per_step = config.micro_batch_size * config.grad_accum * world * (layout.seq_len - 1)
        self.writer = BackgroundWriter()  # async_checkpoint's writes
        self.started = self.last_log_time = self.last_checkpoint_time = time.perf_counter()
        self.last_log_step = self.resumed.step
        self.losses, self.grad_norm, self.eval_loss = None, None, None

    def export(self, step: int) -> None:
        """Writes the model directory (the run directory is one) from the unsharded GPT, as of
        optimiser step `step`, then notes that step in export.json."""
        with reporting_full_disk(self.out_dir):
            save_model_directory(self.out_dir, transformer=self.export_gpt, text_tokenizer=self.caption_tokenizer,
                                 image_tokenizer=self.image_tokenizer, layout=self.layout, sampling=self.sampling)
        write_json_atomic(self.out_dir / EXPORT_NAME, {"step": step})

    def take_step(self, step: int) -> None:
        """Optimiser step `step` (0-based). Nothing in it waits for the device: its losses stay there
        (`self.losses`) until a log or checkpoint step reads them."""
        lr = learning_rate(step, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_ratio", 1.0)
        micro_batches, counts = to_device(self.batches.get(step), self.accelerator)
        self.losses, self.grad_norm = train_step(self.forward, self.optimizer, micro_batches, counts, self.config,
                                                 self.accelerator)

    def read_losses(self, done: int) -> list[float]:
        """(loss, text loss, image loss) of the last step, read back from the device; a NaN or
        infinite loss stops the run here, before anything is logged or checkpointed."""
        losses = self.losses.tolist()
        if not all(map(math.isfinite, losses)):
            raise NonFiniteLossError(
                f"the loss became {losses[0]} by step {done}; stopping. The last good checkpoint is kept in "
                f"{self.out_dir / CHECKPOINTS}. Try a lower --lr or fp32.")
        return losses

    def after_step(self, done: int, end_step: int) -> dict | None:
        """Logs, evaluates, draws samples and checkpoints, each when its interval says so; returns
        what was logged (None on a step that logs nothing)."""
        config = self.config
        record = None
        log_now = done % config.log_every == 0 or done == end_step
        sample_now = bool(config.sample_every and config.sample_prompts and done % config.sample_every == 0)
        checkpoint_now = done % config.checkpoint_every == 0 or done == end_step
        if log_now or checkpoint_now or sample_now:
            losses = self.read_losses(done)  # the only host sync of a step, and only on these steps
        if log_now and config.checkpoint_minutes and not checkpoint_now:
            checkpoint_now = self.checkpoint_is_due()  # at a log step: a sync there already
        if log_now:
            now = time.perf_counter()
            record = {"step": done, "loss": losses[0], "text_loss": losses[1], "image_loss": losses[2],
                      "lr": learning_rate(done - 1, config), "grad_norm": float(self.grad_norm),
                      "tokens_seen": done * self.tokens_per_step,
                      "tokens_per_s": (done - self.last_log_step) * self.tokens_per_step / max(now - self.last_log_time, 1e-9)}
            self.last_log_time, self.last_log_step = now, done
        if self.eval_data is not None and config.eval_every and (done % config.eval_every == 0 or done == config.max_steps):
            self.eval_loss = eval_loss(self.forward, self.eval_data, self.layout, config, self.accelerator)
            record = {**(record or {"step": done}), "eval_loss": self.eval_loss}
        if record is not None and self.main:
            self.log.record(record)
        weights = None
        if checkpoint_now or (sample_now and self.sharded):
            weights = gather_model_weights(self.forward, self.export_gpt.config.tie_word_embeddings)  # under FSDP every process takes part
            if self.sharded and self.main:
                load_gpt_weights(self.export_gpt, weights)
        if sample_now and self.main:
            self.write_sample_grid(self.out_dir / "samples" / f"step-{done:08d}.png", done)
        if checkpoint_now:
            self.checkpoint(done, weights)
        return record

    def write_sample_grid(self, path: Path, step: int) -> None:
        """Draws the fixed prompts and saves them as one labelled grid (and to the run's loggers)."""
        prompts = list(self.config.sample_prompts)
        images = draw_samples(self.drawer, self.caption_tokenizer, self.image_tokenizer, self.sampling, prompts,
                              self.config.seed, self.accelerator.device)
        grid = make_grid(images, columns=min(8, len(images)), labels=prompts)
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        self.log.image("samples", grid, step)

    def checkpoint(self, done: int, weights: dict) -> None:
        """Writes checkpoint `done` (in the background with async_checkpoint) and the model
        directory, gathered from every process."""
        optimizer_state = gather_optimizer_state(self.forward, self.optimizer.optimizer)
        if self.main:
            contents = [self.out_dir, done, weights, optimizer_state, self.config, self.layout,
                        copy.deepcopy(self.resumed.history), self.wandb_run_id, torch.get_rng_state()]
            if self.config.async_checkpoint:  # training goes on updating the live tensors in place
                contents[2:4] = host_copy(weights), host_copy(optimizer_state)

            def write() -> None:
                save_checkpoint(*contents)
                prune_checkpoints(self.out_dir, self.config.keep_checkpoints)

            if self.config.async_checkpoint:
                self.writer.start(write)
            else:
                write()
            self.export(done)
            self.log.plot()
        self.last_checkpoint_time = time.perf_counter()
        self.accelerator.wait_for_everyone()

    def checkpoint_is_due(self) -> bool:
        """Whether checkpoint_minutes have passed since the last checkpoint, as the main process's
        clock says (every process gets its answer: they must all take part in the checkpoint)."""
        due = time.perf_counter() - self.last_checkpoint_time >= self.config.checkpoint_minutes * 60
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast

            due = bool(broadcast(torch.tensor([int(due)], device=self.accelerator.device), from_process=0).item())
        return due

    def result(self, end_step: int) -> TrainResult:
        seconds = time.perf_counter() - self.started
        return TrainResult(
            step=max(self.resumed.step, end_step),
            train_loss=self.losses[0].item() if self.losses is not None else float("nan"),
            eval_loss=self.eval_loss,
            seconds=seconds,
            tokens_per_s=max(0, end_step - self.resumed.step) * self.tokens_per_step / max(seconds, 1e-9),
            main_process=self.main,
        )


def recover_run_directory(out_dir: Path) -> None:
    """Cleans up after a run killed while writing: its staging folders and temporary files are
    deleted, and a model part it had renamed aside to replace is put back (see gptdraw.files)."""
    for name in (*PARTS, ADAPTER_DIR, MODEL_CONFIG_NAME, EXPORT_NAME, CONFIG_NAME):
        recover_leftovers(out_dir / name)
    recover_checkpoints(out_dir)


def export_is_current(out_dir: Path, step: int) -> bool:
    """Whether the run directory holds a whole model exported at optimiser step `step`: its
    export.json names that step (it is written after the rest) and no part is missing."""
    try:
        exported = json.loads((out_dir / EXPORT_NAME).read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    whole = (out_dir / MODEL_CONFIG_NAME).is_file() and all((out_dir / part).is_dir() for part in PARTS)
    return whole and exported == step


def train(
    config: TrainConfig,
    train_data,
    out_dir: str | os.PathLike,
    caption_tokenizer: CaptionTokenizer,
    image_tokenizer: ImageTokenizer,
    eval_data=None,
    sampling: SamplingConfig = SamplingConfig(),
    init_model=None,
    progress: bool = True,
    stop_after: int | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Trains (or resumes training of) a GPT on pre-encoded shards; returns the final losses.

    train_data / eval_data: datasets with `__len__`, `get_batch(indices)` → (caption ids
    (B, text_len), codes (B, h·w)), `.grid` and `.text_len` (gptdraw.data.shards.ShardDataset).
    init_model: a GPT to start from (e.g. pretrained GPT-2 adapted to the layout) instead of
    a fresh one. stop_after: end this invocation after that many steps (for tests and slicing
    long runs); the run resumes from there next time. on_step(done) is called after each
    optimiser step, before its logging and checkpoint.
    """
    run = TrainingRun(config, train_data, out_dir, caption_tokenizer, image_tokenizer, eval_data, sampling, init_model)
    start_step = run.resumed.step
    end_step = config.max_steps if stop_after is None else min(config.max_steps, start_step + stop_after)
    bar = tqdm(total=config.max_steps, initial=start_step, desc="train", unit="step",
               disable=not (progress and run.main), dynamic_ncols=True)
    finished = False
    try:
        for step in range(start_step, end_step):
            run.take_step(step)
            if on_step is not None:
                on_step(step + 1)
            record = run.after_step(step + 1, end_step)
            bar.update(1)
            if record is not None:  # the bar shows the logged figures: reading them every step would wait for the device
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
        finished = True
    finally:
        bar.close()
        run.batches.close()
        try:
            run.writer.wait()  # a checkpoint still being written is finished (or its error raised) first
        finally:
            if run.log is not None:
                run.log.close(finished)
    return run.result(end_step)


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


def draw_samples(drawer: CodeDrawer, caption_tokenizer: CaptionTokenizer, image_tokenizer: ImageTokenizer,
                 sampling: SamplingConfig, prompts: list[str], seed: int, device: torch.device) -> list:
    """One image per prompt, drawn on `device` as GPTDrawPipeline draws them (the same seed gives the
    same codes), without building one: training sits below the pipeline."""
    gpt, layout = drawer.gpt, drawer.layout
    home = next(gpt.parameters()).device
    gpt.to(device)  # FSDP's unsharded copy waits on the CPU between grids
    try:
        caption_ids = torch.from_numpy(caption_tokenizer.encode_batch(prompts).ids).long()
        generator = torch.Generator(device).manual_seed(seed)
        with evaluation_mode(gpt, image_tokenizer), torch.inference_mode():
            codes = sample_codes(drawer.iter_codes(caption_ids, sampling, generator), layout)  # (B, h, w)
            pixels = image_tokenizer.decode(codes.to(next(image_tokenizer.parameters()).device))  # (B, 3, H, W)
    finally:
        gpt.to(home)
    return tensor_to_pil(pixels.float().cpu())
