"""Checkpoints: the one writer and the one reader of every checkpoint bertprep keeps, and the one
place a checkpoint becomes a model.

Written atomically, the newest K kept, read with `weights_only=True` (a stranger's file can never
run code), sealed with a sha256 of their content (`seal` / `check_seal`, also used by the
fine-tuned classifier's `best.pt`), and refused, in one line naming the file, when the seal or the
tensors' shapes disagree with what the file says. `load` reads and checks; `build_model` turns a
checked checkpoint into a `Bert`.

A checkpoint is `<run>/checkpoints/step_00001234.pt`, a `torch.save`d dict of tensors and plain
values only:

    format, version     "bertprep-checkpoint", 2
    sha256              of everything else in the file, tensors as bytes (`seal`)
    step                optimizer updates done
    model               the encoder's state dict (our names; `trainer/hf.py` maps them to HF's)
    model_config        ModelConfig as a dict
    data                the shards' settings the model was trained on (vocab, length, special ids)
    optimizer, scheduler
    loader              the loader position (stream.state_dict)
    rng                 {"torch": [per-rank CPU generator states], "cuda": [...] or []}
    config              TrainConfig as a dict (for the record; flags of the resuming run win)
    phase               index, name, start_step, schedule_start (and source) of the phase this run is
    train_s, train_cpu_s  training time so far (the loop's clock, for --max-time)
"""

from __future__ import annotations

import hashlib
import pickle
import re
import warnings
from pathlib import Path

import torch

from bertprep.shards.atomic import atomic_write, remove_stale_temps
from bertprep.shards.errors import BertprepError, InputError, ShardFormatError
from bertprep.trainer.model import Bert, ModelConfig
from bertprep.trainer.modern import ModernBert

FORMAT = "bertprep-checkpoint"
VERSION = 2  # 2: sealed with a sha256 of the content, phase always present
NAME_RE = re.compile(r"^step_(\d{8})\.pt$")
# What save() writes besides format/version: a file lacking one is not a checkpoint of ours.
PAYLOAD = ("step", "model", "model_config", "data", "optimizer", "scheduler", "loader", "rng", "config", "phase")
SEAL = "sha256"
DAMAGED_ADVICE = "; delete it, and a run directory's previous checkpoint is used"


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
        torch.save(seal({"format": FORMAT, "version": VERSION, "step": step, **payload}), f)
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
    """Read a pretraining checkpoint without executing anything in it, and check it: format,
    version, seal (a byte changed since it was written), and weights that fit its recorded shape."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint")
    return check(read_torch_file(path, DAMAGED_ADVICE), path)


def check(ckpt, path: Path | str) -> dict:
    """`load`'s checks of a file already read (`read_torch_file`)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ShardFormatError(f"{path}: not a bertprep checkpoint")
    if ckpt.get("version") != VERSION:
        raise ShardFormatError(f"{path}: checkpoint version {ckpt.get('version')}, this trainer reads {VERSION}")
    missing = [k for k in PAYLOAD if k not in ckpt]
    if missing or not all(isinstance(ckpt[k], dict) for k in ("model", "model_config", "data", "phase")):
        what = ", ".join(missing) or "model, model_config, data or phase"
        raise ShardFormatError(f"{path}: damaged checkpoint ({what} missing or not a map)")
    check_seal(ckpt, path, DAMAGED_ADVICE)
    mcfg = model_config(ckpt, path)
    check_shapes(ckpt["model"], expected_shapes(model_class(mcfg), mcfg), path)
    return ckpt


def model_config(ckpt: dict, path: Path | str) -> ModelConfig:
    """The checkpoint's recorded model shape; a record that is not one is a damaged file."""
    try:
        return ModelConfig(**ckpt["model_config"])
    except (TypeError, ValueError, BertprepError) as e:
        raise ShardFormatError(f"{path}: damaged checkpoint (model_config: {_first_line(str(e))})") from None


def model_class(cfg: ModelConfig) -> type:
    """The encoder class of an architecture: `Bert` (model.py) or `ModernBert` (modern.py)."""
    return ModernBert if cfg.arch == "modern" else Bert


def new_model(cfg: ModelConfig) -> torch.nn.Module:
    """A freshly initialised encoder of `cfg`'s architecture and shape (torch's current seed)."""
    return model_class(cfg)(cfg)


def build_model(ckpt: dict, path: Path | str) -> torch.nn.Module:
    """The encoder a checked checkpoint (`load`) holds, its weights loaded, in eval mode, on the CPU."""
    model = new_model(model_config(ckpt, path))
    load_state(model, ckpt["model"], path)
    return model.eval()


def load_state(model: torch.nn.Module, state: dict, path: Path | str) -> None:
    """`model.load_state_dict(state)`, strict; a mismatch is one line naming the file."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        why = " ".join(str(e).split())[:200]
        raise ShardFormatError(f"{path}: the weights do not fit the model the file describes ({why})") from None


def expected_shapes(module: type, *args) -> dict[str, tuple]:
    """The state dict shapes of `module(*args)`, built on the meta device (no memory, no init draws)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in module(*args).state_dict().items()}


def check_shapes(state, expected: dict[str, tuple], path: Path | str) -> None:
    """Every tensor the model has must have the shape the file's own record gives it (names the
    model lacks or does not find are left to the loader that decides what may start fresh)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ShardFormatError(f"{path}: the weights are not a map of tensors; refused")
    for name, shape in expected.items():
        if name in state and tuple(state[name].shape) != shape:
            raise ShardFormatError(f"{path}: the weights disagree with the recorded model shape ({name} is "
                                   f"{list(state[name].shape)}, the shape needs {list(shape)}); refused")


# --- the seal: a sha256 of the content -----------------------------------------------------------

def seal(payload: dict) -> dict:
    """`payload` with its sha256 (of every value but the seal itself) under "sha256"."""
    body = {k: v for k, v in payload.items() if k != SEAL}
    return {**body, SEAL: _digest(body)}


def check_seal(ckpt: dict, path: Path | str, advice: str = "") -> None:
    """Refuse a file whose content is not what was written: the weights-only reader cannot see a
    flipped bit inside a tensor, the seal can."""
    recorded = ckpt.get(SEAL)
    if not isinstance(recorded, str):
        raise ShardFormatError(f"{path}: damaged checkpoint (no sha256 seal)")
    actual = _digest({k: v for k, v in ckpt.items() if k != SEAL})
    if actual != recorded:
        raise ShardFormatError(f"{path}: damaged checkpoint: sha256 mismatch (written {recorded[:12]}…, "
                               f"read {actual[:12]}…); the file changed after it was written{advice}")


def _digest(value) -> str:
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()


def _feed(h, value) -> None:
    """Hash a value of tensors and plain values in a fixed order: type tags, shapes, raw bytes."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(value.shape)}".encode())
        h.update(memoryview(t.view(torch.uint8).numpy()))
    elif isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for k, v in value.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(value, (list, tuple)):
        h.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}".encode())
        for v in value:
            _feed(h, v)
    else:  # str, int, float, bool, None
        h.update(f"{type(value).__name__}:{value!r};".encode())


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
