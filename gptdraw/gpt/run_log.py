"""Where a training run's figures go: metrics.jsonl, TensorBoard, Weights & Biases, loss.png.

Only the main process keeps a RunLog. metrics.jsonl is the record of the run (one JSON object
per logged step); a resumed run first drops the rows its checkpoint had not yet reached.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from gptdraw.files import write_text_atomic
from gptdraw.gpt.config import TrainConfig


class RunLog:
    """The open sinks of one training run, on the main process."""

    def __init__(self, out_dir: Path, start_step: int, config: TrainConfig, world: int, wandb_run_id: str | None):
        from torch.utils.tensorboard import SummaryWriter

        self.out_dir = out_dir
        self.metrics = open_metrics(out_dir / "metrics.jsonl", start_step)
        self.writer = SummaryWriter(str(out_dir / "logs"))
        self.wandb_run = start_wandb(config, out_dir, wandb_run_id, world) if config.wandb else None

    @property
    def wandb_run_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run is not None else None

    def record(self, record: dict) -> None:
        """One logged step: {"step": n, name: value, …}."""
        step = record["step"]
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        for key, value in record.items():
            if key != "step":
                self.writer.add_scalar(f"train/{key}" if key != "eval_loss" else "eval/loss", value, step)
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def image(self, name: str, picture, step: int) -> None:
        """A PIL image (a sample grid) in TensorBoard."""
        self.writer.add_image(name, np.asarray(picture), step, dataformats="HWC")

    def plot(self) -> None:
        plot_losses(self.out_dir / "metrics.jsonl", self.out_dir / "loss.png")

    def close(self, finished: bool) -> None:
        self.writer.close()
        self.metrics.close()
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=0 if finished else 1)


def open_metrics(path: Path, start_step: int):
    """Opens metrics.jsonl for appending, first dropping rows logged after the checkpoint
    being resumed from (a killed run logged steps that will now be taken again)."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= start_step]
        write_text_atomic(path, "".join(line + "\n" for line in kept))
    return open(path, "a")


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
