"""The optimizer side of a training step, for pretraining and fine-tuning alike: AdamW with BERT's
weight-decay groups (`adamw`), the learning-rate schedule (linear warm-up, then linear or cosine
decay to a floor at the last step, optionally after a stable stretch at the peak (warm-up / stable /
decay, as ModernBERT trains): `step_schedule`; or, `--schedule time`, when the `--max-time` budget
runs out), the update itself (`optimizer_step`: clip, step, clear), and the rates a resumed
or continued run applies over the state it loads (`apply_rates`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from bertprep.shards.errors import ConfigError
from bertprep.shards.options import check, option

if TYPE_CHECKING:
    import torch
    import torch.nn as nn
# torch is imported where an optimizer is built, not here: trainer/config.py composes OptimConfig,
# and `bertprep recipe` reads that without torch.


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """optim: AdamW and the learning-rate schedule (defaults: the BERT paper's pretraining)"""

    lr: float = option(1e-4, above=0, at_most=1.0, help="peak learning rate")
    min_lr: float = option(0.0, at_least=0, at_most=1.0, help="learning rate at --max-steps")
    warmup_steps: int = option(10_000, at_least=0, at_most=10**9, help="steps of linear warm-up from 0 to --lr")
    decay: Literal["linear", "cosine", "1-sqrt"] = option("linear", help=(
        "decay after warm-up (and after --stable): linear, cosine, or 1-sqrt (1 - sqrt(progress), the cool-down of "
        "warm-up/stable/decay schedules)"))
    stable: float = option(0.0, at_least=0, below=1, help=(
        "share of the steps (or time) after warm-up held at the peak --lr before the decay starts: a warm-up / "
        "stable / decay schedule (ModernBERT; 0: decay right after warm-up, as BERT)"))
    schedule: Literal["steps", "time"] = option("steps", help=(
        "steps: the decay ends at --max-steps; time: it ends as the --max-time budget runs out (the rate follows "
        "the clock, so the run ends annealed whatever its speed)"))
    weight_decay: float = option(0.01, at_least=0, at_most=1.0, help="AdamW weight decay (not on biases and LayerNorm)")
    beta1: float = option(0.9, at_least=0, below=1, help="AdamW beta1")
    beta2: float = option(0.999, at_least=0, below=1, help="AdamW beta2")
    eps: float = option(1e-6, above=0, at_most=1.0, help="AdamW epsilon")
    clip: float = option(1.0, at_least=0, help="gradient-norm clipping (0: off)")

    def __post_init__(self):
        # Bounds on the fields (shards/options.py). Why an AdamW rate, decay and eps of at most 1:
        # each is a share of the weights moved per step, and above 1 a step overshoots the weights.
        check(self)
        if not self.min_lr <= self.lr:
            raise ConfigError(f"--min-lr must be in [0, --lr={self.lr}], got {self.min_lr}")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay on matrices and embeddings; none on biases and LayerNorm weights (all 1-d tensors)."""
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():  # parameters() yields a tied tensor once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """The pretraining run's AdamW (--lr, --beta1, --beta2, --eps, --weight-decay)."""
    return adamw(model, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay)


def adamw(model: nn.Module, *, lr: float, betas: tuple[float, float], eps: float,
          weight_decay: float) -> torch.optim.AdamW:
    """AdamW over `param_groups`, fused (one kernel over all tensors) on CUDA and, where this torch
    has it, on CPU."""
    import torch

    kwargs = dict(lr=lr, betas=betas, eps=eps)
    try:
        return torch.optim.AdamW(param_groups(model, weight_decay), fused=True, **kwargs)
    except (RuntimeError, ValueError):  # torch < 2.4 has no fused CPU AdamW
        return torch.optim.AdamW(param_groups(model, weight_decay), **kwargs)


def optimizer_step(optimizer: torch.optim.Optimizer, parameters, clip: float) -> None:
    """One update from the summed gradients: clip their global norm to `clip` (0: no clipping),
    step, clear them."""
    import torch

    if clip > 0:
        torch.nn.utils.clip_grad_norm_(parameters, clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def lr_factor(step: int, *, warmup: int, max_steps: int, decay: str, min_ratio: float, stable: float = 0.0) -> float:
    """Multiplier of --lr for the update that follows `step` completed updates."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, max_steps - warmup)
    return decayed(min(1.0, (step - warmup) / span), decay, min_ratio, stable)


def decayed(progress: float, decay: str, min_ratio: float, stable: float = 0.0) -> float:
    """The multiplier `progress` (0 to 1) of the way from the end of warm-up to the last step: the
    peak for the first `stable` of it, then `decay` from the peak to `min_ratio`."""
    progress = max(0.0, progress - stable) / (1.0 - stable)
    if decay == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if decay == "1-sqrt":
        return min_ratio + (1 - min_ratio) * (1 - math.sqrt(progress))
    return 1.0 - (1 - min_ratio) * progress


def budget_lr_factor(step: int, fraction: float, *, warmup: int, decay: str, min_ratio: float,
                     stable: float = 0.0) -> float:
    """Multiplier of --lr on a time budget: the decay follows `fraction`, the share of the budget
    used so far, and ends at `min_ratio` as the budget runs out; warm-up (in steps, as ever) ramps
    up to that curve. Why time and not steps: a run that stops on --max-time with a step horizon
    guessed from a measured rate either stops before its decay ends or is cut off before the low
    learning rates where most of a short run's accuracy is gained; the clock knows when it ends."""
    ramp = (step + 1) / warmup if step < warmup else 1.0
    return min(ramp, decayed(min(1.0, max(0.0, fraction)), decay, min_ratio, stable))


class BudgetProgress:
    """The share of the --max-time budget used, set by the loop before each scheduler step (the same
    value on every rank: the loop agrees on the clock)."""

    def __init__(self):
        self.fraction = 0.0


def build_scheduler(optimizer, cfg: OptimConfig, max_steps: int, start: int = 0,
                    progress: BudgetProgress | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of a run whose step counter stood at `start` when the schedule began (a new
    phase's first step, `--init-from`): warm-up counts from there, the decay ends at `max_steps`
    (--max-steps), or with `--schedule time` as `progress` (the loop's clock against --max-time)
    reaches 1."""
    import torch

    min_ratio = cfg.min_lr / cfg.lr
    if cfg.schedule == "steps":
        return step_schedule(optimizer, warmup=cfg.warmup_steps, max_steps=max_steps - start, decay=cfg.decay,
                             min_ratio=min_ratio, stable=cfg.stable)

    def factor(step: int) -> float:  # `step`: updates since the schedule began
        return budget_lr_factor(step, progress.fraction if progress else 0.0, warmup=cfg.warmup_steps,
                                decay=cfg.decay, min_ratio=min_ratio, stable=cfg.stable)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def step_schedule(optimizer, *, warmup: int, max_steps: int, decay: str = "linear",
                  min_ratio: float = 0.0, stable: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` updates, the peak for `stable` of the rest, then `decay` to
    `min_ratio` x the peak at `max_steps` updates (counted from the schedule's first)."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, warmup=warmup, max_steps=max_steps, decay=decay, min_ratio=min_ratio, stable=stable))


def apply_rates(opt: torch.optim.AdamW, sched: torch.optim.lr_scheduler.LambdaLR, cfg: OptimConfig,
                rescale: bool = False) -> None:
    """After loading an optimizer's and a schedule's state (a resume, --keep-optimizer), this run's
    flags set the rates: the loaded state would bring back the peak --lr, betas, eps and weight decay
    of the run that saved it. The moments and the schedule's position stay as loaded. The current
    rate is this run's schedule at the loaded position, or with `rescale` the loaded rate rescaled
    to the new peak (a resume on --schedule time, whose factor follows a clock the schedule cannot
    see before the next step: an unchanged --lr then keeps exactly the rate the run had)."""
    for group, old_peak, factor, decay in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas,
                                              (cfg.weight_decay, 0.0)):
        if not rescale:
            lr = cfg.lr * factor(sched.last_epoch)
        else:
            lr = group["lr"] if old_peak == cfg.lr else group["lr"] / old_peak * cfg.lr
        group.update(initial_lr=cfg.lr, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=decay)
    sched.base_lrs = [cfg.lr for _ in opt.param_groups]
    sched._last_lr = [g["lr"] for g in opt.param_groups]
