"""The optimisers a run can train with: AdamW (the reference), Adafactor, or Muon with AdamW.

Muon orthogonalises each update of a weight matrix; it applies to the matrices inside the
transformer blocks only. Embeddings, the head, biases and norms stay with AdamW, as in the
modded-nanogpt speedrun that made Muon known. `BatchedMuon` takes torch.optim.Muon's steps (the
same formulas, defaults and state), but orthogonalises all matrices of one shape together, in a
few batched matmuls rather than a loop of small ones per matrix. Like torch's, it orthogonalises in
bf16, except where bf16 matmuls are emulated (a CPU without AVX512-BF16 or AMX): there bf16 took half
of the emoji quickstart's training step on an Intel Xeon, and fp32 is both faster and more exact.
"""

from __future__ import annotations

import math

import torch

from gptdraw.gpt.config import TrainConfig
from gptdraw.runtime import native_bf16

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""The quintic Newton–Schulz coefficients of torch.optim.Muon (and Keller Jordan's Muon)."""


def newton_schulz(updates: torch.Tensor, coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """(k, m, n) matrices → roughly their orthogonal factors (U·Vᵀ of each), computed in `dtype`; in
    bf16 exactly as torch.optim.Muon's _zeropower_via_newtonschulz computes each one."""
    a, b, c = coefficients
    x = updates.to(dtype)
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT  # (k, n, m): the Gram matrix of the shorter side is the smaller one
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # (k, s, l), each of Frobenius norm 1
    for _ in range(steps):
        gram = x @ x.mT  # (k, s, s)
        # b·G + c·G² then a·X + (…)·X, each as one fused multiply-add, as torch's addmm calls are
        # (rounding to bf16 once per call, not once per term).
        update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # (k, s, s)
        x = torch.baddbmm(x, update, x, beta=a)
    return x.mT if tall else x


class BatchedMuon(torch.optim.Optimizer):
    """torch.optim.Muon's update, batched over matrices of the same shape.

    Per matrix: momentum buffer B ← lerp(B, g, 1 − μ); Nesterov update g·(1 − μ) + μ·B
    (as `g.lerp(B, μ)`); its Newton–Schulz orthogonalisation; decoupled weight decay; a step
    scaled by `adjust_lr_fn` ("match_rms_adamw": 0.2·√max(A, B), "original": √max(1, A/B)).
    The state is torch's ("momentum_buffer" per matrix), so checkpoints of either load in both.
    compile: torch.compile the orthogonalisation (worth it on a GPU). ns_dtype: the orthogonalisation's
    dtype (bf16, torch's; fp32 where bf16 is not native).
    """

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                 eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = None, compile: bool = False,
                 ns_dtype: torch.dtype = torch.bfloat16):
        if adjust_lr_fn not in (None, "original", "match_rms_adamw"):
            raise ValueError(f"unknown adjust_lr_fn {adjust_lr_fn!r}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if any(p.ndim != 2 for p in group["params"]):
                raise ValueError("Muon only takes 2-D matrices")
        self.orthogonalise = torch.compile(newton_schulz, dynamic=False) if compile else newton_schulz
        self.ns_dtype = ns_dtype

    @staticmethod
    def step_scale(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
        rows, columns = shape
        if adjust_lr_fn == "match_rms_adamw":
            return lr * 0.2 * math.sqrt(max(rows, columns))
        return lr * math.sqrt(max(1, rows / columns))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            by_shape: dict[torch.Size, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(p.shape, []).append(p)
            for params in by_shape.values():
                self.step_matrices(params, group)
        return None

    def step_matrices(self, params: list[torch.Tensor], group: dict) -> None:
        """One update of same-shaped matrices, as one batch."""
        grads = [p.grad for p in params]
        buffers = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
            buffers.append(state["momentum_buffer"])
        momentum = group["momentum"]
        torch._foreach_lerp_(buffers, grads, 1 - momentum)
        if group["nesterov"]:
            updates = torch.stack([g.lerp(b, momentum) for g, b in zip(grads, buffers)])  # (k, m, n)
        else:
            updates = torch.stack(buffers)  # (k, m, n)
        orthogonal = self.orthogonalise(updates, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                        self.ns_dtype)
        lr = group["lr"]
        torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        torch._foreach_add_(params, list(orthogonal.unbind(0)), alpha=-self.step_scale(lr, group["adjust_lr_fn"], params[0].shape))


class MuonAdamW(torch.optim.Optimizer):
    """BatchedMuon on `muon_groups` and torch.optim.AdamW on `adamw_groups`, as one optimiser.

    Both inner optimisers work on this optimiser's own group dicts and state, so the schedule
    (which sets each group's "lr"), `state_dict()` and `load_state_dict()` treat it as any other
    torch optimiser, and a checkpoint resumes it exactly. Muon's step size is scaled to match
    AdamW's update size ("match_rms_adamw"), so that one learning rate serves both.
    """

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], lr: float,
                 betas: tuple[float, float], momentum: float = 0.95, fused: bool = False,
                 ns_dtype: torch.dtype = torch.bfloat16):
        """fused: the AdamW part in one fused kernel and Muon's orthogonalisation compiled (on a GPU);
        ns_dtype: the dtype Muon orthogonalises in (BatchedMuon)."""
        self.muon = BatchedMuon(muon_groups, lr=lr, momentum=momentum, adjust_lr_fn="match_rms_adamw", compile=fused,
                                ns_dtype=ns_dtype)
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, fused=fused or None)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, defaults={})
        self._share_groups_and_state()

    def _share_groups_and_state(self) -> None:
        count = len(self.muon.param_groups)
        self.muon.param_groups, self.adamw.param_groups = self.param_groups[:count], self.param_groups[count:]
        self.muon.state = self.adamw.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        # torch rebuilds the group dicts and the state on load: point the inner optimisers at them.
        super().load_state_dict(state_dict)
        self._share_groups_and_state()

    @torch.no_grad()
    def step(self, closure=None):
        self.muon.step()
        self.adamw.step()


def _is_block_matrix(name: str, param: torch.Tensor) -> bool:
    """A 2-D weight inside a transformer block (GPT-2 names them transformer.h.N.…)."""
    return param.ndim == 2 and ".h." in f".{name}"


def _is_embedding(name: str) -> bool:
    """The token or position embedding (GPT-2 names them transformer.wte and transformer.wpe)."""
    return name.removeprefix("gpt.").removeprefix("transformer.").split(".")[0] in ("wte", "wpe")


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser `config.optimizer` names, with weight decay on matrices only.

    With `config.embedding_lr_ratio` ≠ 1 the embeddings are a group of their own whose "lr_ratio"
    the schedule multiplies their learning rate by (the group, and so the ratio, is in every
    checkpoint); at 1 the groups are those of earlier releases, whose checkpoints still resume.
    AdamW is fused where the device supports it; Muon orthogonalises in bf16 where the device runs it
    natively, else in fp32.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    device = next(model.parameters()).device
    fused = device.type == "cuda"
    embeddings = []
    if config.embedding_lr_ratio != 1.0:
        embeddings = [p for name, p in named if _is_embedding(name)]
        named = [(name, p) for name, p in named if not _is_embedding(name)]
    embedding_groups = [{"params": embeddings, "weight_decay": config.weight_decay, "lr_ratio": config.embedding_lr_ratio,
                         "lr": config.lr * config.embedding_lr_ratio}] if embeddings else []
    matrices = [p for _, p in named if p.ndim >= 2]
    vectors = [p for _, p in named if p.ndim < 2]
    if config.optimizer == "muon":
        block = [p for name, p in named if _is_block_matrix(name, p)]
        if not block:
            raise ValueError("optimizer muon: the model has no transformer-block matrices to give it")
        other = [p for name, p in named if p.ndim >= 2 and not _is_block_matrix(name, p)]
        return MuonAdamW(
            [{"params": block, "weight_decay": config.weight_decay}],
            [{"params": other, "weight_decay": config.weight_decay}, {"params": vectors, "weight_decay": 0.0},
             *embedding_groups],
            lr=config.lr, betas=config.betas, fused=fused,
            ns_dtype=torch.bfloat16 if native_bf16(device) else torch.float32,
        )
    groups = [
        {"params": matrices, "weight_decay": config.weight_decay},
        {"params": vectors, "weight_decay": 0.0},
        *embedding_groups,
    ]
    if config.optimizer == "adafactor":
        return torch.optim.Adafactor(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=fused or None)
