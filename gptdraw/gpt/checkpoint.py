"""Checkpoints of a training run: whole weights and optimiser state, written atomically.

A checkpoint is `checkpoints/step-NNNNNNNN/` with model.safetensors, optimizer.pt (tensors
only: it loads with weights_only) and trainer_state.json, which is written last and so marks
the checkpoint complete. Under FSDP the shards are gathered first, so a checkpoint is the same
files whatever launcher wrote it, and a run can resume under another process count. A checkpoint
is written in a hidden staging folder (`.step-NNNNNNNN.XXXXXXXX`) and renamed into place; one that
a killed run left behind is deleted by recover_checkpoints when the run starts again.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from gptdraw.files import recover_leftovers, replace_directory, reporting_full_disk, staging_directory, write_durable
from gptdraw.gpt.config import TrainConfig
from gptdraw.runtime import check_torch_is_safe
from gptdraw.sequence import SequenceLayout

CHECKPOINTS = "checkpoints"
STATE_NAME = "trainer_state.json"


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint is complete once its state file exists)."""
    root = out_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / STATE_NAME).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def recover_checkpoints(out_dir: Path) -> None:
    """Deletes what a killed run left of the checkpoints it was writing (their staging folders), and
    puts back one it was replacing; complete checkpoints (`step-NNNNNNNN/`) are left alone."""
    root = out_dir / CHECKPOINTS
    if not root.is_dir():
        return
    names = {match.group(1) for entry in root.iterdir() if (match := re.match(r"\.(step-\d+)\.", entry.name))}
    for name in sorted(names):
        recover_leftovers(root / name)


def gather_model_weights(model: torch.nn.Module, tied_head: bool = True) -> dict[str, torch.Tensor]:
    """The GPT's whole weights on the CPU, keyed as GPT2LMHeadModel keys them (less the head when
    `tied_head`: it is the token embedding).

    model: the prepared TrainingForward (plain, DDP or FSDP). Under FSDP the shards are
    gathered, so every process must call this; only the main process gets the weights
    (the others get an empty dict), so that one copy of the model exists on the CPUs.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # TrainingForward holds the GPT as `.gpt`; wrappers (DDP, FSDP, compile) add nothing to these
    # names. A tied LM head is left out: it is the token embedding.
    return {name.removeprefix("gpt."): tensor for name, tensor in state.items()
            if not (tied_head and name == "gpt.lm_head.weight")}


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
    # A tied head is not stored; anything else missing is a broken checkpoint.
    missing = [k for k in missing if not (gpt.config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")


def save_checkpoint(
    out_dir: Path, step: int, weights: dict[str, torch.Tensor], optimizer_state: dict, config: TrainConfig,
    layout: SequenceLayout, history: dict, wandb_run_id: str | None = None, rng_state: torch.Tensor | None = None,
) -> Path:
    """Writes a checkpoint (whole weights and optimiser state, from gather_model_weights and
    gather_optimizer_state) to a temporary directory and renames it into place. rng_state: torch's
    RNG state at the checkpoint's step (default: now; a background write passes the one it took)."""
    root = out_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    temporary = staging_directory(final)
    state = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    trainer_state = {
        "step": step,
        "config": config.to_dict(),
        "layout": layout.to_dict(),
        "torch_rng": (torch.get_rng_state() if rng_state is None else rng_state).tolist(),
        "history": history,
        "wandb_run_id": wandb_run_id,
    }
    try:
        # A full disk is reported under the checkpoint's own name, not its staging folder's.
        with reporting_full_disk(final / "model.safetensors"):
            save_file(state, temporary / "model.safetensors")
        with reporting_full_disk(final / "optimizer.pt"):
            torch.save(optimizer_state, temporary / "optimizer.pt")
        with reporting_full_disk(final / STATE_NAME):
            # The state file is written last: its presence marks the checkpoint complete.
            write_durable(temporary / STATE_NAME, json.dumps(trainer_state).encode("utf-8"))
        replace_directory(temporary, final)
    except BaseException:
        # A failed write (a full disk) leaves the last complete checkpoint and frees the space it took.
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return final


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def host_copy(state):
    """A copy of a (nested) state whose tensors share no memory with the live ones: what a background
    write may read while training updates the weights and the optimiser state in place."""
    from torch.utils._pytree import tree_map

    return tree_map(lambda value: value.detach().to("cpu", copy=True) if isinstance(value, torch.Tensor) else value,
                    state)


class BackgroundWriter:
    """Runs one write at a time in a thread. `start` waits for the previous write first, and
    `wait` raises the error a write ended with (a full disk, say) in the training thread."""

    def __init__(self):
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, write: Callable[[], None]) -> None:
        self.wait()
        self.thread = threading.Thread(target=self._run, args=(write,), name="gptdraw-checkpoint")
        self.thread.start()

    def _run(self, write: Callable[[], None]) -> None:
        try:
            write()
        except BaseException as error:  # handed to the training thread by wait()
            self.error = error

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


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
    check_torch_is_safe()  # the optimiser state is a (tensors-only) pickle
    try:
        load_gpt_weights(gpt, load_file(path / "model.safetensors"))
        optimizer_state = torch.load(path / "optimizer.pt", weights_only=True)
    except Exception as error:  # safetensors, torch.load and load_state_dict raise many kinds
        raise ValueError(f"checkpoint {path} is corrupt or does not fit the model: {error}") from None
    torch.set_rng_state(torch.tensor(trainer_state["torch_rng"], dtype=torch.uint8))
    return trainer_state, optimizer_state
