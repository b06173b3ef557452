"""Where work runs and in which precision: the one place that turns "auto" into a choice; and
whether this torch may unpickle a checkpoint at all.

Training, VQ training, pre-encoding, drawing and decoding all ask the same question — does this
device run bf16 natively? — and answer it here, so that they agree. Every precision setting in
gptdraw speaks one vocabulary: auto | fp32 | bf16 | fp16 (the long names float32, bfloat16,
float16 and Accelerate's "no" are accepted as aliases).

torch is imported inside the functions, so that the torch-free configs can check a precision
name and `gptdraw --help` stays fast.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Literal

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
"""The one precision vocabulary of configs and flags."""
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
PRECISION_ALIASES = {"float32": "fp32", "no": "fp32", "bfloat16": "bf16", "float16": "fp16"}
"""Other names for the same precisions: torch's long names, and Accelerate's "no" for fp32."""


def canonical_precision(name: str) -> str:
    """A precision name in the one vocabulary (aliases mapped); anything else is a one-line error."""
    name = PRECISION_ALIASES.get(name, name) if isinstance(name, str) else name
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)} "
                         f"(or {', '.join(PRECISION_ALIASES)})")
    return name


def _device_count(device_type: str) -> int:
    """How many devices of `device_type` this machine has (0: none, or a torch built without them)."""
    import torch

    if device_type == "cpu":
        return 1
    if device_type == "mps":
        return int(torch.backends.mps.is_available())
    backend = getattr(torch, device_type, None)  # torch.cuda, torch.xpu
    return backend.device_count() if backend is not None and backend.is_available() else 0


DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda", "mps", "xpu")
"""The device types gptdraw runs on; others (meta holds no data, the rest are untried) are refused."""


def resolve_device(device: "str | torch.device | None", *, flag: str = "--device") -> "torch.device":
    """"auto" (or None) → the GPU when there is one, else the CPU. Any other name is checked against
    this machine now, so that a device it lacks is one line naming `flag` (a ValueError), not a
    traceback from deep inside the first tensor moved there."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{flag} {device!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if resolved.type not in DEVICE_TYPES:
        raise ValueError(f"{flag} {device!r}: gptdraw runs on {', '.join(DEVICE_TYPES)} or auto, not {resolved.type}")
    count = _device_count(resolved.type)
    if count == 0:
        raise ValueError(f"{flag} {device!r}: this machine (torch {torch.__version__}) has no {resolved.type} device; "
                         "use cpu or auto")
    if resolved.index is not None and resolved.type != "cpu" and resolved.index >= count:
        raise ValueError(f"{flag} {device!r}: this machine has {count} {resolved.type} device(s), numbered from 0")
    return resolved


def native_bf16(device: "torch.device") -> bool:
    """Whether `device` computes in bf16 natively: a CUDA GPU with bf16, or a CPU with AMX or
    AVX512-BF16 (there bf16 matmuls and convolutions run about twice as fast as fp32; on other
    CPUs bf16 is emulated and slower)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to tell, so no
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(choice: str, device: "torch.device", *, purpose: str, bf16_on_cpu: bool = True,
                      fp16_on_gpu: bool = False) -> str:
    """The precision to run `purpose` in ("fp32", "bf16" or "fp16"), logged once with its reason.

    "auto" picks bf16 where `device` runs it natively (on a CPU only when `bf16_on_cpu`: a job
    whose output must not change with the CPU, such as pre-encoded codes, says False); on a GPU
    without bf16, fp16 when `fp16_on_gpu` (a job with a loss scaler) and fp32 otherwise.
    """
    choice = canonical_precision(choice)
    if choice != "auto":
        reason = "as asked"
    elif native_bf16(device) and (device.type != "cpu" or bf16_on_cpu):
        choice, reason = "bf16", f"auto: {device.type} runs bf16 natively"
    elif device.type == "cuda" and fp16_on_gpu:
        choice, reason = "fp16", "auto: this GPU has no bf16"
    else:
        choice, reason = "fp32", f"auto: no native bf16 for this job on {device.type}"
    logger.info("%s in %s (%s)", purpose, choice, reason)
    return choice


def torch_dtype(precision: str) -> "torch.dtype":
    """fp32 | bf16 | fp16 (or an alias) → the torch dtype."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[canonical_precision(precision)]


def accelerate_precision(precision: str) -> str:
    """fp32 | bf16 | fp16 → Accelerate's mixed_precision name ("no" for fp32)."""
    precision = canonical_precision(precision)
    return "no" if precision == "fp32" else precision


@contextlib.contextmanager
def evaluation_mode(*modules: "torch.nn.Module") -> Iterator[None]:
    """Runs the block with the modules in eval mode (no dropout), then gives each its own mode back."""
    modes = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, training in zip(modules, modes):
            module.train(training)


SAFE_TORCH = (2, 10)
"""The oldest torch whose weights-only unpickler has no known hole: 2.6 fixed code execution
(CVE-2025-32434), 2.10 a memory corruption (CVE-2026-24747)."""


def check_torch_is_safe(version: str | None = None) -> None:
    """Refuses to unpickle anything on a torch whose weights-only loader is known to be unsafe."""
    if version is None:
        import torch

        version = torch.__version__
    numbers = tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:2])
    if numbers < SAFE_TORCH:
        # A ValueError, so that the CLI says it in one line, like any other input it refuses.
        raise ValueError(
            f"torch {version} can run code from a crafted checkpoint even in weights-only mode; "
            f"loading pickled checkpoints needs torch >= {SAFE_TORCH[0]}.{SAFE_TORCH[1]} (pip install -U torch)"
        )
