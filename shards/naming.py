"""The file-name grammar of bertprep's outputs: the only place that builds or parses a data file name.

Shards are `{split}_{label}_{maxlen}_{seed}_{part:05d}.arrow` (or `.msgpack.zst`) and each shard
run has `{label}_{maxlen}_{seed}.manifest.json`, written last; while a run writes, and after it is
killed, the hidden `.{label}_{maxlen}_{seed}.unfinished` marks its parts as not to be used. Overwrite and clean-up only ever touch names this
grammar accepts, so code modules that share the `shards/` folder are never at risk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bertprep.shards.errors import ConfigError

SPLITS = ("train", "val", "test")
SUFFIXES = {"arrow": ".arrow", "msgpack": ".msgpack.zst"}
ShardFormat = Literal[tuple(SUFFIXES)]  # `bertprep shard --format`
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
SHARD_RE = re.compile(
    r"^(?P<split>train|val|test)_(?P<label>[A-Za-z0-9][A-Za-z0-9-]*)_(?P<max_len>\d+)_(?P<seed>\d+)"
    r"_(?P<part>\d{5})(?P<suffix>\.arrow|\.msgpack\.zst)$"
)
MANIFEST_RE = re.compile(r"^(?P<label>[A-Za-z0-9][A-Za-z0-9-]*)_(?P<max_len>\d+)_(?P<seed>\d+)\.manifest\.json$")


@dataclass(frozen=True)
class ShardName:
    split: str
    label: str
    max_len: int
    seed: int
    part: int
    fmt: str  # "arrow" or "msgpack"

    @property
    def filename(self) -> str:
        return f"{self.split}_{self.label}_{self.max_len}_{self.seed}_{self.part:05d}{SUFFIXES[self.fmt]}"


def check_label(label: str) -> str:
    """A label names a corpus in file names, so it may hold letters, digits and '-' only."""
    if not LABEL_RE.match(label):
        raise ConfigError(f"--label must be 1-64 letters, digits or '-' (no '_' or '.'), got {label!r}")
    return label


def default_label(first_input: Path | str) -> str:
    """`wiki` for `wiki.train.tokens`: the first dotted part of the file name, made label-safe."""
    stem = Path(first_input).name.split(".")[0]
    safe = re.sub(r"[^A-Za-z0-9-]+", "-", stem).strip("-")[:64]
    return safe or "corpus"


def parse_shard_name(path: Path | str) -> ShardName | None:
    """The parts of a shard file name, or None when the name is not a shard's."""
    m = SHARD_RE.match(Path(path).name)
    if not m:
        return None
    fmt = "arrow" if m["suffix"] == ".arrow" else "msgpack"
    return ShardName(m["split"], m["label"], int(m["max_len"]), int(m["seed"]), int(m["part"]), fmt)


def manifest_name(label: str, max_len: int, seed: int) -> str:
    return f"{label}_{max_len}_{seed}.manifest.json"


def unfinished_name(label: str, max_len: int, seed: int) -> str:
    return f".{label}_{max_len}_{seed}.unfinished"


def is_manifest_name(path: Path | str) -> bool:
    return MANIFEST_RE.match(Path(path).name) is not None


def is_shard_name(path: Path | str) -> bool:
    return parse_shard_name(path) is not None
