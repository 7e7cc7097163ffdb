"""The streaming plan: which rows of which shard file make up each batch, on any number of ranks.

The plan is global. Global batch g (one optimizer step: --global-batch-size G rows) is a pure
function of (seed, the shard files, G, --shuffle, the --mix weights): the world size is not an
input. Rank r's micro-step m of step g reads slice k = m * W + r (B rows) of global batch g, so
W ranks x A micro-steps x B rows tile it, and the same G rows are read whatever W is. The position
is one integer, the number of global batches done, so a checkpoint of N ranks resumes on M ranks
at exactly the next global batch, in O(1): nothing is replayed.

A source (one --shards set, or each --mix NAME=GLOB:WEIGHT) yields its own global batches:
  --shuffle file (default): from its files in turn (0, 1, ..., k-1, 0, ...); a file gives
    floor(n / G) batches per epoch, then drops out of the rotation until the next epoch; rows are
    visited in a seeded, per-epoch shuffled order of the file (the rest waits for a later epoch's
    shuffle). Every batch reads one file.
  --shuffle global: one shuffled order over the concatenation of all the source's files, so
    neighbouring rows come from anywhere in the source.
Sources take turns by weight (trainer/mixture.py); each keeps its own epoch counter and reshuffles
on its own. Every rank knows the whole plan up front, so all run the same steps (no DDP hang).

The shuffles are keyed Feistel permutations with cycle walking, evaluated only at the positions a
batch needs: no per-row index array is ever held, and private memory does not grow with the
number or size of the shards (they are memory-mapped: page cache). The loader state is a small
versioned dict (`state_dict`) that says what a resume must keep equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from bertprep.shards.errors import ConfigError
from bertprep.shards.gather import RowGather
from bertprep.shards.options import check, option
from bertprep.trainer.mixture import Interleave, Source, integer_weights, parse_mix

try:
    from bertprep.trainer import _loader
except ImportError:  # not built: `pip install -e .` compiles it; numpy evaluates the same rounds
    _loader = None

STATE_VERSION = 2  # 2: a global plan (position in global batches), sources, --shuffle
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

    def __call__(self, positions: np.ndarray, native: bool = True) -> np.ndarray:
        x = np.ascontiguousarray(positions, dtype=np.uint64)
        if native and _loader is not None:  # numpy pays its per-call cost on every walking step
            out = np.empty(x.shape, dtype=np.int64)
            _loader.permute(x, self.keys, int(self.half), int(self.mask), self.n, out)
            return out
        y = self._once(x)
        bad = np.flatnonzero(y >= self.n)
        while bad.size:  # cycle walking: the domain is a power of two >= n, so walk back into range
            y[bad] = self._once(y[bad])
            bad = bad[y[bad] >= self.n]
        return y.astype(np.int64)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """data: the shards to train and validate on, their order, and how they reach the device (stream.py, prefetch.py)"""

    shards: tuple[str, ...] = option((), nargs="+", help="training shard files (globs are expanded, e.g. from "
                                     "--config)")
    mix: tuple[str, ...] = option((), nargs="repeat", metavar="NAME=GLOB:WEIGHT", help=(
        "a weighted mixture instead of --shards: each source's shard files and weight (repeatable, e.g. "
        "--mix wiki=shards-wiki/train_*:0.7 --mix books=shards-books/train_*:0.3); whole batches come from one "
        "source, in a smooth weighted round-robin"))
    shuffle: Literal["file", "global"] = option("file", help=(
        "file: each batch from one file, files in turn, rows shuffled within the file; global: rows drawn from "
        "all files of a source through one permutation"))
    global_batch_size: int | None = option(None, at_least=1, at_most=1 << 24, help=(
        "examples per optimizer step over all ranks; fixes the data order for any number of ranks (a resume may "
        "change it): per rank and micro-step min(--batch-size, what divides it), with the micro-steps "
        "(--grad-accum) derived (default: --batch-size x --grad-accum x ranks)"))
    val_shards: tuple[str, ...] | None = option(None, help="validation shard files (default: the val_ files beside "
                                                "the training shards)")
    vocab: str | None = option(None, help="vocab.txt for decoded validation examples (default: the token store "
                               "the shards' manifest names, if its tokenizer is the shards')")
    verify_shards: bool = option(True, help=(
        "before training, check every shard's sha256 against its manifest and every example's value ranges "
        "(--no-verify-shards: skip, for data already verified)"))
    prefetch: int = option(4, at_least=1, at_most=256, help=(
        "host buffers in the loader's ring (pinned on CUDA), each up to 2 MB of whole batches"))
    trace_data: bool = option(False, help="debugging: write the rows each rank reads to <out>/trace/")

    def __post_init__(self):
        check(self)  # --prefetch: each buffer is up to 2 MB pinned; 256 of them is far past any gain
        if self.shards and self.mix:
            raise ConfigError("give --shards (one set of files) or --mix (weighted sources), not both")
        if not self.shards and not self.mix:
            raise ConfigError("--shards: give at least one training shard file (or --mix NAME=GLOB:WEIGHT)")
        parse_mix(self.mix)


def split_global_batch(global_batch: int | None, world: int, batch_size: int, grad_accum: int) -> tuple[int, int]:
    """(rows per rank per micro-step, micro-steps per step) for --global-batch-size on `world`
    ranks: at most --batch-size rows, as few micro-steps as divide the global batch evenly."""
    if global_batch is None:
        return batch_size, grad_accum
    if grad_accum != 1:
        raise ConfigError("--grad-accum is derived from --global-batch-size; give one of them, not both")
    if global_batch % world:
        raise ConfigError(f"--global-batch-size {global_batch} does not split evenly over {world} ranks; give a "
                          f"multiple of {world}")
    per_rank = global_batch // world
    accum = -(-per_rank // batch_size)
    while per_rank % accum:
        accum += 1
    return per_rank // accum, accum


@dataclass(frozen=True, kw_only=True)
class StreamConfig:
    batch_size: int             # rows per rank per micro-step
    seed: int
    rank: int = 0
    world_size: int = 1
    accum: int = 1              # micro-steps per global batch: global batch = batch_size x world_size x accum
    shuffle: bool = True        # False for validation: files in turn, rows in order
    order: Literal["file", "global"] = "file"
    overfit_batches: int = 0    # >0: global batch g is global batch g % N

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} outside a world of {self.world_size}")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size * self.accum


class _SourcePlan:
    """One source's own sequence of global batches: `locate(j)` -> (epoch, file, round), and the
    file and row of each position of a batch."""

    def __init__(self, index: int, sizes: np.ndarray, first: int, G: int, cfg: StreamConfig):
        self.index, self.sizes, self.first, self.G, self.cfg = index, sizes, first, G, cfg
        self.glob = cfg.order == "global" and cfg.shuffle
        self.cum = np.concatenate([[0], np.cumsum(sizes)])
        self.per_file = sizes // G                                       # batches per file per epoch
        self.per_epoch = int(self.cum[-1] // G) if self.glob else int(self.per_file.sum())
        # Rotation segments: between consecutive distinct per-file counts the active set is fixed.
        bounds = np.unique(self.per_file[self.per_file > 0])
        self._seg_rounds = np.diff(np.concatenate([[0], bounds]))            # rounds in each segment
        self._seg_bound = bounds                                             # files with count >= bound
        self._seg_active = np.array([(self.per_file >= b).sum() for b in bounds], dtype=np.int64)
        self._seg_start = np.concatenate([[0], np.cumsum(self._seg_rounds * self._seg_active)])
        self._perms: dict[tuple[int, int], FeistelPermutation] = {}

    def locate(self, j: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(epoch, file (index in the stream; -1 under --shuffle global), round in the file or epoch)."""
        epoch, i = np.divmod(j, self.per_epoch)
        if self.glob:
            return epoch, np.full_like(j, -1), i
        seg = np.searchsorted(self._seg_start, i, side="right") - 1
        offset = i - self._seg_start[seg]
        active = self._seg_active[seg]
        rnd = (self._seg_bound[seg] - self._seg_rounds[seg]) + offset // active
        slot = offset % active
        files = np.empty_like(j)
        for s in np.unique(seg):
            here = seg == s
            files[here] = np.flatnonzero(self.per_file >= self._seg_bound[s])[slot[here]]
        return epoch, files + self.first, rnd

    def rows(self, epoch, files, rnd, offsets) -> tuple[np.ndarray, np.ndarray]:
        """Files and rows (n, B) at `offsets` (n, B) of the global batches located as given."""
        positions = rnd[:, None] * self.G + offsets
        if self.glob:
            flat = np.empty_like(positions)
            for e in np.unique(epoch):  # one permutation call per epoch
                here = epoch == e
                flat[here] = self._perm(int(e), -1)(positions[here].ravel()).reshape(-1, positions.shape[1])
            flat.sort(axis=1)  # neighbouring pages of the maps; the same set of rows
            f = np.searchsorted(self.cum, flat, side="right") - 1
            return f + self.first, flat - self.cum[f]
        if not self.cfg.shuffle:
            return np.broadcast_to(files[:, None], positions.shape), positions
        rows = np.empty_like(positions)
        for e, f in set(zip(epoch.tolist(), files.tolist())):  # one permutation call per (epoch, file)
            here = (epoch == e) & (files == f)
            rows[here] = self._perm(e, f)(positions[here].ravel()).reshape(-1, positions.shape[1])
        rows.sort(axis=1)
        return np.broadcast_to(files[:, None], positions.shape), rows

    def _perm(self, epoch: int, f: int) -> FeistelPermutation:
        perm = self._perms.get((epoch, f))
        if perm is None:
            if len(self._perms) > 4 * len(self.sizes):  # keep only about one epoch's worth
                self._perms.clear()
            if f < 0:  # the whole source: its own key, whatever its files' place in the stream
                perm = FeistelPermutation(int(self.cum[-1]), [self.cfg.seed, epoch, 1 << 32, self.index])
            else:
                perm = FeistelPermutation(int(self.sizes[f - self.first]), [self.cfg.seed, epoch, f])
            self._perms[(epoch, f)] = perm
        return perm


class ShardStream:
    """Random access to this rank's batches: `batch(i)` is the i-th (micro-)batch it reads (all epochs).

    `shards` is every file of every source, source by source; `sources` says which are whose
    (default: one source, "train", of all of them)."""

    def __init__(self, shards: list, cfg: StreamConfig, sources: list[Source] | None = None):
        self.shards, self.cfg = shards, cfg
        self._rows: RowGather | None = None  # built at the first read: plans alone need only sizes
        self.sources = sources or [Source("train", len(shards))]
        if sum(s.files for s in self.sources) != len(shards):
            raise ValueError("the sources' file counts must add up to the shard files")
        self.sizes = np.array([s.num_examples for s in shards], dtype=np.int64)
        self.G = G = cfg.global_batch
        firsts = np.concatenate([[0], np.cumsum([s.files for s in self.sources])]).astype(int)
        self.plans = [_SourcePlan(i, self.sizes[firsts[i]:firsts[i + 1]], int(firsts[i]), G, cfg)
                      for i in range(len(self.sources))]
        for src, plan in zip(self.sources, self.plans):
            if plan.per_epoch == 0:
                what = f"source {src.name!r}: " if len(self.sources) > 1 else ""
                raise ConfigError(
                    f"{what}{src.files} shard file(s) of {int(plan.sizes.max(initial=0))} examples at most cannot fill "
                    f"one global batch of {G} ({cfg.batch_size} per rank x {cfg.world_size} rank(s) x {cfg.accum} "
                    f"micro-steps); lower --batch-size or --global-batch-size, or make larger shards")
        self.per_file = np.concatenate([p.per_file for p in self.plans])  # global batches per file per epoch
        self.weights = integer_weights([s.weight for s in self.sources])
        self.interleave = Interleave(self.weights)
        # Global batches until the first source's epoch ends (one source: its epoch).
        self.batches_per_epoch = int(min(p.per_epoch * self.interleave.period // w
                                         for p, w in zip(self.plans, self.weights)))
        self.steps_per_epoch = self.batches_per_epoch * cfg.accum  # this rank's micro-batches
        if cfg.overfit_batches > self.batches_per_epoch:
            raise ConfigError(f"--overfit-batches {cfg.overfit_batches} exceeds the {self.batches_per_epoch} "
                              f"global batches the shards hold")

    # --- the plan -------------------------------------------------------------------------------
    def place(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """(global batch g, slice k of it) of this rank's batch numbers."""
        idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        g, m = np.divmod(idx, self.cfg.accum)
        if self.cfg.overfit_batches:
            g = g % self.cfg.overfit_batches
        return g, m * self.cfg.world_size + self.cfg.rank

    def source_of(self, indices) -> np.ndarray:
        """The source (index into `sources`) of each of this rank's batches."""
        return self.interleave(self.place(indices)[0])[0]

    def _located(self, indices):
        g, k = self.place(indices)
        source, own = self.interleave(g)
        epoch, files, rnd = (np.empty_like(g) for _ in range(3))
        for s in np.unique(source):
            here = source == s
            epoch[here], files[here], rnd[here] = self.plans[s].locate(own[here])
        return source, epoch, files, rnd, k

    def locate(self, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(epoch of its source, file, round) of this rank's batch numbers `indices`; round = the
        batch's number within its file this epoch (file is -1 under --shuffle global: `examples`)."""
        _, epoch, files, rnd, _ = self._located(indices)
        return epoch, files, rnd

    def examples(self, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(epoch (n,), file (n, B), row (n, B)) of every example of this rank's batches `indices`:
        an example's identity, under either --shuffle."""
        source, epoch, files, rnd, k = self._located(indices)
        B = self.cfg.batch_size
        offsets = k[:, None] * B + np.arange(B, dtype=np.int64)[None, :]
        f_out, r_out = np.empty_like(offsets), np.empty_like(offsets)
        for s in np.unique(source):
            here = source == s
            f_out[here], r_out[here] = self.plans[s].rows(epoch[here], files[here], rnd[here], offsets[here])
        return epoch, f_out, r_out

    def rows(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """(file per batch (n,), or per example (n, B) under --shuffle global; ascending rows (n, B))."""
        _, files, rows = self.examples(indices)
        return self._batch_files(files), rows

    def _batch_files(self, files: np.ndarray) -> np.ndarray:
        """`examples`' files (n, B) as a batch reports them: one per batch, but per example under
        --shuffle global (where a batch draws from any file)."""
        return files if self.cfg.order == "global" and self.cfg.shuffle else files[:, 0]

    def read(self, start: int, count: int, remask=None) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Batches start..start+count-1 in one piece: (file per batch (count,), or per example
        (count, B) under --shuffle global; rows (count, B); columns of count x B rows, batch after
        batch), read with one copy per column for all of them (shards/gather.py: per-call costs
        are paid per chunk, not per batch). `remask(cols, epoch, file, rows)` (trainer/remask.py, --mask-prob) gives every row
        fresh masks on the way, keyed by its own (epoch, file, row)."""
        epoch, files, rows = self.examples(np.arange(start, start + count))
        if self._rows is None:
            self._rows = RowGather(self.shards)
        cols = self._rows.take(files.ravel(), rows.ravel())
        if remask is not None:
            cols = remask(cols, np.repeat(epoch, self.cfg.batch_size), files.ravel(), rows.ravel())
        return self._batch_files(files), rows, cols

    def batches(self, start: int, count: int, remask=None) -> list[tuple]:
        """`read` as a list of (file, rows, columns) per batch."""
        files, rows, cols = self.read(start, count, remask)
        B = self.cfg.batch_size
        return [(int(files[b]) if files.ndim == 1 else files[b], rows[b],
                 {k: v[b * B:(b + 1) * B] for k, v in cols.items()}) for b in range(count)]

    def batch(self, index: int) -> dict[str, np.ndarray]:
        return self.batches(index, 1)[0][2]

    # --- position -------------------------------------------------------------------------------
    def state_dict(self, next_batch: int) -> dict:
        """The loader position as plain values: `next_batch` (this rank's) as the number of global
        batches done, and the plan it belongs to. The world size, --batch-size and --grad-accum are
        recorded for the reader; a resume may change them."""
        g = int(next_batch) // self.cfg.accum
        done = self.interleave.counts(g)  # each source's own global batches so far
        return {
            "version": STATE_VERSION,
            "next_batch": g,
            "global_batch": self.G,
            "seed": self.cfg.seed,
            "shuffle": self.cfg.order,
            "overfit_batches": self.cfg.overfit_batches,
            "sources": [[s.name, s.files, w] for s, w in zip(self.sources, self.weights)],
            "files": [Path(s.path).name for s in self.shards],
            "rows": [int(n) for n in self.sizes],
            "epochs": {s.name: int(n) // p.per_epoch for s, n, p in zip(self.sources, done, self.plans)},
            "world_size": self.cfg.world_size, "batch_size": self.cfg.batch_size, "grad_accum": self.cfg.accum,
        }

    def load_state_dict(self, state: dict) -> int:
        """Check that a saved position belongs to this plan; returns this rank's next batch number."""
        if state.get("version") != STATE_VERSION:
            raise ConfigError(f"loader state version {state.get('version')!r}, this trainer reads {STATE_VERSION}: "
                              f"the checkpoint is of an older bertprep; start a new phase from it with --init-from")
        mine = self.state_dict(0)
        for key in ("files", "rows", "sources", "global_batch", "seed", "shuffle", "overfit_batches"):
            if state.get(key) != mine[key]:
                raise ConfigError(
                    f"cannot resume: the checkpoint's data plan has {key}={_short(state.get(key))} but this run has "
                    f"{_short(mine[key])}; resume with the same shards (or --mix), --seed, --global-batch-size (the "
                    f"checkpoint's: {state.get('global_batch')}), --shuffle and --overfit-batches (the number of "
                    f"processes, --batch-size and --grad-accum may change)"
                )
        return int(state["next_batch"]) * self.cfg.accum


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
