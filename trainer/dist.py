"""torchrun's environment, read in one place: `setup() -> Dist`, `teardown()`, and small collectives;
and the one device chooser (`pick_device`) and precision (`autocast_for`) that pretraining,
evaluation and fine-tuning all use.

Under `torchrun` (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR set) with WORLD_SIZE > 1 this opens a
process group: NCCL on CUDA, gloo on CPU. A plain `python trainer/run.py` is a world of one with
no process group, and every helper here degrades to a no-op.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from bertprep.shards.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Dist:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    local_world_size: int = 1  # ranks on this machine

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {raw!r}") from None


def pick_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """The device `--device` names (auto: CUDA when there is one); under torchrun, this rank's GPU."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if not use_cuda:
        return torch.device("cpu")
    gpus, local_ranks = torch.cuda.device_count(), _env_int("LOCAL_WORLD_SIZE", 1)
    if local_ranks > gpus:  # two ranks on one GPU end in NCCL's "Duplicate GPU detected"
        raise ConfigError(f"torchrun started {local_ranks} processes on this machine but it has {gpus} GPU(s); "
                          f"give --nproc-per-node {gpus} or fewer")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", torch.cuda.current_device())


def autocast_for(precision: str, device: torch.device):
    """A context factory for the forward pass: bf16 autocast (`--precision bf16`, or `auto` on
    CUDA), else no autocast (fp32)."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def setup(device: str = "auto", timeout_s: float = 600.0) -> Dist:
    """Join the process group torchrun describes (if any) and pick this rank's device."""
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = pick_device(device, local_rank)
    use_cuda = dev.type == "cuda"
    if world > 1 and not tdist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        kwargs = {"device_id": dev} if use_cuda else {}
        tdist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return Dist(rank=rank, local_rank=local_rank, world_size=world, device=dev,
                local_world_size=_env_int("LOCAL_WORLD_SIZE", 1))


def teardown() -> None:
    """Leave the process group; safe to call on every path, also when none was opened."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.distributed:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.distributed:
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return t


def all_gather_tensors(t: torch.Tensor, d: Dist) -> list[torch.Tensor]:
    """Every rank's copy of a same-shaped tensor (on CPU), in rank order."""
    if not d.distributed:
        return [t.cpu()]
    src = t.to(d.device)
    out = [torch.empty_like(src) for _ in range(d.world_size)]
    tdist.all_gather(out, src)
    return [o.cpu() for o in out]


def broadcast_flag(value: bool, d: Dist) -> bool:
    """Rank 0's boolean, on every rank."""
    if not d.distributed:
        return value
    t = torch.tensor([int(value)], device=d.device)
    tdist.broadcast(t, src=0)
    return bool(t.item())


def barrier(d: Dist) -> None:
    if d.distributed:
        tdist.barrier()


def no_sync(model: torch.nn.Module, skip: bool):
    """DDP's no_sync() for micro-steps whose gradients are not yet to be all-reduced."""
    if skip and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()
