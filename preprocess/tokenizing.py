"""`bertprep tokenize`: corpus files -> paragraphs -> sentences -> WordPiece ids -> a token store.

The corpus is streamed: a reader thread turns files into batches of paragraphs (reading, decoding,
WikiText rules: Python work) while the main thread encodes the previous batch and appends the ids
to the store. Memory holds a few batches, never the corpus. Two backends give the same ids:
  native      (default) sentence splitting and WordPiece in C with the GIL released, on --workers
              threads (`preprocess/native.py`); a sentence with a character the C tables do not
              cover goes to `tokenizers`, in place
  tokenizers  Python's sentence splitter, then HuggingFace `tokenizers` (`preprocess/reference.py`,
              which also defines what a sentence's ids are)
The output is a pure function of the inputs and options, never of the backend or worker count, so
a re-run is byte-identical.

Each input is cut into spans of about --chunk-mb at document boundaries found in its bytes
(`corpus.plan_spans`), which read exactly as the whole file does. Locally the spans are read one
after another; with --cluster each span is a task on a Dask worker (`tokenize_chunk`), which
writes the span's ids to a piece file in --out, and the driver appends the pieces in span order
with the same `TokenStoreWriter` and writes the manifest last (`preprocess/cluster.py` talks to
Dask). Both run the same loop (`encode_stream`) on the same spans, so they cannot drift apart.
Vocab training, when no vocab is given, comes first: on a sample of the corpus (--vocab-sample-mb,
`preprocess/sampling.py`), read here or, with --cluster, by the workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import queue as queue_mod
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from bertprep.preprocess.corpus import (DOC_BREAK, InputFormat, ReadStats, Span, check_input, detect_format, plan_spans,
                                        read_corpus)
from bertprep.preprocess.cluster import ClusterConfig
from bertprep.preprocess.reference import ReferenceEncoder
from bertprep.preprocess.vocab import VocabConfig, load_tokenizer_json, load_vocab_txt, special_ids, tokenizer_files
from bertprep.shards import tokenstore
from bertprep.shards.atomic import environment_errors, output_lock, remove_stale_temps, sha256_file
from bertprep.shards.errors import ConfigError, InputError
from bertprep.shards.naming import check_label, default_label
from bertprep.shards.options import MAX_WORKERS, check, option

BATCH_CHARS = 1 << 21
APPEND_SENTENCES = 1 << 20  # a piece is appended to the store this many sentences at a time
Chunk = tuple  # (path, format, span): one span of one input, what a cluster task tokenizes


@dataclass(frozen=True, kw_only=True)
class TokenizeConfig:
    """`bertprep tokenize`: corpus files in, a token store out."""

    inputs: tuple[Path, ...]
    out: Path = option(Path("tokens"), help="Directory of the token store to write.")
    fmt: InputFormat = option("auto", flag="--format", help=(
        "Input layout; auto = by suffix (.jsonl, .parquet), WikiText when ' = Title = ' headings appear, else plain "
        "text (a paragraph per line, blank line between documents)."))
    vocab: VocabConfig = field(default_factory=VocabConfig)
    label: str | None = option(None, help=(
        "Name of this corpus in shard file names [default: first dotted part of the first input's name, e.g. "
        "'wiki' for wiki.train.tokens]."))
    workers: int = option(0, at_least=0, at_most=MAX_WORKERS, help="Encoder threads; 0 = all cores.")
    backend: Literal["native", "tokenizers"] = option("native", help=(
        "native: BERT WordPiece in C, the same ids as tokenizers, several times faster (used when the tokenizer is "
        "BERT's pipeline, else tokenizers); tokenizers: HuggingFace tokenizers, the reference."))
    overwrite: bool = option(False, help="Replace a token store of a different run in --out.")
    progress: bool = True             # progress bar on a terminal
    chunk_mb: float = option(64.0, above=0, at_most=1 << 16, help=(
        "Inputs are cut into spans of about this size at document boundaries (a compressed file is one span): the "
        "unit of work on a --cluster. The output is the same for any value."))
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def __post_init__(self):
        check(self)  # --chunk-mb: up to 64 GB spans (the output does not depend on it)
        if not self.inputs:
            raise ConfigError("name at least one corpus file")
        if self.label is not None:
            check_label(self.label)

    @property
    def resolved_label(self) -> str:
        return self.label or default_label(self.inputs[0])

    @property
    def chunk_bytes(self) -> int:
        return max(1, int(self.chunk_mb * (1 << 20)))


def iter_paragraph_batches(chunks: list[Chunk], stats: ReadStats, on_bytes=None,
                           size: int = BATCH_CHARS) -> Iterator[tuple[list[str], bytes]]:
    """The paragraphs of all chunks (path, format, span) in order, in batches of about `size`
    characters, each batch with one flag per paragraph: 1 when the paragraph opens a document."""
    paragraphs: list[str] = []
    opens = bytearray()
    chars = 0
    new_doc = True
    for path, fmt, span in chunks:
        for para in read_corpus(path, fmt, stats, on_bytes, span):
            if para is DOC_BREAK:
                new_doc = True
                continue
            paragraphs.append(para)
            opens.append(new_doc)
            new_doc = False
            chars += len(para)
            if chars >= size:
                yield paragraphs, bytes(opens)
                paragraphs, opens, chars = [], bytearray(), 0
    if paragraphs:
        yield paragraphs, bytes(opens)


def encoder_choice(tok, backend: str) -> tuple[str, str | None]:
    """The encoder `backend` gets for `tok`, and why the native one was not used (None when it was
    or was not asked for)."""
    if backend == "native":
        from bertprep.preprocess import native

        why = native.unsupported(tok)
        return ("native", None) if why is None else ("tokenizers", why)
    return "tokenizers", None


def make_encoder(tok, backend: str, threads: int):
    """The encoder for `backend`, and why the native one was not used (None when it was or not asked)."""
    name, why = encoder_choice(tok, backend)
    if name == "native":
        from bertprep.preprocess import native

        return native.NativeEncoder(tok, threads), None
    return ReferenceEncoder(tok), why


def encode_stream(encoder, chunks: list[Chunk], stats: ReadStats, on_bytes=None) -> Iterator[tuple]:
    """The tokenizing loop of a whole local run and of one cluster task alike: (ids, tokens per
    sentence, sentence opens a document) per batch, reading in a thread ahead of the encoder."""
    batches = (encoder.prepare(*batch) for batch in iter_paragraph_batches(chunks, stats, on_bytes))
    for prepared in _in_background(batches):
        yield encoder.encode(prepared)


def _in_background(gen: Iterator, depth: int = 3) -> Iterator:
    """Run a generator in a thread, `depth` items ahead; its exceptions re-raise in the consumer."""
    q: queue_mod.Queue = queue_mod.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue_mod.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # handed to the consumer, which re-raises it
            q.put(e)

    t = threading.Thread(target=produce, daemon=True, name="bertprep-reader")
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm
    import sys

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not (enabled and sys.stderr.isatty()),
                leave=False, dynamic_ncols=True)


def _run_key(cfg: TokenizeConfig, resolved: list[tuple[Path, str]]) -> dict:
    """What identifies a run: inputs (name, size, layout) and options. A different key in the output
    directory means another run's data, which is only replaced with --overwrite."""
    v = cfg.vocab
    return {
        "inputs": [{"path": str(p), "bytes": p.stat().st_size, "format": fmt} for p, fmt in resolved],
        "label": cfg.resolved_label,
        "vocab": {"vocab": str(v.vocab) if v.vocab else None, "tokenizer": str(v.tokenizer) if v.tokenizer else None,
                  "vocab_size": v.vocab_size, "lowercase": v.lowercase, "min_frequency": v.min_frequency,
                  "vocab_sample_mb": v.vocab_sample_mb},
    }


def _prepare_out(cfg: TokenizeConfig, run_key: dict) -> None:
    """Refuse an --out holding another run's store, unless --overwrite; remove what killed runs
    left. The old store itself stays as it is: `TokenStoreWriter.close` replaces it once the new
    one is complete. Called with the output lock held."""
    out = cfg.out
    manifest_path = out / tokenstore.MANIFEST
    if manifest_path.exists():
        try:
            old = tokenstore.read_manifest(out)
        except Exception:
            old = {}
        if old.get("run") != run_key and not cfg.overwrite:
            raise InputError(f"{out}: holds the token store of a different run "
                             f"({', '.join(i['path'] for i in old.get('run', {}).get('inputs', [])) or 'unknown inputs'}); "
                             "pass --overwrite to replace it or choose another --out")
    remove_stale_temps(out)


def _open_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise InputError(f"{out}: output directory is not writable")


def _written_over(cfg: TokenizeConfig, path: Path) -> str | None:
    """The file of --out that `path` (an input) is, when this run writes one by that name."""
    for name in tokenstore.DATA_FILES + tokenstore.TOKENIZER_FILES + (tokenstore.MANIFEST,):
        with contextlib.suppress(OSError):
            if os.path.samefile(path, cfg.out / name):
                return name
    return None


def _check_inputs_survive(cfg: TokenizeConfig, files: dict[str, bytes] | None) -> None:
    """Never write over an input. A corpus file that is one of --out's files is refused; so is a
    --vocab or --tokenizer that is, unless this run would write the very same bytes there (then
    the file is left untouched: re-running into the directory whose vocab.txt it reads)."""
    for p in cfg.inputs:
        if name := _written_over(cfg, p):
            raise InputError(f"{p}: is an input and also the {name} this run writes into --out {cfg.out}; "
                             "choose another --out")
    if files is None:
        return
    for flag, p in (("--vocab", cfg.vocab.vocab), ("--tokenizer", cfg.vocab.tokenizer)):
        if p is not None and (name := _written_over(cfg, p)):
            if files.get(name) != Path(p).read_bytes():
                raise InputError(f"{p}: is the {flag} this run reads and the {name} it would write into --out "
                                 f"{cfg.out} (with other bytes); copy it elsewhere or choose another --out")


def _load_or_train(cfg: TokenizeConfig, resolved, session):
    """The tokenizer, where it comes from, and what the vocab was trained on (None: not trained)."""
    v = cfg.vocab
    if v.vocab:
        check_input(v.vocab, "--vocab")
        return load_vocab_txt(v.vocab, v.lowercase), "vocab.txt", None
    if v.tokenizer:
        check_input(v.tokenizer, "--tokenizer")
        return load_tokenizer_json(v.tokenizer), "tokenizer.json", None
    from bertprep.preprocess import sampling

    tok, sample = sampling.train_vocab(v, resolved, Path(os.path.abspath(cfg.out)), session, cfg.progress,
                                       cfg.chunk_bytes)
    return tok, "trained", sample


def run_tokenize(cfg: TokenizeConfig) -> dict:
    """Tokenize the corpus into `cfg.out`; returns the manifest plus timing for the summary line."""
    with environment_errors(cfg.out):  # a full disk or a read-only --out: one line, not a traceback
        return _run_tokenize(cfg)


def _run_tokenize(cfg: TokenizeConfig) -> dict:
    t0 = time.perf_counter()
    for p in cfg.inputs:
        check_input(p)
        if p.stat().st_size == 0:
            raise InputError(f"{p}: empty file, no text to tokenize")
    for given, flag in ((cfg.vocab.vocab, "--vocab"), (cfg.vocab.tokenizer, "--tokenizer")):
        if given:  # before --out is touched: a refusal writes nothing
            check_input(given, flag)
    if cfg.workers:
        # tokenizers sizes its Rust thread pool from this variable when it first encodes in parallel.
        os.environ["RAYON_RS_NUM_THREADS"] = str(cfg.workers)
    resolved = [(p, detect_format(p) if cfg.fmt == "auto" else cfg.fmt) for p in cfg.inputs]
    run_key = _run_key(cfg, resolved)
    _check_inputs_survive(cfg, None)
    _open_out(cfg.out)
    total_bytes = sum(p.stat().st_size for p in cfg.inputs)

    with contextlib.ExitStack() as stack:
        stack.enter_context(output_lock(cfg.out, "tokenize"))
        _prepare_out(cfg, run_key)
        # A cluster is reached and checked first: a wrong address fails in seconds, not after the vocab.
        session = _open_cluster(cfg, stack) if cfg.cluster.address else None
        tok, source, sample = _load_or_train(cfg, resolved, session)
        specials = special_ids(tok, source)
        files = tokenizer_files(tok)
        _check_inputs_survive(cfg, files)
        tok_sha = hashlib.sha256(files["tokenizer.json"]).hexdigest()
        vocab_size = tok.get_vocab_size(with_added_tokens=True)
        chunks = [(p, fmt, span) for p, fmt in resolved for span in plan_spans(p, fmt, cfg.chunk_bytes)]

        writer = tokenstore.TokenStoreWriter(cfg.out, vocab_size)
        try:
            staged = {name: writer.stage(name, data) for name, data in files.items()}
            if session:
                counts, backend, fallback_reason = _encode_on_cluster(cfg, session, chunks, tok, tok_sha,
                                                                      staged["tokenizer.json"], vocab_size,
                                                                      specials, writer)
            else:
                counts, backend, fallback_reason = _encode_here(cfg, tok, chunks, specials, writer, total_bytes)
            if writer.num_tokens == 0:
                raise InputError(f"{cfg.inputs[0]}: the corpus holds no text to tokenize")
            manifest = writer.close({
                "label": cfg.resolved_label,
                "run": run_key,
                "tokenizer": {"sha256": tok_sha, "source": source, "vocab_size": vocab_size,
                              "special_ids": specials, "lowercase": cfg.vocab.lowercase},
                "counts": counts,
            })
        except BaseException:
            writer.discard()
            raise
        where = session.describe() if session else None
    seconds = time.perf_counter() - t0
    return {"manifest": manifest, "seconds": seconds, "tokens_per_s": manifest["counts"]["tokens"] / seconds,
            "backend": backend, "fallback_reason": fallback_reason, "chunks": len(chunks), "cluster": where,
            "vocab_sample": sample}


def _counts(unk: int, tokens: int, stats: ReadStats) -> dict:
    return {"unk": unk, "unk_rate": round(unk / max(tokens, 1), 6), "invalid_utf8": stats.invalid_utf8,
            "lines_cut": stats.lines_cut, "bytes_read": stats.bytes_read}


def _encode_here(cfg: TokenizeConfig, tok, chunks: list[Chunk], specials: dict, writer, total_bytes: int):
    """This process reads the spans in order and encodes on --workers threads."""
    threads = cfg.workers or len(os.sched_getaffinity(0))
    encoder, fallback_reason = make_encoder(tok, cfg.backend, threads)
    stats = ReadStats()
    unk = 0
    try:
        with _progress(total_bytes, cfg.progress, "tokenizing") as bar:
            for ids, lengths, starts in encode_stream(encoder, chunks, stats, bar.update):
                unk += int(np.count_nonzero(ids == specials["unk"]))
                writer.append(ids, lengths, starts)
    finally:
        encoder.close()
    return _counts(unk, writer.num_tokens, stats), encoder.name, fallback_reason


# ---- on a cluster: one task per span, run on a Dask worker ------------------------------------

@dataclass(frozen=True)
class ChunkJob:
    """What every tokenize task of one run shares (small: it travels with each task)."""

    out: str               # absolute --out: holds the pieces the tasks write
    tokenizer: str         # the tokenizer.json the driver staged in --out (a temporary name until the end)
    tokenizer_sha256: str  # its sha256, which each worker checks it reads
    backend: str
    vocab_size: int
    unk_id: int
    piece_prefix: str      # names this run's pieces (`cluster.piece_prefix`)


_ENCODERS: dict[tuple, object] = {}
_ENCODERS_LOCK = threading.Lock()


def _worker_encoder(job: ChunkJob):
    """One encoder per worker process and run (the native tables take a fraction of a second)."""
    key = (job.out, job.tokenizer_sha256, job.backend)
    with _ENCODERS_LOCK:
        if key not in _ENCODERS:
            from tokenizers import Tokenizer

            path = Path(job.tokenizer)
            if sha256_file(path) != job.tokenizer_sha256:
                raise InputError(f"{path}: this worker reads another tokenizer.json than the driver wrote; "
                                 "--out must be one directory that every worker shares")
            for old in _ENCODERS.values():
                old.close()
            _ENCODERS.clear()
            _ENCODERS[key] = make_encoder(Tokenizer.from_file(str(path)), job.backend, 1)[0]
        return _ENCODERS[key]


def tokenize_chunk(job: ChunkJob, task: tuple[int, str, str, Span | None]) -> dict:
    """A cluster task: tokenize one span into a piece file in --out. Returns the piece's name (new
    for every attempt, so a retried or duplicated task never writes over another's file) and the
    span's counts."""
    index, path, fmt, span = task
    encoder = _worker_encoder(job)
    stats = ReadStats()
    unk = 0
    name = f"{job.piece_prefix}{index:06d}-{secrets.token_hex(4)}.tmp"
    with tokenstore.TokenPieceWriter(Path(job.out) / name, job.vocab_size) as piece:
        for ids, lengths, starts in encode_stream(encoder, [(Path(path), fmt, span)], stats):
            unk += int(np.count_nonzero(ids == job.unk_id))
            piece.append(ids, lengths, starts)
    return {"piece": name, "unk": unk, "tokens": piece.num_tokens, **dataclasses.asdict(stats)}


def _append_piece(writer, path: Path) -> None:
    ids, lengths, starts = tokenstore.read_token_piece(path)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for a in range(0, len(lengths), APPEND_SENTENCES):
        b = min(a + APPEND_SENTENCES, len(lengths))
        writer.append(ids[offsets[a]:offsets[b]], lengths[a:b], starts[a:b].astype(bool))


def _open_cluster(cfg: TokenizeConfig, stack: contextlib.ExitStack):
    from bertprep.preprocess import cluster

    out = Path(os.path.abspath(cfg.out))
    session = stack.enter_context(cluster.open_session(cfg.cluster.address, cfg.cluster.timeout, out))
    session.check_workers(files=[Path(os.path.abspath(p)) for p in cfg.inputs], shared_dir=out)
    return session


def _encode_on_cluster(cfg: TokenizeConfig, session, chunks: list[Chunk], tok, tok_sha: str, tok_path: Path,
                       vocab_size: int, specials: dict, writer):
    """Each span a task on the cluster; the pieces are appended here in span order."""
    from bertprep.preprocess import cluster

    backend, fallback_reason = encoder_choice(tok, cfg.backend)
    out = Path(os.path.abspath(cfg.out))
    job = ChunkJob(out=str(out), tokenizer=os.path.abspath(tok_path), tokenizer_sha256=tok_sha, backend=cfg.backend,
                   vocab_size=vocab_size, unk_id=specials["unk"], piece_prefix=session.piece_prefix)
    tasks = [(i, os.path.abspath(p), fmt, span) for i, (p, fmt, span) in enumerate(chunks)]
    stats = ReadStats()
    unk = 0
    with cluster.Progress("tokenizing", len(tasks), "B", cfg.progress) as progress:
        for r in session.ordered(tokenize_chunk, job, tasks, "tokenize"):
            piece = out / r["piece"]
            _append_piece(writer, piece)
            piece.unlink()
            unk += r["unk"]
            for k in ("bytes_read", "invalid_utf8", "lines_cut"):
                setattr(stats, k, getattr(stats, k) + r[k])
            progress.chunk_done(r["bytes_read"])
    return _counts(unk, writer.num_tokens, stats), backend, fallback_reason
