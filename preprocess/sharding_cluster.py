"""`bertprep shard --cluster`: the chunk tasks of `sharding.py` on Dask workers, and the parts
assembled by workers from what the tasks wrote, byte-identical to a local run.

Locally the parent writes chunk results in task order and rolls over to a new part every
--examples-per-shard examples, so where a part begins depends on every earlier chunk's example
count. On a cluster:
  1. a task (`shard_chunks`) packs and masks a few consecutive (split, dupe, chunk) chunks, each
     with the same position-seeded `chunk_columns` as locally, and writes their examples to a
     piece: an Arrow file, one record batch per chunk, under a hidden temporary name in --out
     that is new for every attempt;
  2. the driver takes the chunks' example counts in task order and cuts them into parts exactly
     where the local writer rolls over (`_PartPlanner`);
  3. each part is a task (`assemble_part`) that copies its rows from the memory-mapped pieces, one
     record batch per chunk and part as the local writer writes them, and gives the part its
     final name (temporary name, fsync, rename), returning its sha256;
  4. the driver deletes a piece once every part that reads it is written, and writes the
     manifest last.
Memory stays bounded (a window of tasks in flight; a piece holds at most CHUNKS_PER_TASK chunks'
examples); the disk holds at most the pieces of the parts not yet written. Dask itself is used
only through `cluster.py`.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import threading
from pathlib import Path

import numpy as np

from bertprep.preprocess.seeding import STAGE_EXAMPLES
from bertprep.preprocess.sharding import (CHUNK_TOKENS, RunPlan, ShardConfig, chunk_columns, chunk_stats, new_sums,
                                          plan_run, shard_writer_class)
from bertprep.preprocess.splits import chunk_documents
from bertprep.shards import naming
from bertprep.shards.arrow_ipc import ArrowShard, ArrowShardWriter
from bertprep.shards.errors import InputError
from bertprep.shards.tokenstore import DATA_FILES, MANIFEST, TOKENIZER_FILES

TASKS_PER_THREAD = 4   # shard tasks per worker thread, at least (when there are chunks enough)
CHUNKS_PER_TASK = 32   # chunks one shard task packs, at most (about a second of work)

@dataclasses.dataclass(frozen=True)
class ShardJob:
    """What every shard task of one run shares (small: it travels with each task)."""

    cfg: ShardConfig         # with absolute --tokens and --out
    store_files: tuple       # the token store's data checksums: the store each worker must map
    meta: dict               # the shards' metadata, without `split`
    piece_prefix: str        # names this run's pieces (`cluster.piece_prefix`)


_WORKER_PLAN: dict = {}
_WORKER_PLAN_LOCK = threading.Lock()


def _worker_plan(job: ShardJob) -> RunPlan:
    """The plan on a worker, computed once per run (the store mapped once, the split drawn once)."""
    key = (job.cfg, job.store_files)
    with _WORKER_PLAN_LOCK:
        return _WORKER_PLAN[key] if key in _WORKER_PLAN else _new_worker_plan(job, key)


def _new_worker_plan(job: ShardJob, key: tuple) -> RunPlan:
    plan = plan_run(job.cfg, verify=False)
    if tuple(sorted(plan.store.manifest["files"].items())) != job.store_files:
        raise InputError(f"{job.cfg.tokens}: this worker sees another token store than the driver "
                         "(other checksums); --tokens must be one directory that every worker shares")
    _WORKER_PLAN.clear()
    _WORKER_PLAN[key] = plan
    return plan


def shard_chunks(job: ShardJob, task: tuple) -> dict:
    """A cluster task: pack and mask a few consecutive chunks of one split, each with its own
    position-seeded generator, and write their examples to a piece file, one record batch per
    chunk (a name new for every attempt, so a retried or duplicated task never writes over
    another's file). Returns the piece's name, the examples of each chunk, their statistics and
    tokens."""
    index, chunks = task
    cfg, plan = job.cfg, _worker_plan(job)
    split = naming.SPLITS[chunks[0][0]]
    docs = plan.splits[split]
    name = f"{job.piece_prefix}{index:06d}-{secrets.token_hex(4)}.tmp"
    writer = ArrowShardWriter(cfg.out / name, dict(job.meta, split=split))
    rows, sums, tokens = [], dict.fromkeys(("examples", "real_tokens", "candidates", "masked"), 0), 0
    try:
        for split_index, dupe, ci, lo, hi in chunks:
            columns = chunk_columns(plan.store, docs[lo:hi], docs, (cfg.seed, STAGE_EXAMPLES, split_index, ci, dupe),
                                    plan.settings)
            for k, v in chunk_stats(columns, cfg.pack.nsp).items():
                sums[k] += v
            rows.append(len(columns["length"]))
            tokens += int(plan.doc_tokens[docs[lo:hi]].sum())
            if rows[-1]:
                writer.write(columns)
    except BaseException:
        writer.discard()
        raise
    writer.close()
    return {"piece": name, "rows": rows, "tokens": tokens, **sums}


def assemble_part(job: ShardJob, part: tuple) -> dict:
    """A cluster task: copy the rows of one part from the pieces, one record batch per chunk (as the
    local writer writes one per chunk and part), then give the part its final name. Returns its
    manifest entry."""
    split, number, slices = part
    cfg = job.cfg
    name = naming.ShardName(split, job.meta["label"], cfg.max_len, cfg.seed, number, cfg.fmt).filename
    writer = shard_writer_class(cfg.fmt)(cfg.out / name, dict(job.meta, split=split))
    sources: dict[str, ArrowShard] = {}
    try:
        for piece, lo, hi in slices:
            if piece not in sources:
                sources[piece] = ArrowShard(cfg.out / piece)
            writer.write(sources[piece].slice(lo, hi))
    except BaseException:
        writer.discard()
        raise
    finally:
        for source in sources.values():
            source.close()
    sha = writer.close()
    return {"name": name, "split": split, "examples": writer.num_examples, "sha256": sha}


class _PartPlanner:
    """Cuts one split's chunks, arriving in task order, into parts of `per_shard` rows: the cuts
    `_PartWriter` makes while writing locally. A part is a list of (piece, lo, hi), each within
    one chunk's rows of the piece; `users` counts the parts that read each piece."""

    def __init__(self, per_shard: int, users: dict[str, int]):
        self.per_shard, self.filled, self.slices, self.users = per_shard, 0, [], users

    def add(self, piece: str, rows: list[int]) -> list[list]:
        """The parts completed by the rows of a piece's chunks."""
        done, start = [], 0
        for n in rows:
            lo = 0
            while lo < n:
                take = min(n - lo, self.per_shard - self.filled)
                if all(p != piece for p, _, _ in self.slices):
                    self.users[piece] = self.users.get(piece, 0) + 1
                self.slices.append((piece, start + lo, start + lo + take))
                self.filled += take
                lo += take
                if self.filled == self.per_shard:
                    done.append(self.slices)
                    self.slices, self.filled = [], 0
            start += n
        return done

    def finish(self) -> list[list]:
        return [self.slices] if self.slices else []


def _tasks(cfg: ShardConfig, plan: RunPlan, threads: int) -> list[tuple]:
    """The local run's (split, dupe, chunk) tasks in its order, as (split_index, dupe, chunk, lo, hi)
    with lo:hi its documents in the split, grouped into tasks of consecutive chunks of one split:
    enough tasks for TASKS_PER_THREAD per worker thread, at most CHUNKS_PER_TASK chunks each (a
    chunk is tens of milliseconds of work, a task costs the scheduler about a millisecond).
    Grouping changes no byte: every chunk keeps its generator and its record batch."""
    by_split = []
    for split_index, split in enumerate(naming.SPLITS):
        docs = plan.splits[split]
        bounds = np.cumsum([0] + [len(c) for c in chunk_documents(docs, plan.doc_tokens, CHUNK_TOKENS)])
        by_split.append([(split_index, dupe, ci, int(bounds[ci]), int(bounds[ci + 1]))
                         for dupe in range(cfg.dupe_factor) for ci in range(len(bounds) - 1)])
    total = sum(map(len, by_split))
    per_task = max(1, min(CHUNKS_PER_TASK, total // max(1, TASKS_PER_THREAD * threads)))
    tasks = []
    for chunks in by_split:
        for i in range(0, len(chunks), per_task):
            tasks.append((len(tasks), chunks[i:i + per_task]))
    return tasks


def shard_on_cluster(cfg: ShardConfig, plan: RunPlan) -> tuple[list[dict], dict, int, str]:
    """Chunk tasks and part tasks on the cluster; returns the manifest's file entries in order, the
    per-split sums, the number of chunks and where it ran."""
    from bertprep.preprocess import cluster

    out, tokens = Path(os.path.abspath(cfg.out)), Path(os.path.abspath(cfg.tokens))
    sums = {split: new_sums(plan.splits[split]) for split in naming.SPLITS}
    users: dict[str, int] = {}     # piece -> parts still to copy from it (deleted at 0)
    planners = {split: _PartPlanner(cfg.examples_per_shard, users) for split in naming.SPLITS}
    parts: list[tuple] = []        # (future, split, its slices), in manifest order
    entries: dict[int, dict] = {}  # index in parts -> the finished part's manifest entry
    pending: list[int] = []        # parts still being written
    numbers = dict.fromkeys(naming.SPLITS, 0)

    def reap(session, wait: bool) -> None:
        for i in list(pending):
            future, split, slices = parts[i]
            if not (wait or future.done()):
                continue
            entries[i] = session.result(future, f"shard part {split} {i}")
            pending.remove(i)
            parts[i] = (None, split, slices)  # the future is released
            for piece in {p for p, _, _ in slices}:
                users[piece] -= 1
                if users[piece] == 0:
                    (out / piece).unlink(missing_ok=True)

    try:
        with cluster.open_session(cfg.cluster.address, cfg.cluster.timeout, out) as session:
            session.check_workers(files=[tokens / n for n in DATA_FILES + TOKENIZER_FILES + (MANIFEST,)],
                                  shared_dir=out)
            job = ShardJob(cfg=dataclasses.replace(cfg, out=out, tokens=tokens),
                           store_files=tuple(sorted(plan.store.manifest["files"].items())), meta=plan.meta,
                           piece_prefix=session.piece_prefix)
            tasks = _tasks(cfg, plan, session.threads())
            last = {}  # split -> its last task
            for index, chunks in tasks:
                last[naming.SPLITS[chunks[0][0]]] = index
            with cluster.Progress("sharding", len(tasks), "tok", cfg.progress) as progress:
                for (index, chunks), r in zip(tasks, session.ordered(shard_chunks, job, tasks, "shard")):
                    split = naming.SPLITS[chunks[0][0]]
                    for k in ("examples", "real_tokens", "candidates", "masked"):
                        sums[split][k] += r[k]
                    ready = planners[split].add(r["piece"], r["rows"])
                    if last[split] == index:
                        ready += planners[split].finish()
                    if r["piece"] not in users:  # a piece without examples
                        (out / r["piece"]).unlink(missing_ok=True)
                    for slices in ready:
                        number, numbers[split] = numbers[split], numbers[split] + 1
                        future = session.submit(assemble_part, job, (split, number, slices),
                                                name=f"part-{split}-{number}", priority=1)
                        pending.append(len(parts))
                        parts.append((future, split, slices))
                    progress.chunk_done(r["tokens"])
                    reap(session, wait=False)
                reap(session, wait=True)
            where = session.describe()
    except BaseException:
        # The session is closed (a local cluster's workers are gone, so no task still writes):
        # every part this run may have written goes, as a failed local run removes its parts.
        for p in out.iterdir():
            sn = naming.parse_shard_name(p)
            if sn and (sn.label, sn.max_len, sn.seed) == (plan.label, cfg.max_len, cfg.seed):
                p.unlink(missing_ok=True)
        raise
    return [entries[i] for i in range(len(parts))], sums, sum(len(c) for _, c in tasks), where
