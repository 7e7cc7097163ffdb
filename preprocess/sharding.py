"""`bertprep shard`: a token store -> fixed-length, pre-masked MLM (and NSP) examples in shard files.

Documents are divided into train/val/test, each split into chunks of ~CHUNK_TOKENS tokens whose
boundaries depend only on the data. Each (dupe, chunk) task packs and masks its documents with a
generator seeded by its position (`seeding.rng_for`), so worker processes may run tasks in any
order; results are written strictly in task order, rolling over to a new part file every
`--examples-per-shard` examples. Files get final names only when complete; the manifest goes last.

With --cluster the same tasks (`chunk_columns`, seeded by position) run on Dask workers and the
parts are assembled there too (`sharding_cluster.py`); the manifest is still written here, last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from bertprep.preprocess.cluster import ClusterConfig
from bertprep.preprocess.masking import MaskConfig, mask_batch
from bertprep.preprocess.packing import PackConfig, SpecialIds, pack_documents
from bertprep.preprocess.seeding import STAGE_EXAMPLES, rng_for
from bertprep.preprocess.splits import assign_documents, chunk_documents, parse_split
from bertprep.shards import naming, schema
from bertprep.shards.arrow_ipc import ArrowShardWriter
from bertprep.shards.atomic import environment_errors, output_lock, remove_stale_temps, write_json
from bertprep.shards.errors import ConfigError, InputError
from bertprep.shards.manifest import read_manifest, write_manifest
from bertprep.shards.naming import ShardFormat
from bertprep.shards.options import MAX_WORKERS, SEED_LIMIT, check, option
from bertprep.shards.msgpack_zstd import MsgpackShardWriter
from bertprep.shards.tokenstore import TokenStore, open_token_store

CHUNK_TOKENS = 1 << 18


@dataclass(frozen=True, kw_only=True)
class ShardConfig:
    """`bertprep shard`: a token store in, shard files out; packing and masking are components."""

    tokens: Path = option(Path("tokens"), help="Token store written by `bertprep tokenize`.")
    out: Path = option(Path("shards"), help="Directory for the shard files and the run's manifest.")
    pack: PackConfig = field(default_factory=PackConfig)
    seed: int = option(12345, at_least=0, at_most=SEED_LIMIT, help="Seeds packing and masking (which documents go to val/test: --split-seed).")
    mask: MaskConfig = field(default_factory=MaskConfig)
    dupe_factor: int = option(1, at_least=1, at_most=1000, help="Write N differently masked copies (at most 1000).")
    split: str = option("0.98,0.01,0.01", help="Fractions of documents for train,val,test.")
    split_seed: int = option(0, at_least=0, at_most=SEED_LIMIT, help=(
        "Seeds which documents go to val/test; independent of --seed and --max-len, so runs at other lengths or "
        "seeds from one token store never train on each other's validation documents."))
    fmt: ShardFormat = option("arrow", flag="--format", help=(
        "arrow: uncompressed Arrow IPC, memory-mapped by the trainer; msgpack: msgpack records, zstd-compressed."))
    examples_per_shard: int = option(65536, at_least=1, at_most=1 << 24, help="Examples per part file.")
    workers: int = option(0, at_least=0, at_most=MAX_WORKERS,
                          help="Worker processes; 0 = all cores. Output is byte-identical for any value.")
    overwrite: bool = option(False, help="Replace shards of other settings found in --out.")
    progress: bool = True
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    fractions: tuple = field(init=False)

    def __post_init__(self):
        # Bounds on the fields (shards/options.py). --dupe-factor: BERT used 10; 1000 copies of a
        # corpus is past any use and each costs a full pass. --examples-per-shard: a part is
        # written from memory, and 2^24 examples of 512 tokens is already ~40 GB.
        check(self)
        if not 1 <= self.predictions <= self.max_len:
            raise ConfigError(f"--max-predictions must be between 1 and --max-len ({self.max_len}), "
                              f"got {self.mask.max_predictions}")
        object.__setattr__(self, "fractions", parse_split(self.split))

    @property
    def max_len(self) -> int:  # the file-name grammar's and the manifest's (read in many places here)
        return self.pack.max_len

    @property
    def predictions(self) -> int:
        return self.mask.slots(self.pack.max_len)

    def options(self) -> dict:
        """The settings that define the bytes of a run (not where or how fast it runs)."""
        return {"max_len": self.max_len, "seed": self.seed, "strategy": self.pack.strategy,
                "short_seq_prob": self.pack.short_seq_prob, "nsp": self.pack.nsp, "mask_prob": self.mask.mask_prob,
                "max_predictions": self.predictions, "whole_word": self.mask.whole_word,
                "dupe_factor": self.dupe_factor, "split": list(self.fractions), "split_seed": self.split_seed,
                "format": self.fmt,
                "examples_per_shard": self.examples_per_shard}


# ---- work done in worker processes: one (split, dupe, chunk) task at a time -------------------

_STORE: TokenStore | None = None


def _worker_init(tokens_dir: str) -> None:
    global _STORE  # one memory-mapped store per worker process, opened once (checked by the parent)
    _STORE = open_token_store(tokens_dir, verify=False)


def _pool_worker_init(tokens_dir: str, parent: int) -> None:
    # A pool worker whose parent is killed (SIGKILL, the OOM killer) would wait on its task queue
    # forever; a watcher thread ends it instead.
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="bertprep-parent-watch").start()
    _worker_init(tokens_dir)


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)


def vocab_tables(vocab: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """is_special (bracketed control tokens like [CLS]) and is_continuation (`##` pieces) per id."""
    is_special = np.fromiter((t.startswith("[") and t.endswith("]") and len(t) > 2 for t in vocab), bool, len(vocab))
    is_cont = np.fromiter((t.startswith("##") and len(t) > 2 for t in vocab), bool, len(vocab))
    return is_special, is_cont


def make_examples(store: TokenStore, docs: np.ndarray, pool: np.ndarray, rng: np.random.Generator, *,
                  pack: PackConfig, mask: MaskConfig, special: SpecialIds, is_special: np.ndarray,
                  is_cont: np.ndarray) -> dict[str, np.ndarray]:
    """Pack then mask one chunk of documents: the columns of its examples."""
    packed = pack_documents(store.ids, store.sent_offsets, store.doc_offsets, docs, cfg=pack,
                            special=special, rng=rng, random_doc_pool=pool)
    masked = mask_batch(packed.input_ids, packed.length, cfg=mask, mask_id=special.mask,
                        is_special=is_special, is_continuation=is_cont, rng=rng)
    columns = {
        "input_ids": masked.input_ids, "token_type_ids": packed.token_type_ids,
        "length": packed.length.astype(np.uint16), "masked_positions": masked.masked_positions,
        "masked_ids": masked.masked_ids, "num_masked": masked.num_masked,
    }
    if pack.nsp:
        columns["nsp_label"] = packed.nsp_label.astype(np.int8)
    if packed.doc_starts is not None:
        columns["doc_starts"], columns["num_docs"] = packed.doc_starts, packed.num_docs
    return columns


def chunk_columns(store: TokenStore, docs: np.ndarray, pool: np.ndarray, seed_position: tuple,
                  settings: dict) -> dict[str, np.ndarray]:
    """One (split, dupe, chunk) task, the same locally and on a cluster worker: its generator comes
    from its position (seed, stage, split, chunk, dupe), never from who runs it or when."""
    return make_examples(store, docs, pool, rng_for(*seed_position), **settings)


def chunk_stats(columns: dict[str, np.ndarray], nsp: bool) -> dict[str, int]:
    lengths = columns["length"].astype(np.int64)
    # [CLS] and [SEP]s per row: one pair per document piece in `pack` rows
    specials = 2 * columns["num_docs"].astype(np.int64) if "num_docs" in columns else (3 if nsp else 2)
    return {"examples": len(lengths), "real_tokens": int(lengths.sum()),
            "candidates": int((lengths - specials).clip(0).sum()), "masked": int(columns["num_masked"].sum())}


def _run_task(args) -> dict[str, np.ndarray]:
    docs, pool, seed_position, settings = args
    return chunk_columns(_STORE, docs, pool, seed_position, settings)


# ---- the run, in the parent process -----------------------------------------------------------

@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """One shard run per output directory at a time (`atomic.output_lock`, shared with tokenize)."""
    with output_lock(out, "shard"):
        yield


def _prepare_out(cfg: ShardConfig, label: str, run: dict) -> None:
    """Refuse an output directory holding shards of other settings, unless --overwrite; then clear
    this run's old files (by the name grammar only: never anything else in the folder)."""
    out = cfg.out
    own = naming.manifest_name(label, cfg.max_len, cfg.seed)
    others = []
    for p in sorted(out.iterdir()):
        if naming.is_manifest_name(p):
            if p.name == own:
                try:
                    same = read_manifest(p).get("run") == run
                except Exception:
                    same = False
                if not same:
                    others.append(p.name)
            else:
                others.append(p.name)
        elif naming.is_shard_name(p):
            sn = naming.parse_shard_name(p)
            if (sn.label, sn.max_len, sn.seed) != (label, cfg.max_len, cfg.seed):
                others.append(p.name)
    if others and not cfg.overwrite:
        raise InputError(f"{out}: holds shards of other settings ({others[0]}{' ...' if len(others) > 1 else ''}); "
                         "pass --overwrite to replace them or choose another --out")
    (out / own).unlink(missing_ok=True)  # first, so an interrupted re-run never looks complete
    for p in out.iterdir():
        if naming.is_shard_name(p) or (cfg.overwrite and naming.is_manifest_name(p)):
            p.unlink()
    remove_stale_temps(out)


def shard_writer_class(fmt: str):
    return ArrowShardWriter if fmt == "arrow" else MsgpackShardWriter


class _PartWriter:
    """Writes one split's examples into numbered part files of at most `per_shard` examples."""

    def __init__(self, cfg: ShardConfig, split: str, label: str, meta: dict):
        self.cfg, self.split, self.label = cfg, split, label
        self.meta = dict(meta, split=split)
        self.files: list[dict] = []
        self._writer = None

    def _open(self):
        name = naming.ShardName(self.split, self.label, self.cfg.max_len, self.cfg.seed, len(self.files), self.cfg.fmt)
        self._writer = shard_writer_class(self.cfg.fmt)(self.cfg.out / name.filename, self.meta)

    def write(self, columns: dict[str, np.ndarray]) -> None:
        n, start = len(columns["length"]), 0
        while start < n:
            if self._writer is None:
                self._open()
            take = min(n - start, self.cfg.examples_per_shard - self._writer.num_examples)
            self._writer.write({k: v[start:start + take] for k, v in columns.items()})
            start += take
            if self._writer.num_examples >= self.cfg.examples_per_shard:
                self._finish()

    def _finish(self):
        w, self._writer = self._writer, None
        sha = w.close()
        self.files.append({"name": w.path.name, "split": self.split, "examples": w.num_examples, "sha256": sha})

    def close(self) -> list[dict]:
        if self._writer is not None:
            self._finish()
        return self.files

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.discard()


def _remove_parts(out: Path, files: list[dict]) -> None:
    """Remove the parts a failed run completed: useless without the manifest (a re-run writes them
    again), and on a full disk their space is what the next run needs."""
    for f in files:
        (out / f["name"]).unlink(missing_ok=True)


def _ordered_results(tasks: list, workers: int, tokens_dir: Path) -> Iterator[dict]:
    """Task results in task order; at most 2 x workers in flight, so memory stays bounded."""
    if workers <= 1:
        _worker_init(str(tokens_dir))
        for t in tasks:
            yield _run_task(t)
        return
    with ProcessPoolExecutor(workers, initializer=_pool_worker_init, initargs=(str(tokens_dir), os.getpid())) as ex:
        pending = []
        it = iter(tasks)
        for t in it:
            pending.append(ex.submit(_run_task, t))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.pop(0).result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(ex.submit(_run_task, nxt))
            yield result


def run_shard(cfg: ShardConfig) -> dict:
    """Write the shards of `cfg` and their manifest; returns the manifest plus timing."""
    with environment_errors(cfg.out):  # a full disk or a read-only --out: one line, not a traceback
        return _run_shard(cfg)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What the driver and every cluster worker derive alike from the token store and the config."""

    store: TokenStore
    label: str
    settings: dict          # make_examples' keyword arguments
    meta: dict              # the shards' metadata, without `split`
    run: dict               # what identifies the run in the manifest
    doc_tokens: np.ndarray  # tokens per document
    splits: dict            # split name -> its documents, ascending


def plan_run(cfg: ShardConfig, verify: bool) -> RunPlan:
    store = open_token_store(cfg.tokens, verify=verify)
    tok_meta = store.manifest["tokenizer"]
    label = store.manifest["label"]
    vocab = (cfg.tokens / "vocab.txt").read_text(encoding="utf-8").split("\n")[:tok_meta["vocab_size"]]
    if len(vocab) != tok_meta["vocab_size"]:
        raise InputError(f"{cfg.tokens / 'vocab.txt'}: has {len(vocab)} tokens, manifest says {tok_meta['vocab_size']}")
    is_special, is_cont = vocab_tables(vocab)
    sp = tok_meta["special_ids"]
    special = SpecialIds(pad=sp["pad"], unk=sp["unk"], cls=sp["cls"], sep=sp["sep"], mask=sp["mask"])
    pack, mask = cfg.pack, dataclasses.replace(cfg.mask, max_predictions=cfg.predictions)
    settings = dict(pack=pack, mask=mask, special=special, is_special=is_special, is_cont=is_cont)
    run = {"options": cfg.options(), "tokens": {"label": label, "files": store.manifest["files"],
                                                "tokenizer_sha256": tok_meta["sha256"]}}
    meta = {"format": schema.FORMAT_NAME, "format_version": schema.FORMAT_VERSION, "max_len": cfg.max_len,
            "max_predictions": cfg.predictions, "seed": cfg.seed, "strategy": pack.strategy,
            "mask_prob": mask.mask_prob, "whole_word": mask.whole_word, "nsp": pack.nsp,
            "short_seq_prob": pack.short_seq_prob, "dupe_factor": cfg.dupe_factor,
            "vocab_size": tok_meta["vocab_size"], "id_dtype": schema.id_dtype(tok_meta["vocab_size"]).name,
            "special_ids": sp, "tokenizer_sha256": tok_meta["sha256"], "label": label}
    doc_tokens = store.sent_offsets[store.doc_offsets[1:]] - store.sent_offsets[store.doc_offsets[:-1]]
    splits = assign_documents(store.num_documents, cfg.fractions, cfg.split_seed)
    return RunPlan(store, label, settings, meta, run, doc_tokens, splits)


def new_sums(docs: np.ndarray) -> dict:
    return {"documents": int(len(docs)), "examples": 0, "real_tokens": 0, "masked": 0, "candidates": 0}


def _run_shard(cfg: ShardConfig) -> dict:
    t0 = time.perf_counter()
    plan = plan_run(cfg, verify=True)
    cfg.out.mkdir(parents=True, exist_ok=True)
    with _lock(cfg.out):
        _prepare_out(cfg, plan.label, plan.run)
        with _unfinished(cfg.out / naming.unfinished_name(plan.label, cfg.max_len, cfg.seed)):
            manifest, all_examples, chunks, where = _write_run(cfg, plan)
    seconds = time.perf_counter() - t0
    return {"manifest": manifest, "seconds": seconds, "examples_per_s": all_examples / seconds, "chunks": chunks,
            "cluster": where}


@contextlib.contextmanager
def _unfinished(marker: Path) -> Iterator[None]:
    """Marks a run's parts as not to be used until its manifest is written. A run killed inside the
    block leaves the marker and readers (verify, the trainer) refuse its parts; any other exit
    (done, or failed with its parts removed) removes it."""
    write_json(marker, {"pid": os.getpid()})
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)


def _write_run(cfg: ShardConfig, plan: "RunPlan") -> tuple[dict, int, int, str | None]:
    """The parts and the manifest of a run; (manifest, examples, chunks, cluster address)."""
    if cfg.cluster.address:
        from bertprep.preprocess.sharding_cluster import shard_on_cluster

        files, sums, chunks, where = shard_on_cluster(cfg, plan)
    else:
        files, sums, chunks = _shard_here(cfg, plan)
        where = None
    stats, empty = {}, []
    for split, s in sums.items():
        if s["examples"] == 0:
            empty.append(split)
        stats[split] = {
            "documents": s["documents"], "examples": s["examples"], "real_tokens": s["real_tokens"],
            "mask_rate": round(s["masked"] / max(s["candidates"], 1), 6),
            "padding_fraction": round(1 - s["real_tokens"] / max(s["examples"] * cfg.max_len, 1), 6),
            "packing_efficiency": round(s["real_tokens"] / max(s["examples"] * cfg.max_len, 1), 6),
        }
    if not files:
        raise InputError(f"{cfg.tokens}: the token store yields no examples at --max-len {cfg.max_len}")
    all_real = sum(v["real_tokens"] for v in stats.values())
    all_examples = sum(v["examples"] for v in stats.values())
    body = {
        "label": plan.label, "run": plan.run, "meta": plan.meta, "tokens_dir": str(cfg.tokens), "files": files,
        "splits": stats, "empty_splits": empty,
        "mask_rate": round(sum(v["mask_rate"] * v["examples"] for v in stats.values()) / max(all_examples, 1), 6),
        "padding_fraction": round(1 - all_real / max(all_examples * cfg.max_len, 1), 6),
        "packing_efficiency": round(all_real / max(all_examples * cfg.max_len, 1), 6),  # real tokens / slots
    }
    try:
        manifest = write_manifest(cfg.out / naming.manifest_name(plan.label, cfg.max_len, cfg.seed), body)
    except BaseException:
        _remove_parts(cfg.out, files)
        raise
    return manifest, all_examples, chunks, where


def _shard_here(cfg: ShardConfig, plan: RunPlan) -> tuple[list[dict], dict, int]:
    """Tasks on this machine's worker processes, results written here in task order."""
    from tqdm import tqdm

    workers = cfg.workers or os.cpu_count() or 1
    files: list[dict] = []
    sums: dict[str, dict] = {}
    n_tasks = 0
    total_tokens = int(plan.doc_tokens.sum()) * cfg.dupe_factor
    bar = tqdm(total=total_tokens, unit="tok", unit_scale=True, desc="sharding", leave=False,
               disable=not (cfg.progress and sys.stderr.isatty()))
    try:
        for split_index, split in enumerate(naming.SPLITS):
            docs = plan.splits[split]
            chunks = chunk_documents(docs, plan.doc_tokens, CHUNK_TOKENS)
            tasks = [(c, docs, (cfg.seed, STAGE_EXAMPLES, split_index, ci, dupe), plan.settings)
                     for dupe in range(cfg.dupe_factor) for ci, c in enumerate(chunks)]
            n_tasks += len(tasks)
            writer = _PartWriter(cfg, split, plan.label, plan.meta)
            s = sums[split] = new_sums(docs)
            try:
                for (chunk, *_), columns in zip(tasks, _ordered_results(tasks, workers, cfg.tokens)):
                    writer.write(columns)
                    for k, v in chunk_stats(columns, cfg.pack.nsp).items():
                        s[k] += v
                    bar.update(int(plan.doc_tokens[chunk].sum()))
                files += writer.close()
            except BaseException:
                writer.discard()
                _remove_parts(cfg.out, files + writer.files)
                raise
    finally:
        bar.close()
    return files, sums, n_tasks
