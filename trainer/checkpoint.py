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
    phase               (since --init-from) index, name, start_step, schedule_start and source of the
                        phase this run is; absent in older checkpoints: phase 1 from step 0
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch

from bertprep.shards.atomic import atomic_write, remove_stale_temps
from bertprep.shards.errors import InputError, ShardFormatError

FORMAT = "bertprep-checkpoint"
VERSION = 1
NAME_RE = re.compile(r"^step_(\d{8})\.pt$")
# What save() writes besides format/version: a file lacking one is not a checkpoint of ours.
PAYLOAD = ("step", "model", "model_config", "data", "optimizer", "scheduler", "loader", "rng", "config")


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


def remove_partial(run_dir: Path | str) -> int:
    """Delete the temporary files that killed writes left in a run directory (a checkpoint,
    config.json, a rewritten metrics.jsonl); returns how many."""
    return sum(remove_stale_temps(d) for d in (Path(run_dir), checkpoint_dir(run_dir)) if d.is_dir())


def read_torch_file(path: Path | str, advice: str = ""):
    """`torch.load(weights_only=True)`: tensors and plain values, never code. A file that holds
    anything else (a pickled object: a payload) or that was cut short is one ShardFormatError line
    (`advice` is appended to the second)."""
    try:
        with warnings.catch_warnings():  # torch warns about unusual pickle protocols: a second stderr line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # the weights-only unpickler met something that is not data
        text = str(e)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        reason = (f"it would unpickle {found.group(1)}, which runs code" if found else
                  f"not a file of tensors and plain values ({_first_line(text.split('WeightsUnpickler error:')[-1])})")
        raise ShardFormatError(f"{path}: refused: {reason}; bertprep loads only tensors and plain values "
                               "(weights_only=True)") from None
    except Exception as e:  # a zip archive cut short (RuntimeError, OSError, EOFError, ...): bad input, not a bug
        raise ShardFormatError(f"{path}: truncated or damaged ({e.__class__.__name__}: {_first_line(str(e))})"
                               f"{advice}") from None


def _first_line(text: str) -> str:
    line = next((s.strip() for s in text.splitlines() if s.strip()), "no detail")
    return line.split(". ")[0][:160]


def load(path: Path | str) -> dict:
    """Read a checkpoint without executing anything in it; refuses other formats and versions."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint")
    ckpt = read_torch_file(path, "; delete it, and a run directory's previous checkpoint is used")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ShardFormatError(f"{path}: not a bertprep checkpoint")
    if ckpt.get("version") != VERSION:
        raise ShardFormatError(f"{path}: checkpoint version {ckpt.get('version')}, this trainer reads {VERSION}")
    missing = [k for k in PAYLOAD if k not in ckpt]
    if missing or not all(isinstance(ckpt[k], dict) for k in ("model", "model_config", "data")):
        raise ShardFormatError(f"{path}: damaged checkpoint ({', '.join(missing) or 'model, model_config or data'} "
                               "missing or not a map)")
    return ckpt


def check_data_matches(ckpt_data: dict, shard_data: dict, path: Path | str,
                       advice: str = "train on shards made with the same tokenizer and --max-len") -> None:
    """Refuse shards whose vocabulary, length or special ids differ from the checkpoint's."""
    for key in ("vocab_size", "max_len", "special_ids", "nsp"):
        if ckpt_data.get(key) != shard_data.get(key):
            raise ShardFormatError(
                f"{path}: the checkpoint was trained on shards with {key}={ckpt_data.get(key)!r} but these shards have "
                f"{key}={shard_data.get(key)!r}; {advice}"
            )


def check_model_fits(ckpt: dict, shard_data: dict, path: Path | str) -> None:
    """Refuse shards a checkpoint's model cannot read: another vocabulary or special ids, or longer
    examples than its position table holds. (Shorter examples are fine: evaluating a 512-position
    model on 128-token shards, or a phase-1 model on phase 2's 512-token shards.)"""
    for key in ("vocab_size", "special_ids"):
        if ckpt["data"].get(key) != shard_data.get(key):
            raise ShardFormatError(f"{path}: the model was trained with {key}={ckpt['data'].get(key)!r} but these "
                                   f"shards have {key}={shard_data.get(key)!r}; use shards of the same tokenizer")
    positions = int(ckpt["model_config"]["max_len"])
    if shard_data["max_len"] > positions:
        raise ShardFormatError(f"{path}: the model has {positions} positions but these shards hold "
                               f"{shard_data['max_len']}-token examples")
