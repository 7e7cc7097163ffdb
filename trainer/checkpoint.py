"""Checkpoints: written atomically, the newest K kept, loaded with `weights_only=True`.

A checkpoint is `<run>/checkpoints/step_00001234.pt`, a `torch.save`d dict of tensors and plain
values only (so loading a stranger's file can never run code):

    format, version     "bertprep-checkpoint", 1
    step                optimizer updates done
    model               the encoder's state dict (our names; `trainer/hf.py` maps them to HF's)
    model_config        ModelConfig as a dict
    data                the shards' settings the model was trained on (vocab, length, special ids)
    optimizer, scheduler
    loader              the loader position (stream.state_dict)
    rng                 {"torch": [per-rank CPU generator states], "cuda": [...] or []}
    config              TrainConfig as a dict (for the record; flags of the resuming run win)
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from bertprep.shards.atomic import atomic_write
from bertprep.shards.errors import InputError, ShardFormatError

FORMAT = "bertprep-checkpoint"
VERSION = 1
NAME_RE = re.compile(r"^step_(\d{8})\.pt$")


def checkpoint_dir(run_dir: Path | str) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: Path | str, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: Path | str) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary files never match the name)."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := NAME_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def newest(run_dir: Path | str) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save(run_dir: Path | str, step: int, payload: dict, keep: int) -> Path:
    """Write step `step` atomically, then delete all but the newest `keep` checkpoints."""
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        torch.save({"format": FORMAT, "version": VERSION, "step": step, **payload}, f)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load(path: Path | str) -> dict:
    """Read a checkpoint without executing anything in it; refuses other formats and versions."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused or truncated file: both are bad input, not bugs
        raise ShardFormatError(f"{path}: not a loadable checkpoint ({e.__class__.__name__}: {str(e)[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ShardFormatError(f"{path}: not a bertprep checkpoint")
    if ckpt.get("version") != VERSION:
        raise ShardFormatError(f"{path}: checkpoint version {ckpt.get('version')}, this trainer reads {VERSION}")
    return ckpt


def check_data_matches(ckpt_data: dict, shard_data: dict, path: Path | str) -> None:
    """Refuse shards whose vocabulary, length or special ids differ from the checkpoint's."""
    for key in ("vocab_size", "max_len", "special_ids", "nsp"):
        if ckpt_data.get(key) != shard_data.get(key):
            raise ShardFormatError(
                f"{path}: the checkpoint was trained on shards with {key}={ckpt_data.get(key)!r} but these shards have "
                f"{key}={shard_data.get(key)!r}; train on shards made with the same tokenizer and --max-len"
            )
