"""What a trained model needs besides its weights: the checkpoint a path means (`load_checkpoint`:
a file, or a run directory's `best.pt` or newest checkpoint, read and checked), the tokenizer it
was trained with (`find_tokenizer`), and its tokens in id order (`token_list`).

A run directory keeps its tokenizer (`tokenizer.json`, `vocab.txt`) beside `checkpoints/`; a run
that could not copy it is served through its shards' manifest (`tokens_dir`), accepted only when
the tokenizer's sha256 is the one the shards recorded, so a model is never paired with another
vocabulary.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bertprep.shards.atomic import atomic_write, sha256_file
from bertprep.shards.errors import InputError
from bertprep.shards.naming import manifest_name, parse_shard_name
from bertprep.trainer import checkpoint as ckpt_io
from bertprep.trainer.mixture import recorded_shard_paths

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def resolve_checkpoint(path: Path | str) -> Path:
    """A checkpoint file as given, or the newest one (or `best.pt`) of a run directory."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint or run directory")
    if (path / "best.pt").is_file():
        return path / "best.pt"
    newest = ckpt_io.newest(path)
    if newest is None:
        raise InputError(f"{path}: no checkpoints in this run directory")
    return newest


def load_checkpoint(path: Path | str) -> tuple[Path, dict]:
    """The pretraining checkpoint a path means (`resolve_checkpoint`), read and checked (`checkpoint.load`)."""
    found = resolve_checkpoint(path)
    return found, ckpt_io.load(found)


def token_list(tokenizer) -> list[str]:
    """A tokenizer's tokens in id order ("" for an id it has no token for)."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    tokens = [""] * max(tokenizer.get_vocab_size(), max(vocab.values(), default=-1) + 1)
    for token, i in vocab.items():
        tokens[i] = token
    return tokens


def run_dir_of(ckpt_path: Path) -> Path:
    return ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent


def _store_candidates(paths):
    """tokenizer.json of each token store the shards' manifests record (`tokens_dir`, as given to
    `bertprep shard`: relative to where it ran, so also tried beside the shard folder), each
    manifest read once (the sources of a --mix have one each)."""
    seen = set()
    for shard in paths or []:
        name = parse_shard_name(shard)
        if name is None:
            continue
        manifest = Path(shard).parent / manifest_name(name.label, name.max_len, name.seed)
        if manifest in seen:
            continue
        seen.add(manifest)
        try:
            tokens_dir = json.loads(manifest.read_text(encoding="utf-8")).get("tokens_dir")
        except (OSError, ValueError):
            continue
        if isinstance(tokens_dir, str):
            yield Path(tokens_dir) / "tokenizer.json"
            if not Path(tokens_dir).is_absolute():
                yield manifest.parent.parent / tokens_dir / "tokenizer.json"


def _candidates(ckpt: dict, ckpt_path: Path):
    yield run_dir_of(ckpt_path) / "tokenizer.json"
    yield from _store_candidates(recorded_shard_paths(ckpt.get("config") or {}))


def shard_tokenizer(paths, sha256: str | None) -> Path | None:
    """The tokenizer.json the shards were made with (found through their manifest), or None: only
    a file whose sha256 is the one the shards record is returned."""
    for path in _store_candidates(paths):
        if sha256 and path.is_file() and sha256_file(path) == sha256:
            return path
    return None


def find_tokenizer(ckpt: dict, ckpt_path: Path) -> Path:
    """The tokenizer.json a checkpoint was trained with; refuses one of another checksum."""
    expected = (ckpt.get("data") or {}).get("tokenizer_sha256")
    for path in _candidates(ckpt, ckpt_path):
        if path.is_file() and (expected is None or sha256_file(path) == expected):
            return path
    raise InputError(f"{ckpt_path}: cannot find the tokenizer this model was trained with (expected "
                     f"tokenizer.json with sha256 {str(expected)[:12]}… in {run_dir_of(ckpt_path)})")


def keep_tokenizer(tokenizer_json: Path, run_dir: Path) -> None:
    """Copy a tokenizer (and its vocab.txt) into a run directory, atomically, unless already there."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        src = tokenizer_json.with_name(name)
        dst = run_dir / name
        if src.is_file() and (not dst.is_file() or sha256_file(dst) != sha256_file(src)):
            with atomic_write(dst) as f, open(src, "rb") as s:
                shutil.copyfileobj(s, f)
