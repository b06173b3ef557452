"""Peak tensor memory of a training step on a CPU: the figure `torch.cuda.max_memory_allocated`
gives on a GPU, for those who plan a GPU run on a machine without one.

The measure is the CPU allocator's own account. While `torch.profiler` runs with
`profile_memory=True`, every allocation and free of the CPU allocator is recorded with its
address and size, inside kernels too (logsumexp's (rows, vocab) temporary, the autocast
copies, the autograd engine's buffers). Replaying those events gives the live bytes at every
moment and so the peak. Each allocation is rounded up to 512 bytes, as the CUDA caching
allocator rounds its blocks. A TorchDispatchMode tracker (torch's MemTracker) sees only the
outputs of whole operators, not the temporaries inside them, and so reports less.

The peak is found separately in the forward and backward passes and in the optimizer steps
(where gradients and optimizer state are all alive), and split into the model's state and the rest:
- parameters: the model's tensors (they must exist before the tracker starts);
- gradients: buffers that autograd made a parameter's `.grad` (seen by a post-accumulate hook);
- optimizer states: allocated during `Optimizer.step` and outliving it (AdamW's moments);
- activations and temporaries: everything else (saved activations, the loss chunks, scratch).

What the allocator does not see: memory a library allocates outside PyTorch's allocator
(oneDNN scratchpads here, cuBLAS/cuDNN workspaces and the CUDA context on a GPU), and the
caching allocator's fragmentation (reserved but unallocated memory).
"""

from __future__ import annotations

import bisect
import gc
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch._C._profiler import _EventType

from gptdraw.gpt.config import TrainConfig
from gptdraw.gpt.model import build_model
from gptdraw.sequence import SequenceLayout
from gptdraw.gpt.train import train

CUDA_BLOCK = 512
"""The CUDA caching allocator hands out multiples of 512 bytes."""
GRADIENT_MARK = "memory-tracker:grad@"
OPTIMIZER_SCOPE = "Optimizer.step#"
"""torch.optim's record_function name for every optimizer step."""
FORWARD_BACKWARD = "forward_backward"
"""Phase: everything outside optimizer steps."""
OPTIMIZER_STEP = "optimizer_step"
"""Phase: inside `Optimizer.step`."""
GIB = 2**30


@dataclass
class MemoryPeak:
    """Live tensor bytes at the peak, and what they were."""

    peak_bytes: int
    """All live tensor bytes at the peak (parameters included)."""
    parameters: int
    """The model's parameters and buffers."""
    gradients: int
    """Parameter gradients alive at the peak."""
    optimizer_states: int
    """Optimizer state alive at the peak (AdamW: two moments per parameter, and step counts)."""
    activations: int
    """Everything else alive at the peak: saved activations, loss chunks, temporaries."""
    where: str
    """The operators running when the peak was reached, outermost first."""
    optimizer_steps_before: int
    """Optimizer steps completed before the peak (1: the peak is in the second step)."""

    def gib(self) -> dict[str, float]:
        """The peak and its parts in GiB."""
        parts = ("parameters", "gradients", "optimizer_states", "activations")
        return {"peak": self.peak_bytes / GIB, **{part: getattr(self, part) / GIB for part in parts}}


def highest(peaks: dict[str, MemoryPeak]) -> MemoryPeak:
    """The highest of several phases' peaks."""
    return max(peaks.values(), key=lambda peak: peak.peak_bytes)


def round_block(size: int, block: int = CUDA_BLOCK) -> int:
    """`size` rounded up to a whole number of allocator blocks."""
    return (size + block - 1) // block * block


def storage_bytes(tensors, block: int = CUDA_BLOCK) -> int:
    """Bytes of the distinct storages behind `tensors`, each rounded like an allocator block."""
    seen = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(round_block(size, block) for size in seen.values() if size)


class MemoryTracker:
    """Context manager measuring the peak of live CPU tensor memory inside it.

        tracker = MemoryTracker(model)
        with tracker:
            ...  # training steps with `model`
        print(tracker.result.peak_bytes / 2**30, tracker.result.where)

    `model`'s parameters and buffers count as live throughout; create them before entering.
    Other tensors that already exist on entry are not counted. `until_optimizer_steps`: stop
    looking for the peak at the end of that optimizer step (so saving a checkpoint afterwards
    does not count).
    """

    def __init__(self, model: torch.nn.Module | None = None, block: int = CUDA_BLOCK, until_optimizer_steps: int | None = None):
        self.model = model
        self.block = block
        self.until_optimizer_steps = until_optimizer_steps
        self.result: MemoryPeak | None = None
        """The peak."""
        self.peaks: dict[str, MemoryPeak] = {}
        """The peak outside optimizer steps (FORWARD_BACKWARD) and inside them (OPTIMIZER_STEP)."""
        self._profiler = None
        self._hooks = []

    def __enter__(self) -> "MemoryTracker":
        gc.collect()  # frees garbage now, not at a random moment inside the measurement
        if self.model is not None:
            for parameter in self.model.parameters():
                if parameter.requires_grad:
                    self._hooks.append(parameter.register_post_accumulate_grad_hook(_mark_gradient))
        self._profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
        self._profiler.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        self._profiler.__exit__(*exc)
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        if exc[0] is None:
            self.peaks = self._analyse()
            self.result = highest(self.peaks)
        return False

    def _analyse(self) -> dict[str, MemoryPeak]:
        events = []
        for root in self._profiler.profiler.kineto_results.experimental_event_tree():
            stack = [root]
            while stack:
                event = stack.pop()
                stack.extend(event.children)
                if event.tag == _EventType.Allocation or event.name.startswith((GRADIENT_MARK, OPTIMIZER_SCOPE)):
                    events.append(event)
        events.sort(key=lambda e: e.start_time_ns)

        # Optimizer steps, in time order; the peak is searched up to the end of the last one wanted.
        steps = sorted((e.start_time_ns, e.end_time_ns) for e in events if e.name.startswith(OPTIMIZER_SCOPE))
        horizon = float("inf")
        if self.until_optimizer_steps is not None and len(steps) >= self.until_optimizer_steps:
            horizon = steps[self.until_optimizer_steps - 1][1]

        # First pass: every allocation's lifetime and category.
        live: dict[int, dict] = {}  # address → the allocation living there now
        allocations = []
        for event in events:
            if event.start_time_ns > horizon:
                break
            if event.name.startswith(GRADIENT_MARK):
                address = int(event.name[len(GRADIENT_MARK):])
                if address in live:
                    live[address]["category"] = "gradients"
                continue
            if event.name.startswith(OPTIMIZER_SCOPE):
                continue
            fields = event.extra_fields
            if fields.device.type != "cpu":
                continue
            if fields.alloc_size > 0:
                record = {"size": round_block(fields.alloc_size, self.block), "start": event.start_time_ns, "end": float("inf"),
                          "category": "activations", "event": event}
                scope = _optimizer_scope(event)
                if scope is not None:
                    record["category"] = "optimizer_states"
                    record["scope_end"] = scope.end_time_ns
                live[fields.ptr] = record
                allocations.append(record)
            elif fields.ptr in live:  # frees of memory allocated before the tracker are not ours
                live.pop(fields.ptr)["end"] = event.start_time_ns
        for record in allocations:
            # Scratch of the optimizer step dies inside it; its state outlives it.
            if record["category"] == "optimizer_states" and record["end"] <= record["scope_end"]:
                record["category"] = "activations"

        # Second pass: replay allocations and frees in time order, keeping the totals at the peak
        # of each phase (inside optimizer steps, and outside them).
        parameters = 0
        if self.model is not None:
            parameters = storage_bytes(list(self.model.parameters()) + list(self.model.buffers()), self.block)
        changes = [(r["start"], r["size"], r) for r in allocations] + [(r["end"], -r["size"], r) for r in allocations if r["end"] != float("inf")]
        changes.sort(key=lambda c: (c[0], c[1]))  # at equal times, frees first
        step_starts = [start for start, _ in steps]
        totals = {"gradients": 0, "optimizer_states": 0, "activations": 0}
        best: dict[str, tuple[int, dict, dict]] = {}  # phase → (total, totals, record that reached it)
        for moment, delta, record in changes:
            totals[record["category"]] += delta
            if delta <= 0:
                continue
            index = bisect.bisect_right(step_starts, moment) - 1
            phase = OPTIMIZER_STEP if index >= 0 and moment <= steps[index][1] else FORWARD_BACKWARD
            current = sum(totals.values())
            if current > best.get(phase, (-1,))[0]:
                best[phase] = (current, dict(totals), record)
        peaks = {}
        for phase, (total, parts, record) in best.items():
            peaks[phase] = MemoryPeak(
                peak_bytes=parameters + total,
                parameters=parameters,
                gradients=parts["gradients"],
                optimizer_states=parts["optimizer_states"],
                activations=parts["activations"],
                where=_where(record["event"]),
                optimizer_steps_before=sum(1 for _, end in steps if end <= record["start"]),
            )
        if not peaks:  # nothing was allocated: the parameters are all there is
            peaks[FORWARD_BACKWARD] = MemoryPeak(parameters, parameters, 0, 0, 0, "", 0)
        return peaks


def _mark_gradient(parameter: torch.Tensor) -> None:
    # A zero-length profiler range named after the gradient's address: the analysis finds the
    # allocation living at that address and counts it as a gradient.
    with torch.profiler.record_function(f"{GRADIENT_MARK}{parameter.grad.untyped_storage().data_ptr()}"):
        pass


def _optimizer_scope(event):
    """The optimizer step a profiler event happened in, or None."""
    parent = event.parent
    while parent is not None:
        if parent.name.startswith(OPTIMIZER_SCOPE):
            return parent
        parent = parent.parent
    return None


def _where(event) -> str:
    """The names of the operators around a profiler event, outermost first."""
    names = []
    parent = event.parent
    while parent is not None:
        names.append(parent.name)
        parent = parent.parent
    return " > ".join(reversed(names))


def extrapolate_by_depth(points: dict[int, MemoryPeak], n_layer: int) -> MemoryPeak:
    """The peak of an `n_layer` model from measurements of the same model at two or more other
    depths: every part is fitted as a + b·depth by least squares (each block adds the same
    parameters, gradients, optimizer state and saved activations).

    Extrapolate each phase on its own and take the highest: a phase that is lower at small
    depths (the optimizer step, whose state grows faster with depth than the loss's
    temporaries) can be the peak of the deep model.
    """
    if len(points) < 2:
        raise ValueError(f"need measurements at two depths or more to extrapolate, got {sorted(points)}")
    depths = torch.tensor(sorted(points), dtype=torch.float64)
    design = torch.stack([torch.ones_like(depths), depths], dim=1)  # (k, 2)
    fields = ("parameters", "gradients", "optimizer_states", "activations")
    values = torch.tensor([[getattr(points[int(d)], f) for f in fields] for d in depths.tolist()], dtype=torch.float64)  # (k, 4)
    coefficients = torch.linalg.lstsq(design, values).solution  # (2, 4)
    predicted = (torch.tensor([1.0, float(n_layer)], dtype=torch.float64) @ coefficients).round().long().tolist()
    parts = dict(zip(fields, predicted))
    deepest = points[max(points)]
    return MemoryPeak(
        peak_bytes=sum(parts.values()),
        **parts,
        where=f"extrapolated from depths {sorted(points)}; at depth {max(points)}: {deepest.where}",
        optimizer_steps_before=deepest.optimizer_steps_before,
    )


def measure_training_memory(
    config: TrainConfig, train_data, caption_tokenizer, image_tokenizer, out_dir: str | Path, steps: int = 2
) -> dict[str, MemoryPeak]:
    """Peak CPU tensor memory of gptdraw's own trainer (`gptdraw.gpt.train.train`) over its first
    `steps` optimizer steps, in the forward and backward passes and in the optimizer steps
    (`highest` gives the peak); `out_dir` must be new (the trainer would resume from it).

    Two steps by default: the second is the first whose forward and backward passes run with
    the optimizer's state alive, as every later step does.
    """
    if any(Path(out_dir).glob("*")):
        raise ValueError(f"{out_dir} is not empty: the trainer would resume from it; use a new directory")
    layout = SequenceLayout.from_tokenizers(caption_tokenizer, image_tokenizer, train_data.grid)  # as the trainer does
    gpt = build_model(config.model, layout, seed=config.seed)
    short = replace(config, max_steps=steps, eval_every=0, sample_every=0, checkpoint_every=10**9)
    tracker = MemoryTracker(gpt, until_optimizer_steps=steps)
    with tracker:
        train(short, train_data, out_dir, caption_tokenizer, image_tokenizer, init_model=gpt, progress=False)
    return tracker.peaks
