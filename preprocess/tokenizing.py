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
"""

from __future__ import annotations

import os
import queue as queue_mod
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from bertprep.preprocess.corpus import DOC_BREAK, FORMATS, ReadStats, check_input, detect_format, read_corpus
from bertprep.preprocess.reference import ReferenceEncoder
from bertprep.preprocess.vocab import (VocabConfig, load_tokenizer_json, load_vocab_txt, save_tokenizer,
                                       special_ids, train_tokenizer)
from bertprep.shards import tokenstore
from bertprep.shards.atomic import environment_errors, remove_stale_temps
from bertprep.shards.errors import ConfigError, InputError
from bertprep.shards.naming import check_label, default_label

BATCH_CHARS = 1 << 21
BACKENDS = ("native", "tokenizers")


@dataclass(frozen=True, kw_only=True)
class TokenizeConfig:
    inputs: tuple[Path, ...]
    out: Path = Path("tokens")
    fmt: str = "auto"                 # --format
    vocab: VocabConfig = field(default_factory=VocabConfig)
    label: str | None = None          # --label (default: first dotted part of the first input's name)
    workers: int = 0                  # --workers; 0 = all cores
    backend: str = "native"           # --backend: native (C, falls back to tokenizers) or tokenizers
    overwrite: bool = False           # --overwrite
    progress: bool = True             # progress bar on a terminal

    def __post_init__(self):
        if not self.inputs:
            raise ConfigError("name at least one corpus file")
        if self.fmt not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {self.fmt!r}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.label is not None:
            check_label(self.label)

    @property
    def resolved_label(self) -> str:
        return self.label or default_label(self.inputs[0])


def iter_paragraph_batches(paths: list[tuple[Path, str]], stats: ReadStats, on_bytes=None,
                           size: int = BATCH_CHARS) -> Iterator[tuple[list[str], bytes]]:
    """All inputs' paragraphs in order, in batches of about `size` characters, each batch with one
    flag per paragraph: 1 when the paragraph opens a document."""
    paragraphs: list[str] = []
    opens = bytearray()
    chars = 0
    new_doc = True
    for path, fmt in paths:
        for para in read_corpus(path, fmt, stats, on_bytes):
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


def make_encoder(tok, backend: str, threads: int):
    """The encoder for `backend`, and why the native one was not used (None when it was or not asked)."""
    if backend == "native":
        from bertprep.preprocess import native

        why = native.unsupported(tok)
        if why is None:
            return native.NativeEncoder(tok, threads), None
        return ReferenceEncoder(tok), why
    return ReferenceEncoder(tok), None


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
                  "vocab_size": v.vocab_size, "lowercase": v.lowercase, "min_frequency": v.min_frequency},
    }


def _prepare_out(cfg: TokenizeConfig, run_key: dict) -> None:
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise InputError(f"{out}: output directory is not writable")
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
    # The old manifest goes first, so a run killed from here on never leaves a store that looks complete.
    manifest_path.unlink(missing_ok=True)
    remove_stale_temps(out)


def _load_or_train(cfg: TokenizeConfig, resolved, total_bytes: int):
    v = cfg.vocab
    if v.vocab:
        check_input(v.vocab)
        return load_vocab_txt(v.vocab, v.lowercase), "vocab.txt"
    if v.tokenizer:
        check_input(v.tokenizer)
        return load_tokenizer_json(v.tokenizer), "tokenizer.json"
    bar = _progress(2 * total_bytes, cfg.progress, "training vocab")

    def texts():
        paragraphs = (p for path, fmt in resolved for p in read_corpus(path, fmt, ReadStats(), bar.update))
        return _in_background(p for p in paragraphs if p is not DOC_BREAK)

    with bar:
        tok = train_tokenizer(texts, v)
    return tok, "trained"


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
    if cfg.workers:
        # tokenizers sizes its Rust thread pool from this variable when it first encodes in parallel.
        os.environ["RAYON_RS_NUM_THREADS"] = str(cfg.workers)
    resolved = [(p, detect_format(p) if cfg.fmt == "auto" else cfg.fmt) for p in cfg.inputs]
    run_key = _run_key(cfg, resolved)
    _prepare_out(cfg, run_key)
    total_bytes = sum(p.stat().st_size for p in cfg.inputs)

    tok, source = _load_or_train(cfg, resolved, total_bytes)
    specials = special_ids(tok, source)
    tok_sha = save_tokenizer(tok, cfg.out)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)

    threads = cfg.workers or len(os.sched_getaffinity(0))
    encoder, fallback_reason = make_encoder(tok, cfg.backend, threads)
    writer = tokenstore.TokenStoreWriter(cfg.out, vocab_size)
    stats = ReadStats()
    unk = 0
    try:
        with _progress(total_bytes, cfg.progress, "tokenizing") as bar:
            batches = (encoder.prepare(*batch) for batch in iter_paragraph_batches(resolved, stats, bar.update))
            for prepared in _in_background(batches):
                ids, lengths, starts = encoder.encode(prepared)
                unk += int(np.count_nonzero(ids == specials["unk"]))
                writer.append(ids, lengths, starts)
        if writer.num_tokens == 0:
            raise InputError(f"{cfg.inputs[0]}: the corpus holds no text to tokenize")
        manifest = writer.close({
            "label": cfg.resolved_label,
            "run": run_key,
            "tokenizer": {"sha256": tok_sha, "source": source, "vocab_size": vocab_size, "special_ids": specials,
                          "lowercase": cfg.vocab.lowercase},
            "counts": {"unk": unk, "unk_rate": round(unk / max(writer.num_tokens, 1), 6),
                       "invalid_utf8": stats.invalid_utf8, "lines_cut": stats.lines_cut,
                       "bytes_read": stats.bytes_read},
        })
    except BaseException:
        writer.discard()
        raise
    finally:
        encoder.close()
    seconds = time.perf_counter() - t0
    return {"manifest": manifest, "seconds": seconds, "tokens_per_s": manifest["counts"]["tokens"] / seconds,
            "backend": encoder.name, "fallback_reason": fallback_reason}
