"""The optimizer side of a training step, for pretraining and fine-tuning alike: AdamW with BERT's
weight-decay groups (`adamw`), the learning-rate schedule (linear warm-up, then linear or cosine
decay to a floor at the last step: `step_schedule`; or, `--schedule time`, when the `--max-time`
budget runs out), and the update itself (`optimizer_step`: clip, step, clear)."""

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
    """The pretraining run's AdamW (--lr, --beta1, --beta2, --eps, --weight-decay)."""
    return adamw(model, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay)


def adamw(model: nn.Module, *, lr: float, betas: tuple[float, float], eps: float,
          weight_decay: float) -> torch.optim.AdamW:
    """AdamW over `param_groups`, fused (one kernel over all tensors) on CUDA and, where this torch
    has it, on CPU."""
    kwargs = dict(lr=lr, betas=betas, eps=eps)
    try:
        return torch.optim.AdamW(param_groups(model, weight_decay), fused=True, **kwargs)
    except (RuntimeError, ValueError):  # torch < 2.4 has no fused CPU AdamW
        return torch.optim.AdamW(param_groups(model, weight_decay), **kwargs)


def optimizer_step(optimizer: torch.optim.Optimizer, parameters, clip: float) -> None:
    """One update from the summed gradients: clip their global norm to `clip` (0: no clipping),
    step, clear them."""
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(parameters, clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def lr_factor(step: int, *, warmup: int, max_steps: int, decay: str, min_ratio: float) -> float:
    """Multiplier of --lr for the update that follows `step` completed updates."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, max_steps - warmup)
    return decayed(min(1.0, (step - warmup) / span), decay, min_ratio)


def decayed(progress: float, decay: str, min_ratio: float) -> float:
    """The decay's multiplier `progress` (0 to 1) of the way from the peak to `min_ratio`."""
    if decay == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0 - (1 - min_ratio) * progress


def budget_lr_factor(step: int, fraction: float, *, warmup: int, decay: str, min_ratio: float) -> float:
    """Multiplier of --lr on a time budget: the decay follows `fraction`, the share of the budget
    used so far, and ends at `min_ratio` as the budget runs out; warm-up (in steps, as ever) ramps
    up to that curve. Why time and not steps: a run that stops on --max-time with a step horizon
    guessed from a measured rate either stops before its decay ends or is cut off before the low
    learning rates where most of a short run's accuracy is gained; the clock knows when it ends."""
    ramp = (step + 1) / warmup if step < warmup else 1.0
    return min(ramp, decayed(min(1.0, max(0.0, fraction)), decay, min_ratio))


class BudgetProgress:
    """The share of the --max-time budget used, set by the loop before each scheduler step (the same
    value on every rank: the loop agrees on the clock)."""

    def __init__(self):
        self.fraction = 0.0


def build_scheduler(optimizer, cfg: TrainConfig, start: int = 0,
                    progress: BudgetProgress | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of a run whose step counter stood at `start` when the schedule began (a new
    phase's first step, `--init-from`): warm-up counts from there, the decay ends at --max-steps,
    or with `--schedule time` as `progress` (the loop's clock against --max-time) reaches 1."""
    min_ratio = cfg.min_lr / cfg.lr
    if cfg.schedule == "steps":
        return step_schedule(optimizer, warmup=cfg.warmup_steps, max_steps=cfg.max_steps - start, decay=cfg.decay,
                             min_ratio=min_ratio)

    def factor(step: int) -> float:  # `step`: updates since the schedule began
        return budget_lr_factor(step, progress.fraction if progress else 0.0, warmup=cfg.warmup_steps,
                                decay=cfg.decay, min_ratio=min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def step_schedule(optimizer, *, warmup: int, max_steps: int, decay: str = "linear",
                  min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` updates, then `decay` to `min_ratio` x the peak at `max_steps`
    updates (counted from the schedule's first)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup=warmup, max_steps=max_steps, decay=decay, min_ratio=min_ratio))
