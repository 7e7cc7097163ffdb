"""AdamW with BERT's weight-decay groups, and the learning-rate schedule (linear warm-up, then
linear or cosine decay to `--min-lr` at `--max-steps`)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from bertprep.trainer.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay on matrices and embeddings; none on biases and LayerNorm weights (all 1-d tensors)."""
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():  # parameters() yields a tied tensor once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused (one kernel over all tensors) on CUDA and, where this torch has it, on CPU."""
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    try:
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), fused=True, **kwargs)
    except (RuntimeError, ValueError):  # torch < 2.4 has no fused CPU AdamW
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), **kwargs)


def lr_factor(step: int, *, warmup: int, max_steps: int, decay: str, min_ratio: float) -> float:
    """Multiplier of --lr for the update that follows `step` completed updates."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, max_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    if decay == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0 - (1 - min_ratio) * progress


def build_scheduler(optimizer, cfg: TrainConfig, start: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of a run whose step counter stood at `start` when the schedule began (a new
    phase's first step, `--init-from`): warm-up counts from there, the decay ends at --max-steps."""
    min_ratio = cfg.min_lr / cfg.lr

    def factor(step: int) -> float:  # `step`: updates since the schedule began
        return lr_factor(step, warmup=cfg.warmup_steps, max_steps=cfg.max_steps - start, decay=cfg.decay,
                         min_ratio=min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
