"""The streaming plan: which rows of which shard file make up batch number i of this rank.

Batches come from the shard files in turn (file 0, 1, ..., k-1, 0, ...); a file whose batches for
this epoch are used up drops out of the rotation until the next epoch. Inside a file, rows are
visited in a seeded, per-epoch shuffled order, and each rank owns a disjoint, equally long block of
that order. Everything is a pure function of (seed, epoch, world size, file sizes), computed up
front, so every rank knows it runs exactly `steps_per_epoch` batches per epoch (uneven shares never
hang DDP: each file gives every rank floor(floor(n / world) / batch) batches, the rest waits for a
later epoch's shuffle) and the position is one integer: the index of the next batch.

The shuffle is a keyed Feistel permutation with cycle walking, evaluated only at the B positions a
batch needs, so no per-row index array is ever held: private memory does not grow with the number
or size of the shards (the shards themselves are memory-mapped, so their pages are the kernel's
reclaimable page cache). The loader state is a small versioned dict (`state_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertprep.shards.errors import ConfigError
from bertprep.shards.options import check, option

STATE_VERSION = 1
_ROUNDS = 4
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


class FeistelPermutation:
    """A pseudo-random bijection of range(n), evaluated pointwise: `perm(positions) -> rows`."""

    def __init__(self, n: int, key: list[int]):
        self.n = n
        bits = max(2, int(n - 1).bit_length())
        self.half = np.uint64((bits + 1) // 2)
        self.mask = np.uint64((1 << int(self.half)) - 1)
        self.keys = np.random.default_rng(key).integers(0, 2**63, size=_ROUNDS, dtype=np.uint64)

    def _once(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        for k in self.keys:
            left, right = right, left ^ (_mix(right ^ k) & self.mask)
        return (left << self.half) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        y = self._once(np.asarray(positions, dtype=np.uint64))
        bad = np.flatnonzero(y >= self.n)
        while bad.size:  # cycle walking: the domain is a power of two >= n, so walk back into range
            y[bad] = self._once(y[bad])
            bad = bad[y[bad] >= self.n]
        return y.astype(np.int64)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """data: the shards to train and validate on, and how they reach the device (stream.py, prefetch.py)"""

    shards: tuple[str, ...] = option((), nargs="+", help="training shard files (globs are expanded, e.g. from "
                                     "--config)")
    val_shards: tuple[str, ...] | None = option(None, help="validation shard files (default: the val_ files beside "
                                                "the training shards)")
    vocab: str | None = option(None, help="vocab.txt for decoded validation examples (default: the token store "
                               "the shards' manifest names, if its tokenizer is the shards')")
    verify_shards: bool = option(True, help=(
        "before training, check every shard's sha256 against its manifest and every example's value ranges "
        "(--no-verify-shards: skip, for data already verified)"))
    prefetch: int = option(4, at_least=1, at_most=256, help="pinned host buffers in the loader's ring")
    trace_data: bool = option(False, help="debugging: write the rows each rank reads to <out>/trace/")

    def __post_init__(self):
        check(self)  # --prefetch: each buffer is a pinned batch; 256 of them is far past any gain
        if not self.shards:
            raise ConfigError("--shards: give at least one training shard file")


@dataclass(frozen=True, kw_only=True)
class StreamConfig:
    batch_size: int
    seed: int
    rank: int = 0
    world_size: int = 1
    shuffle: bool = True        # False for validation: file order, rows in order
    overfit_batches: int = 0    # >0: batch i is batch i % N of epoch 0

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} outside a world of {self.world_size}")


class ShardStream:
    """Random access to this rank's batches: `batch(i)` is the i-th batch it trains on (all epochs)."""

    def __init__(self, shards: list, cfg: StreamConfig):
        self.shards, self.cfg = shards, cfg
        self.sizes = np.array([s.num_examples for s in shards], dtype=np.int64)
        B, W = cfg.batch_size, cfg.world_size
        self.per_file = (self.sizes // W) // B            # batches per rank per file per epoch
        self.steps_per_epoch = int(self.per_file.sum())
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"{len(shards)} shard file(s) of {int(self.sizes.max(initial=0))} examples at most cannot fill one "
                f"batch of {B} per rank on {W} rank(s); lower --batch-size or make larger shards"
            )
        if cfg.overfit_batches > self.steps_per_epoch:
            raise ConfigError(f"--overfit-batches {cfg.overfit_batches} exceeds the {self.steps_per_epoch} "
                              f"batches per rank the shards hold")
        # Rotation segments: between consecutive distinct per-file counts the active set is fixed.
        bounds = np.unique(self.per_file[self.per_file > 0])
        self._seg_rounds = np.diff(np.concatenate([[0], bounds]))            # rounds in each segment
        self._seg_bound = bounds                                             # files with count >= bound
        self._seg_active = np.array([(self.per_file >= b).sum() for b in bounds])
        self._seg_start = np.concatenate([[0], np.cumsum(self._seg_rounds * self._seg_active)])
        self._perms: dict[tuple[int, int], FeistelPermutation] = {}

    # --- the plan -------------------------------------------------------------------------------
    def locate(self, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(epoch, file, round) arrays for this rank's batch numbers `indices`; round = the batch's
        number within its file this epoch."""
        idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        if self.cfg.overfit_batches:
            idx = idx % self.cfg.overfit_batches
        epoch, i = np.divmod(idx, self.steps_per_epoch)
        seg = np.searchsorted(self._seg_start, i, side="right") - 1
        offset = i - self._seg_start[seg]
        active = self._seg_active[seg]
        rnd = (self._seg_bound[seg] - self._seg_rounds[seg]) + offset // active
        slot = offset % active
        files = np.empty_like(idx)
        for s in np.unique(seg):
            here = seg == s
            files[here] = np.flatnonzero(self.per_file >= self._seg_bound[s])[slot[here]]
        return epoch, files, rnd

    def rows(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """(file per batch (n,), ascending row numbers per batch (n, B)) of this rank's batches."""
        epoch, files, rnd = self.locate(indices)
        B = self.cfg.batch_size
        start = (self.cfg.rank * self.per_file[files] + rnd) * B                   # (n,)
        positions = start[:, None] + np.arange(B, dtype=np.int64)[None, :]        # (n, B)
        if not self.cfg.shuffle:
            return files, positions
        rows = np.empty_like(positions)
        for e, f in set(zip(epoch.tolist(), files.tolist())):  # one permutation call per (epoch, file)
            here = (epoch == e) & (files == f)
            rows[here] = self._perm(e, f)(positions[here].ravel()).reshape(-1, B)
        rows.sort(axis=1)  # neighbouring pages of the map; the same set of rows
        return files, rows

    def _perm(self, epoch: int, f: int) -> FeistelPermutation:
        key = (epoch, f)
        perm = self._perms.get(key)
        if perm is None:
            if len(self._perms) > 4 * len(self.shards):  # keep only about one epoch's worth
                self._perms.clear()
            perm = self._perms[key] = FeistelPermutation(int(self.sizes[f]), [self.cfg.seed, epoch, f])
        return perm

    def batches(self, start: int, count: int, remask=None) -> list[tuple[int, np.ndarray, dict[str, np.ndarray]]]:
        """Batches start..start+count-1 as (file, rows, columns), reading each file once for all of
        them (per-call costs are paid per file, not per batch). `remask(cols, epoch, file, rows)`
        (trainer/remask.py, --mask-prob) gives each file's rows fresh masks on the way."""
        files, rows = self.rows(np.arange(start, start + count))
        epochs = self.locate(np.arange(start, start + count))[0] if remask is not None else None
        out: list = [None] * count
        for f in np.unique(files):
            which = np.flatnonzero(files == f)
            cols = self.shards[f].take(rows[which].ravel())
            B = self.cfg.batch_size
            if remask is not None:
                cols = remask(cols, np.repeat(epochs[which], B), f, rows[which].ravel())
            for j, b in enumerate(which):
                out[b] = (int(f), rows[b], {k: v[j * B:(j + 1) * B] for k, v in cols.items()})
        return out

    def batch(self, index: int) -> dict[str, np.ndarray]:
        return self.batches(index, 1)[0][2]

    # --- position -------------------------------------------------------------------------------
    def state_dict(self, next_batch: int) -> dict:
        """The loader position as plain values: resuming at `next_batch` gives the batch that came next."""
        return {
            "version": STATE_VERSION,
            "next_batch": int(next_batch),
            "epoch": int(next_batch) // self.steps_per_epoch,
            "seed": self.cfg.seed,
            "batch_size": self.cfg.batch_size,
            "world_size": self.cfg.world_size,
            "overfit_batches": self.cfg.overfit_batches,
            "files": [Path(s.path).name for s in self.shards],
            "rows": [int(n) for n in self.sizes],
        }

    def load_state_dict(self, state: dict) -> int:
        """Check that a saved position belongs to this plan; returns the index of the next batch."""
        if state.get("version") != STATE_VERSION:
            raise ConfigError(f"loader state version {state.get('version')!r}, this trainer reads {STATE_VERSION}")
        mine = self.state_dict(0)
        for key in ("seed", "batch_size", "world_size", "overfit_batches", "files", "rows"):
            if state.get(key) != mine[key]:
                raise ConfigError(
                    f"cannot resume: the checkpoint's data plan has {key}={_short(state.get(key))} but this run has "
                    f"{_short(mine[key])}; resume with the same shards, --seed, --batch-size, --overfit-batches "
                    f"and number of processes"
                )
        return int(state["next_batch"])


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def shard_data(shards: list) -> dict:
    """The settings of a shard set that a model depends on (the checkpoint keeps them to compare)."""
    meta = shards[0].meta
    return {
        "vocab_size": int(meta["vocab_size"]), "max_len": int(meta["max_len"]),
        "max_predictions": int(meta["max_predictions"]), "special_ids": dict(meta["special_ids"]),
        "nsp": bool(meta["nsp"]), "tokenizer_sha256": meta["tokenizer_sha256"], "label": meta["label"],
    }
