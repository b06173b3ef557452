"""Where work runs and in which precision: the one place that turns "auto" into a choice; and
whether this torch may unpickle a checkpoint at all.

Training, VQ training, drawing and decoding all ask the same question — does this device run
bf16 natively? — and answer it here, so that they agree.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The dtype names the CLI and configs accept, besides "auto"."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto" (or None) → the GPU when there is one, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bf16 natively: a CUDA GPU with bf16, or a CPU with AMX or
    AVX512-BF16 (there bf16 matmuls and convolutions run about twice as fast as fp32; on other
    CPUs bf16 is emulated and slower)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to tell, so no
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_mixed_precision(choice: str, device: torch.device | None = None) -> str:
    """A training precision as Accelerate names it: "auto" → "bf16" where the device has it
    natively, "fp16" on a GPU without bf16, else "no" (fp32)."""
    if choice != "auto":
        return choice
    device = resolve_device(device)
    if native_bf16(device):
        return "bf16"
    return "fp16" if device.type == "cuda" else "no"


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The dtype of a model's weights for drawing: "auto" → bfloat16 on a GPU that has it
    (drawing is memory- and launch-bound there), else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" and native_bf16(device) else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


SAFE_TORCH = (2, 10)
"""The oldest torch whose weights-only unpickler has no known hole: 2.6 fixed code execution
(CVE-2025-32434), 2.10 a memory corruption (CVE-2026-24747)."""


def check_torch_is_safe(version: str | None = None) -> None:
    """Refuses to unpickle anything on a torch whose weights-only loader is known to be unsafe."""
    version = version or torch.__version__
    numbers = tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:2])
    if numbers < SAFE_TORCH:
        # A ValueError, so that the CLI says it in one line, like any other input it refuses.
        raise ValueError(
            f"torch {version} can run code from a crafted checkpoint even in weights-only mode; "
            f"loading pickled checkpoints needs torch >= {SAFE_TORCH[0]}.{SAFE_TORCH[1]} (pip install -U torch)"
        )
