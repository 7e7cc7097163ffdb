"""The text vocab training reads: a sample of the corpus (`--vocab-sample-mb`), turned into words.

`plan_sample(inputs, sample_bytes, seed)` picks whole documents, evenly spread over every input:
  - an uncompressed text, WikiText or jsonl file is cut by a grid: with f = sample / corpus, a
    window of U bytes (U = sample / 256, between 64 KiB and 4 MiB) is read every U / f bytes,
    from an offset in the first step (or the whole input, when smaller) drawn from
    `default_rng([seed, VOCAB_STAGE, input index])`;
    each window starts and ends at the first document boundary at or after its grid points (a
    document longer than the window, or the last one of the input: at the next line, so whole
    paragraphs of it), and only the windows are read, by seeking;
  - a compressed or parquet file cannot be entered in the middle: it is read whole, and a
    document is kept when its characters overlap a window of the same grid (the file's text size
    is estimated from its first 8 MiB, or from parquet's metadata).
The plan depends only on the inputs, the sample size and the seed; when the corpus is not larger
than the sample, everything is read. `write_words` reads a plan's chunks and writes what the
trainer counts: each paragraph's words (BERT's normalizer and pre-tokenizer, in C with the GIL
released, `_native.words`; paragraphs with characters the C tables lack via `tokenizers` itself)
separated by spaces, in lines of about 64 KB, and the set of code points read. A cluster task
runs it on one chunk group (`vocab_words_task`), so the driver reads none of the sample.
"""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from bertprep.preprocess import corpus
from bertprep.preprocess.corpus import DOC_BREAK, ReadStats, Span, read_corpus

VOCAB_STAGE = 7            # the seed stage of the vocab sample (`default_rng([seed, stage, ...])`)
SAMPLE_SEED = 0
WINDOWS = 256               # about this many windows make up a sample
MIN_WINDOW, MAX_WINDOW = 64 << 10, 4 << 20
LINE_BYTES = 1 << 16        # the words file's lines: long enough that tokenizers' per-line cost vanishes
BATCH_CHARS = 1 << 21
Grid = tuple  # (offset, step, window): keep a streamed document that overlaps [offset + k * step, + window)


@dataclass(frozen=True)
class SampleChunk:
    """What one reader of the sample reads: a span of one input (None: all of it), and for a
    streamed input the grid its documents are kept by (None: every document)."""

    path: str
    fmt: str
    span: Span | None = None
    grid: Grid | None = None

    @property
    def size(self) -> int:
        if self.span is not None and corpus._compression(Path(self.path)) is None and self.fmt != "parquet":
            return self.span[1] - self.span[0]
        return Path(self.path).stat().st_size


def text_size(path: Path, fmt: str) -> int:
    """The text bytes an input holds: its size, parquet's uncompressed column sizes, or for a
    compressed file its size times the ratio of its first 8 MiB of text."""
    if fmt == "parquet":
        pf = corpus._parquet_file(path)
        return sum(pf.metadata.row_group(i).total_byte_size for i in range(pf.num_row_groups))
    size = path.stat().st_size
    if corpus._compression(path) is None:
        return size
    with open(path, "rb") as raw:
        counter = _Counted(raw)
        try:
            out = len(corpus._open_binary(path, counter).read(8 << 20))
        except (OSError, EOFError, ValueError):
            return size  # corrupt: the reader will say so
    return int(size * out / max(counter.read_bytes, 1)) if counter.read_bytes < size else out


class _Counted(io.RawIOBase):
    """A raw file that counts the compressed bytes a decompressor took from it."""

    def __init__(self, raw):
        self.raw, self.read_bytes = raw, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.raw.readinto(b)
        self.read_bytes += n or 0
        return n

    def read(self, n=-1) -> bytes:
        data = self.raw.read(n)
        self.read_bytes += len(data)
        return data


def _boundary(f, at: int, fmt: str, within: int, size: int) -> int:
    """The first document boundary at or after byte `at`; a line start when none is within
    `within` bytes (a document longer than a window); the end of the file when neither is."""
    if at <= 0:
        return 0
    if at >= size:
        return size
    cut = corpus._boundary_after(f, at, fmt, limit=at + within)
    return size if cut is None else cut


def plan_sample(inputs: list[tuple[Path, str]], sample_bytes: int, seed: int = SAMPLE_SEED
                ) -> tuple[list[SampleChunk], int, int]:
    """(chunks, corpus text bytes, sample bytes planned). Everything, unsampled, when
    `sample_bytes` is 0 or the corpus is not larger."""
    sizes = [text_size(p, fmt) for p, fmt in inputs]
    total = sum(sizes)
    if sample_bytes <= 0 or total <= sample_bytes:
        return [SampleChunk(str(p), fmt) for p, fmt in inputs], total, total
    fraction = sample_bytes / total
    window = int(min(MAX_WINDOW, max(MIN_WINDOW, sample_bytes // WINDOWS)))
    step = window / fraction
    chunks, planned = [], 0
    for index, ((path, fmt), size) in enumerate(zip(inputs, sizes)):
        # In an input smaller than a step the first window still falls inside: every input gives text.
        offset = float(np.random.default_rng([seed, VOCAB_STAGE, index]).random()) * min(step, size)
        if corpus._compression(path) is not None or fmt == "parquet":
            chunks.append(SampleChunk(str(path), fmt, None, (offset, step, window)))
            planned += int(size * fraction)
            continue
        last = 0
        with open(path, "rb") as f:
            point = offset
            while point < size:
                start = max(_boundary(f, int(point), fmt, window, size), last)
                stop = _boundary(f, int(point) + window, fmt, window, size)
                if stop > start:
                    chunks.append(SampleChunk(str(path), fmt, (start, stop)))
                    planned += stop - start
                    last = stop
                point += step
    return chunks, total, planned


def _covers(grid: Grid, start: int, end: int) -> bool:
    """Whether characters [start, end) of a streamed input overlap a window of the grid."""
    offset, step, window = grid
    k = max(np.floor((start - offset) / step), -1)     # the last window starting at or before `start`
    return (k >= 0 and offset + k * step + window > start) or offset + (k + 1) * step < end


def _documents(chunk: SampleChunk, stats: ReadStats, on_bytes) -> Iterator[list[str]]:
    """The chunk's documents as lists of paragraphs; of a streamed input only those the grid keeps
    (positions count each paragraph and its line end)."""
    doc, start, end = [], 0, 0
    for para in read_corpus(Path(chunk.path), chunk.fmt, stats, on_bytes, chunk.span):
        if para is not DOC_BREAK:
            doc.append(para)
            end += len(para) + 1
            continue
        if doc and (chunk.grid is None or _covers(chunk.grid, start, end)):
            yield doc
        doc, start = [], end
    if doc and (chunk.grid is None or _covers(chunk.grid, start, end)):
        yield doc


def _paragraph_batches(chunks: list[SampleChunk], stats: ReadStats, on_bytes=None) -> Iterator[list[str]]:
    """The paragraphs the chunks keep, in batches of about BATCH_CHARS characters."""
    batch, chars = [], 0
    for chunk in chunks:
        for doc in _documents(chunk, stats, on_bytes):
            batch.extend(doc)
            chars += sum(map(len, doc))
            if chars >= BATCH_CHARS:
                yield batch
                batch, chars = [], 0
    if batch:
        yield batch


class WordMaker:
    """Paragraphs -> the words BERT's normalizer and pre-tokenizer make of them (see module doc)."""

    def __init__(self, lowercase: bool):
        from bertprep.preprocess import native
        from bertprep.preprocess.vocab import bert_pipeline

        self.tok = bert_pipeline(lowercase)
        self.c = native._native
        self.tables = native.char_tables(self.tok) if self.c is not None else None
        self.seen = np.zeros(0x110000 // 8, dtype=np.uint8)

    def _slow(self, paragraphs: list[str]) -> bytes:
        """Through `tokenizers` itself, all at once: newlines between paragraphs split words as
        the spaces of a paragraph do, and stop NFD's reordering of marks."""
        text = self.tok.normalizer.normalize_str("\n".join(paragraphs))
        words = [w for w, _ in self.tok.pre_tokenizer.pre_tokenize_str(text)]
        return (" ".join(words) + "\n").encode("utf-8") if words else b""

    def words(self, paragraphs: list[str]) -> bytes:
        if self.c is None:
            for p in paragraphs:  # what the C side records, for the pinned alphabet
                codes = np.frombuffer(p.encode("utf-32-le"), dtype="<u4")
                np.bitwise_or.at(self.seen, codes >> 3, (1 << (codes & 7)).astype(np.uint8))
            return self._slow(paragraphs)
        text, slow, seen = self.c.words(*self.tables, paragraphs, LINE_BYTES)
        self.seen |= np.frombuffer(seen, dtype=np.uint8)
        return text + (self._slow([paragraphs[i] for i in slow]) if slow else b"")

    def code_points(self) -> list[int]:
        return np.flatnonzero(np.unpackbits(self.seen, bitorder="little")).tolist()


def write_words(chunks: list[SampleChunk], out: Path, lowercase: bool,
                on_bytes: Callable[[int], None] | None = None) -> tuple[list[int], ReadStats]:
    """Write the words of the chunks' text to `out`; returns the code points read and the counts."""
    from bertprep.preprocess.tokenizing import _in_background

    maker, stats = WordMaker(lowercase), ReadStats()
    with open(out, "wb") as f:
        for batch in _in_background(_paragraph_batches(chunks, stats, on_bytes)):
            f.write(maker.words(batch))
    return maker.code_points(), stats


def group_chunks(chunks: list[SampleChunk], target: int) -> list[list[SampleChunk]]:
    """Consecutive chunks in groups of about `target` bytes: the cluster's tasks."""
    groups, size = [[]], 0
    for c in chunks:
        if groups[-1] and size + c.size > target:
            groups.append([])
            size = 0
        groups[-1].append(c)
        size += c.size
    return [g for g in groups if g]


@dataclass(frozen=True)
class WordsJob:
    out: str               # the shared --out, where each task writes its words file
    lowercase: bool
    piece_prefix: str


def vocab_words_task(job: WordsJob, task: tuple[int, list[SampleChunk]]) -> dict:
    """A cluster task: one group of sample chunks -> a words file in --out (a new name for every
    attempt). Returns its name, the code points read and the bytes read."""
    index, chunks = task
    name = f"{job.piece_prefix}vocab-{index:06d}-{secrets.token_hex(4)}.tmp"
    points, stats = write_words(chunks, Path(job.out) / name, job.lowercase)
    return {"piece": name, "code_points": points, "bytes_read": stats.bytes_read}


def train_vocab(cfg, inputs: list[tuple[Path, str]], out: Path, session, progress: bool,
                task_bytes: int) -> tuple[object, dict]:
    """Train `cfg`'s vocab (a VocabConfig) on the sample of `inputs`: words files written here, or
    by the workers of a cluster `session` into `out`, then counted and learned from by
    `tokenizers`. Returns the tokenizer and {bytes, of, sampled}: what was read of how much."""
    import os
    import sys

    from bertprep.preprocess.tokenizing import _progress
    from bertprep.preprocess.vocab import train_tokenizer

    chunks, total, planned = plan_sample(inputs, int(cfg.vocab_sample_mb * (1 << 20)))
    files: list[Path] = []
    try:
        if session is None:
            files.append(out / f".vocab-words.{os.getpid()}.tmp")
            with _progress(sum(c.size for c in chunks), progress, "vocab: reading") as bar:
                points, _ = write_words(chunks, files[0], cfg.lowercase, bar.update)
        else:
            from bertprep.preprocess import cluster

            groups = group_chunks(chunks, task_bytes)
            job = WordsJob(str(out), cfg.lowercase, session.piece_prefix)
            seen: set[int] = set()
            with cluster.Progress("vocab: reading", len(groups), "B", progress) as bar:
                for r in session.ordered(vocab_words_task, job, list(enumerate(groups)), "vocab"):
                    files.append(out / r["piece"])
                    seen.update(r["code_points"])
                    bar.chunk_done(r["bytes_read"])
            points = sorted(seen)
        tok = train_tokenizer(files, points, cfg, progress and sys.stderr.isatty())
    finally:
        for f in files:
            f.unlink(missing_ok=True)
    return tok, {"bytes": planned, "of": total, "sampled": planned < total}
