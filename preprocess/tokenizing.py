"""`bertprep tokenize`: corpus files -> sentences -> WordPiece ids -> a token store.

The corpus is streamed: a reader thread turns files into batches of sentences (reading, decoding,
WikiText rules, sentence splitting: Python work) while the main thread encodes the previous batch
with `tokenizers`' `encode_batch_fast` (Rust, parallel, GIL released) and appends the ids to the
store. Memory holds a few batches, never the corpus. The output is a pure function of the inputs
and options, so a re-run is byte-identical.
"""

from __future__ import annotations

import os
import queue as queue_mod
import threading
import time
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Iterator

import numpy as np

from bertprep.preprocess.corpus import DOC_BREAK, FORMATS, ReadStats, check_input, detect_format, read_corpus
from bertprep.preprocess.sentences import split_sentences
from bertprep.preprocess.vocab import (VocabConfig, load_tokenizer_json, load_vocab_txt, save_tokenizer,
                                       special_ids, train_tokenizer)
from bertprep.shards import tokenstore
from bertprep.shards.atomic import remove_stale_temps
from bertprep.shards.errors import ConfigError, InputError
from bertprep.shards.naming import check_label, default_label

BATCH_SENTENCES = 16384
GROUP_SENTENCES = 32
SENTENCE_END = " [SEP] "


@dataclass(frozen=True, kw_only=True)
class TokenizeConfig:
    inputs: tuple[Path, ...]
    out: Path = Path("tokens")
    fmt: str = "auto"                 # --format
    vocab: VocabConfig = field(default_factory=VocabConfig)
    label: str | None = None          # --label (default: first dotted part of the first input's name)
    workers: int = 0                  # --workers; 0 = all cores
    overwrite: bool = False           # --overwrite
    progress: bool = True             # progress bar on a terminal

    def __post_init__(self):
        if not self.inputs:
            raise ConfigError("name at least one corpus file")
        if self.fmt not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {self.fmt!r}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        if self.label is not None:
            check_label(self.label)

    @property
    def resolved_label(self) -> str:
        return self.label or default_label(self.inputs[0])


@dataclass
class SentenceBatch:
    """Groups of consecutive sentences of one document, each group one string for the encoder."""

    texts: list[str]
    starts_document: list[bool]  # per group: its first sentence opens a document


def iter_sentence_batches(paths: list[tuple[Path, str]], stats: ReadStats, on_bytes=None,
                          size: int = BATCH_SENTENCES) -> Iterator[SentenceBatch]:
    """All inputs' sentences in order, in batches of about `size` sentences.

    The encoder's cost is mostly per item, not per character, so sentences are not encoded one by
    one: up to GROUP_SENTENCES consecutive sentences of a document form one string in which each
    sentence ends with ` [SEP] `. `[SEP]` is a special token that the tokenizer splits out before
    normalizing, and sentences meet at whitespace, so every sentence gets exactly the ids it would
    get alone; `encode_batch` then cuts them apart at the [SEP] ids in numpy.
    """
    batch = SentenceBatch([], [])
    group: list[str] = []
    group_starts = False
    n_sentences = 0
    new_doc = True

    def close_group():
        nonlocal group, group_starts
        if group:
            batch.texts.append(SENTENCE_END.join(group) + SENTENCE_END)
            batch.starts_document.append(group_starts)
            group, group_starts = [], False

    for path, fmt in paths:
        for para in read_corpus(path, fmt, stats, on_bytes):
            if para is DOC_BREAK:
                close_group()
                new_doc = True
                continue
            for sentence in split_sentences(para):
                if not group:
                    group_starts = new_doc
                group.append(sentence)
                new_doc = False
                n_sentences += 1
                if len(group) >= GROUP_SENTENCES:
                    close_group()
            if n_sentences >= size:
                close_group()
                yield batch
                batch, n_sentences = SentenceBatch([], []), 0
    close_group()
    if batch.texts:
        yield batch


def encode_batch(tok, batch: SentenceBatch, special: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids without specials, tokens per sentence, sentence opens a document) for one batch."""
    id_lists = [e.ids for e in tok.encode_batch_fast(batch.texts, add_special_tokens=False)]
    counts = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
    ids = np.fromiter(chain.from_iterable(id_lists), dtype=np.int64, count=int(counts.sum()))
    # Special-token strings written in the text itself ([CLS], [MASK], [PAD]) are not text: drop them.
    drop = (ids == special["cls"]) | (ids == special["mask"]) | (ids == special["pad"])
    if drop.any():
        ids = ids[~drop]
    ends = np.flatnonzero(ids == special["sep"])  # every sentence ends with one (a literal [SEP] splits one)
    lengths = np.diff(np.concatenate([[-1], ends])) - 1
    # The first sentence of each group carries the group's document flag.
    sep_per_group = np.fromiter((lst.count(special["sep"]) for lst in id_lists), dtype=np.int64, count=len(id_lists))
    first = np.concatenate([[0], np.cumsum(sep_per_group)[:-1]])
    starts = np.zeros(len(ends), dtype=bool)
    has = sep_per_group > 0
    starts[first[has]] = np.asarray(batch.starts_document, dtype=bool)[has]
    return np.delete(ids, ends), lengths, starts


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

    writer = tokenstore.TokenStoreWriter(cfg.out, vocab_size)
    stats = ReadStats()
    unk = 0
    try:
        with _progress(total_bytes, cfg.progress, "tokenizing") as bar:
            for batch in _in_background(iter_sentence_batches(resolved, stats, bar.update)):
                ids, lengths, starts = encode_batch(tok, batch, specials)
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
    seconds = time.perf_counter() - t0
    return {"manifest": manifest, "seconds": seconds, "tokens_per_s": manifest["counts"]["tokens"] / seconds}
