"""The optimisers a run can train with: AdamW (the reference), Adafactor, or Muon with AdamW.

Muon (torch.optim.Muon) orthogonalises each update of a weight matrix; it applies to the
matrices inside the transformer blocks only. Embeddings, the tied head, biases and norms stay
with AdamW, as in the modded-nanogpt speedrun that made Muon known.
"""

from __future__ import annotations

import torch

from gptdraw.gpt.config import TrainConfig


class MuonAdamW(torch.optim.Optimizer):
    """torch.optim.Muon on `muon_groups` and torch.optim.AdamW on `adamw_groups`, as one optimiser.

    Both inner optimisers work on this optimiser's own group dicts and state, so the schedule
    (which sets each group's "lr"), `state_dict()` and `load_state_dict()` treat it as any other
    torch optimiser, and a checkpoint resumes it exactly. Muon's step size is scaled to match
    AdamW's update size ("match_rms_adamw"), so that one learning rate serves both.
    """

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], lr: float,
                 betas: tuple[float, float], momentum: float = 0.95):
        self.muon = torch.optim.Muon(muon_groups, lr=lr, momentum=momentum, adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas)
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


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser `config.optimizer` names, with weight decay on matrices only.

    AdamW is fused where the device supports it.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    matrices = [p for _, p in named if p.ndim >= 2]
    vectors = [p for _, p in named if p.ndim < 2]
    if config.optimizer == "muon":
        block = [p for name, p in named if _is_block_matrix(name, p)]
        if not block:
            raise ValueError("optimizer muon: the model has no transformer-block matrices to give it")
        other = [p for name, p in named if p.ndim >= 2 and not _is_block_matrix(name, p)]
        return MuonAdamW(
            [{"params": block, "weight_decay": config.weight_decay}],
            [{"params": other, "weight_decay": config.weight_decay}, {"params": vectors, "weight_decay": 0.0}],
            lr=config.lr, betas=config.betas,
        )
    groups = [
        {"params": matrices, "weight_decay": config.weight_decay},
        {"params": vectors, "weight_decay": 0.0},
    ]
    if config.optimizer == "adafactor":
        return torch.optim.Adafactor(groups, lr=config.lr)
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=fused or None)
