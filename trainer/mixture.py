"""Weighted mixtures of shard sets: `--mix NAME=GLOB:WEIGHT` parsed (`parse_mix`), and the
deterministic interleaving of sources at global-batch granularity (`Interleave`).

The interleaving is a smooth weighted round-robin (nginx's: each turn every source earns its
weight, the richest goes and pays back the total) over integer weights. It repeats with a period
of sum(weights) batches, so one period is computed up front and global batch g maps to (source,
that source's own batch number) in O(1): g = q * period + p gives source seq[p] and its batch
q * weight + (how many times it went before p in the period). No state, no replay: a resume at
batch 10^9 costs what one at batch 0 does. Over any window of batches a source's count is within
a couple of batches of weight x window / total, which is what keeps every 1,000-batch window's
proportions within 1%.

Why whole batches from one source, not samples mixed within a batch: a step's loss then belongs
to one source, so metrics.jsonl reports each source's loss exactly with no extra reduction, and a
batch reads from one source's files; over the thousands of steps a run takes, the proportions hold
as tightly as a per-sample mix's would.
"""

from __future__ import annotations

import glob
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from bertprep.shards.errors import ConfigError
from bertprep.shards.reader import open_shards

MAX_PERIOD = 100_000   # weights whose exact ratio needs a longer period are rounded to parts per 10^4
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")


@dataclass(frozen=True)
class MixSpec:
    name: str
    pattern: str
    weight: float


@dataclass(frozen=True)
class Source:
    """A named run of the stream's shard files (`files` consecutive ones) with a weight."""
    name: str
    files: int
    weight: float = 1.0


def parse_mix(specs) -> list[MixSpec]:
    """`NAME=GLOB:WEIGHT` strings -> MixSpecs; ConfigError naming the bad one (syntax only: the
    globs are expanded when the run opens its shards)."""
    out: list[MixSpec] = []
    for spec in specs:
        name, eq, rest = str(spec).partition("=")
        pattern, colon, weight = rest.rpartition(":")
        why = None
        if not (eq and colon and pattern):
            why = "write NAME=GLOB:WEIGHT, e.g. wiki=shards-wiki/train_*:0.7"
        elif not _NAME.match(name):
            why = f"the name {name!r} must be 1-40 letters, digits, '_', '-' or '.'"
        else:
            try:
                w = float(weight)
            except ValueError:
                w = math.nan
            if not (math.isfinite(w) and w > 0):
                why = f"the weight {weight!r} must be a number > 0"
        if why:
            raise ConfigError(f"--mix {spec!r}: {why}")
        if any(m.name == name for m in out):
            raise ConfigError(f"--mix: the source name {name!r} is given twice; give each source once")
        out.append(MixSpec(name, pattern, float(weight)))
    return out


def integer_weights(weights) -> list[int]:
    """Weights as the smallest integers of the same ratio (0.7, 0.3 -> 7, 3; 1, 1, 1 -> 1, 1, 1).
    A ratio that needs a period over MAX_PERIOD is rounded to parts per 10^4 (largest remainder)."""
    fracs = [Fraction(w).limit_denominator(1000) for w in weights]
    scale = math.lcm(*(f.denominator for f in fracs))
    ints = [int(f * scale) for f in fracs]
    g = math.gcd(*ints)
    ints = [i // g for i in ints]
    if sum(ints) <= MAX_PERIOD and min(ints) > 0:
        return ints
    share = np.asarray(weights, dtype=np.float64) / float(sum(weights)) * 10_000
    ints = np.maximum(1, np.floor(share)).astype(np.int64)
    for i in np.argsort(-(share - np.floor(share)))[: max(0, 10_000 - int(ints.sum()))]:
        ints[i] += 1
    g = math.gcd(*ints.tolist())
    return [int(i) // g for i in ints]


class Interleave:
    """`(source, own_batch) = interleave(g)` for global batch numbers g (arrays)."""

    def __init__(self, weights: list[int]):
        self.weights = np.asarray(weights, dtype=np.int64)
        self.period = int(self.weights.sum())
        current = np.zeros(len(weights), dtype=np.int64)
        seq = np.empty(self.period, dtype=np.int32)
        for p in range(self.period):  # one period, once: at most MAX_PERIOD turns
            current += self.weights
            s = int(np.argmax(current))  # ties: the first source
            current[s] -= self.period
            seq[p] = s
        self.seq = seq
        self.before = np.empty(self.period, dtype=np.int64)  # the source's turns earlier in the period
        for s in range(len(weights)):
            here = np.flatnonzero(seq == s)
            self.before[here] = np.arange(here.size)

    def __call__(self, g) -> tuple[np.ndarray, np.ndarray]:
        q, p = np.divmod(np.asarray(g, dtype=np.int64), self.period)
        source = self.seq[p].astype(np.int64)
        return source, q * self.weights[source] + self.before[p]

    def counts(self, g: int) -> np.ndarray:
        """How many of global batches 0..g-1 each source gave."""
        q, p = divmod(int(g), self.period)
        return q * self.weights + np.bincount(self.seq[:p], minlength=self.weights.size)


def _expand(pattern: str) -> list[str]:
    return sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]


def shard_paths(shards: tuple[str, ...], mix: tuple[str, ...]) -> list[Path]:
    """Every training shard file of --shards or --mix (globs expanded), without opening one: where
    the tokenizer and the val_ files are looked for."""
    return [Path(p) for p in shards] if not mix else [Path(p) for m in parse_mix(mix) for p in _expand(m.pattern)]


def recorded_shard_paths(flat: dict) -> list[Path]:
    """`shard_paths` of a run's recorded flags (a checkpoint's `config`, config.json's `train`);
    none when a --mix spec there is one this bertprep cannot read."""
    try:
        return shard_paths(tuple(flat.get("shards") or ()), tuple(flat.get("mix") or ()))
    except ConfigError:
        return []


def open_sources(shards: tuple[str, ...], mix: tuple[str, ...]):
    """(every shard file opened, source by source; the `Source`s; each source's file paths) for
    --shards (one source, "train") or --mix (each NAME=GLOB:WEIGHT a source, its glob expanded)."""
    if not mix:
        return open_shards(list(shards)), [Source("train", len(shards))], [[Path(p) for p in shards]]
    groups, sources, owner = [], [], {}
    for m in parse_mix(mix):
        paths = _expand(m.pattern)
        if not paths:
            raise ConfigError(f"--mix {m.name}: no shard files match {m.pattern!r}")
        for p in paths:
            key = str(Path(p).resolve())
            if key in owner:
                raise ConfigError(f"--mix: {p} is in both {owner[key]!r} and {m.name!r}; give each file to one source")
            owner[key] = m.name
        groups.append([Path(p) for p in paths])
        sources.append(Source(m.name, len(paths), m.weight))
    return open_shards([p for g in groups for p in g]), sources, groups
