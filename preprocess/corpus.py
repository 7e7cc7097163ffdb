"""Reading corpora: files of several layouts and compressions become one stream of paragraphs.

`read_corpus(path, fmt, stats, on_bytes)` yields `str` paragraphs and `DOC_BREAK` between
documents, in file order, holding no more than one block (4 MiB) of the file in memory:
  text      a paragraph or sentence per line, blank lines between documents
  wikitext  WikiText-103: ` = Title = ` starts a document, sub-headings dropped, @-@ escapes undone
  jsonl     one JSON object per line; its `text` field is a document (its lines are paragraphs)
  parquet   a `text` column; each row is a document
`.gz`, `.bz2` and `.zst` files are decompressed on the fly. Invalid UTF-8 is replaced (U+FFFD) and
counted, never fatal; a file with NUL bytes in its first block is refused as binary.

`plan_spans(path, fmt, target)` cuts an uncompressed file into spans of about `target` bytes (row
groups for parquet), each starting at a document boundary found in the bytes, and
`read_corpus(..., span=)` reads one span so that the spans of a file, read one after another, give
exactly the paragraphs, document breaks and counts of the whole file read at once. That is what
lets `tokenize` hand spans to workers on other machines without changing a byte of its output.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

from bertprep.preprocess import wikitext
from bertprep.shards.errors import InputError

DOC_BREAK = None
InputFormat = Literal["auto", "text", "wikitext", "jsonl", "parquet"]  # `bertprep tokenize --format`
BLOCK = 4 << 20
# A line longer than this is cut at a space: a 200 MB line without newline must not be held whole.
MAX_LINE = 1 << 20
BINARY_PROBE = 8192     # a file with a NUL byte in its first this many bytes is refused as binary
BOUNDARY_LINE = 4096    # span boundaries are looked for only at lines shorter than this (never cut)
Span = tuple  # (start, stop): bytes of an uncompressed file, or row groups of a parquet file


@dataclass
class ReadStats:
    """What reading saw, reported in the token store's manifest."""

    bytes_read: int = 0
    invalid_utf8: int = 0  # byte sequences replaced by U+FFFD
    lines_cut: int = 0      # over-long lines cut at MAX_LINE


def _compression(path: Path) -> str | None:
    name = path.name.lower()
    for suffix, kind in ((".gz", "gzip"), (".bz2", "bz2"), (".zst", "zstd"), (".zstd", "zstd")):
        if name.endswith(suffix):
            return kind
    return None


def base_name(path: Path) -> str:
    """The file name without its compression suffix (`wiki.train.tokens.gz` -> `wiki.train.tokens`)."""
    name = path.name
    return name.rsplit(".", 1)[0] if _compression(path) else name


def check_input(path: Path, flag: str | None = None) -> None:
    """Refuse what cannot be a corpus (or, with `flag`, that flag's file: --vocab, --tokenizer)
    before any work starts: one clear line each."""
    where = f"{flag} {path}" if flag else str(path)
    if not path.exists():
        raise InputError(f"{where}: no such file")
    if path.is_dir() and flag:
        name = {"--vocab": "vocab.txt", "--tokenizer": "tokenizer.json"}.get(flag, "file")
        raise InputError(f"{where}: is a directory; give the {name} file itself (e.g. {path / name})")
    if path.is_dir():
        raise InputError(f"{where}: is a directory; name the corpus files in it")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None


def _open_binary(path: Path, raw: io.BufferedReader):
    kind = _compression(path)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw)
    if kind == "bz2":
        return bz2.BZ2File(raw)
    if kind == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw)
    return raw


def _decode(block: bytes, stats: ReadStats) -> str:
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError:
        text = block.decode("utf-8", errors="replace")
        stats.invalid_utf8 += text.count("\ufffd") - block.count("\ufffd".encode())
        return text


def iter_lines(path: Path, stats: ReadStats, on_bytes: Callable[[int], None] | None = None,
               span: Span | None = None) -> Iterator[str]:
    """Decoded lines without their line ends (`\\n`, `\\r\\n`), in bounded memory.

    With `span = (start, stop)` (an uncompressed file; `start` at a line start) only those bytes
    are read, and exactly as the whole-file pass reads them: blocks stay on the file's BLOCK grid
    (where over-long lines are cut depends on it), and the first, partial block is taken as
    following a line end, as it does in the whole-file pass."""
    raw = open(path, "rb")
    try:
        if span is None:
            stream, start, stop = _open_binary(path, raw), 0, None
        else:
            start, stop = span
            stream = raw
            if start == 0 and b"\0" in raw.read(BINARY_PROBE):  # the whole-file pass's check, on the same bytes
                raise InputError(f"{path}: looks like a binary file (NUL bytes), not text")
            raw.seek(start)
        rest = b""
        first = span is None
        after_line_end = start % BLOCK != 0
        last_pos = pos = start
        while True:
            size = BLOCK if stop is None else min(BLOCK - pos % BLOCK, stop - pos)
            try:
                block = stream.read(size) if size > 0 else b""
            except (OSError, EOFError, ValueError) as e:  # corrupt gzip/bz2/zstd data
                raise InputError(f"{path}: cannot decompress ({e})") from None
            pos = raw.tell()
            if on_bytes and pos != last_pos:
                on_bytes(pos - last_pos)
                last_pos = pos
            if first:
                if b"\0" in block[:BINARY_PROBE]:
                    raise InputError(f"{path}: looks like a binary file (NUL bytes), not text")
                first = False
            if not block:
                break
            stats.bytes_read += len(block)
            data = rest + block
            cut = data.rfind(b"\n")
            if cut >= 0:
                rest = data[cut + 1:]
                for line in _decode(data[:cut], stats).split("\n"):
                    yield line.rstrip("\r")
                after_line_end = False
                continue
            if after_line_end:  # the whole-file pass holds these bytes as the rest after a line end
                rest, after_line_end = data, False
                continue
            # No line end in sight: hand out pieces of at most MAX_LINE bytes, each cut at a space,
            # until what is kept is no longer than MAX_LINE (cutting one piece per block would let
            # `rest` grow with the line).
            start = 0
            while len(data) - start > MAX_LINE:
                cut = data.rfind(b" ", start, start + MAX_LINE)
                cut = cut if cut > start else start + MAX_LINE
                while cut < len(data) and (data[cut] & 0xC0) == 0x80:  # never inside a UTF-8 sequence
                    cut += 1
                stats.lines_cut += 1
                yield _decode(data[start:cut], stats)
                start = cut + 1 if data[cut:cut + 1] == b" " else cut
            rest = data[start:]
        if rest:
            for line in _decode(rest, stats).split("\n"):
                yield line.rstrip("\r")
    finally:
        raw.close()


def detect_format(path: Path) -> str:
    """`auto` resolved: by suffix for jsonl/parquet, by the first lines for WikiText, else text."""
    name = base_name(path).lower()
    if name.endswith(".jsonl") or name.endswith(".ndjson"):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    head, size = [], 0
    for line in iter_lines(path, ReadStats()):
        head.append(line)
        size += len(line)
        if len(head) >= 200 or size >= MAX_LINE:  # 200 lines of a 200 MB line would be the whole file
            break
    return "wikitext" if wikitext.looks_like_wikitext(head) else "text"


def _text_paragraphs(lines: Iterator[str]) -> Iterator[str | None]:
    for line in lines:
        line = line.strip()
        yield line if line else DOC_BREAK


def _wikitext_paragraphs(lines: Iterator[str]) -> Iterator[str | None]:
    for line in lines:
        if not line.strip():
            continue  # WikiText puts blank lines around every heading and paragraph
        if wikitext.is_title(line):
            yield DOC_BREAK
        elif not wikitext.is_subheading(line):
            yield wikitext.unescape(line).strip()


_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _line_number(path: Path, offset: int, n: int) -> int:
    """The file's number of line `n` of a span that starts at byte `offset` (for error messages)."""
    before = 0
    with open(path, "rb") as f:
        while offset > 0 and (block := f.read(min(BLOCK, offset))):
            before += block.count(b"\n")
            offset -= len(block)
    return before + n


def _jsonl_paragraphs(path: Path, lines: Iterator[str], stats: ReadStats, offset: int = 0) -> Iterator[str | None]:
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{_line_number(path, offset, n)}: not valid JSON ({e.msg})") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise InputError(f"{path}:{_line_number(path, offset, n)}: no string field 'text' in this JSON line")
        # JSON's \ud800 escapes can spell lone surrogates, which are not text: replaced and counted
        # as invalid, like undecodable bytes.
        text, bad = _SURROGATE_RE.subn("\ufffd", text)
        stats.invalid_utf8 += bad
        yield DOC_BREAK
        for para in text.split("\n"):
            if para.strip():
                yield para.strip()


def _parquet_file(path: Path):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise InputError(f"{path}: not a readable parquet file ({e.__class__.__name__})") from None
    if "text" not in pf.schema_arrow.names:
        raise InputError(f"{path}: parquet file has no 'text' column (columns: {', '.join(pf.schema_arrow.names)})")
    return pf


def _parquet_paragraphs(path: Path, stats: ReadStats, on_bytes, span: Span | None) -> Iterator[str | None]:
    pf = _parquet_file(path)
    for i in range(*(span or (pf.num_row_groups,))):
        table = pf.read_row_group(i, columns=["text"])
        if on_bytes:
            on_bytes(pf.metadata.row_group(i).total_byte_size)
        for text in table.column("text").to_pylist():
            if not isinstance(text, str):
                continue
            stats.bytes_read += len(text)
            yield DOC_BREAK
            for para in text.split("\n"):
                if para.strip():
                    yield para.strip()


def read_corpus(path: Path, fmt: str, stats: ReadStats,
                on_bytes: Callable[[int], None] | None = None, span: Span | None = None) -> Iterator[str | None]:
    """Paragraphs of one input file (or of one span of it, from `plan_spans`), with DOC_BREAK
    between documents (and before the first)."""
    if fmt == "auto":
        fmt = detect_format(path)
    yield DOC_BREAK  # files never share a document, and a span starts at a document boundary
    if fmt == "parquet":
        yield from _parquet_paragraphs(path, stats, on_bytes, span)
        return
    lines = iter_lines(path, stats, on_bytes, span)
    if fmt == "wikitext":
        yield from _wikitext_paragraphs(lines)
    elif fmt == "jsonl":
        yield from _jsonl_paragraphs(path, lines, stats, span[0] if span else 0)
    else:
        yield from _text_paragraphs(lines)


def _opens_document(fmt: str, line: bytes) -> bool:
    """Whether a document starts right after `line` (text: a blank line) or with it (WikiText: a
    title; jsonl: any line), by the rules the readers above apply to the same line."""
    if fmt == "jsonl":
        return True
    text = line.decode("utf-8", errors="replace").rstrip("\r")
    return text.strip() == "" if fmt == "text" else wikitext.is_title(text)


def _skip_line(f) -> None:
    while (piece := f.readline(1 << 20)) and not piece.endswith(b"\n"):
        pass


def _boundary_after(f, at: int, fmt: str, limit: int | None = None) -> int | None:
    """The first document boundary at or after byte `at`, or None when there is none before the
    end. Only lines shorter than BOUNDARY_LINE are looked at: the reader never cuts those. With
    `limit`, a boundary must start before it, else (the end of the file too) the first line start
    at or after `at` is returned (the vocab sample's windows in a long document)."""
    f.seek(at - 1)
    if f.read(1) != b"\n":
        _skip_line(f)  # `at` is inside a line: start at the next one
    first = f.tell()
    while True:
        start = f.tell()
        if limit is not None and start >= limit:
            return first
        line = f.readline(BOUNDARY_LINE)
        if not line.endswith(b"\n"):
            if len(line) < BOUNDARY_LINE:  # the end of the file
                return None if limit is None else first
            _skip_line(f)
            continue
        if _opens_document(fmt, line[:-1]):
            return f.tell() if fmt == "text" else start


def plan_spans(path: Path, fmt: str, target: int) -> list[Span | None]:
    """One file cut into spans of about `target` bytes that `read_corpus(span=)` reads exactly as the
    whole file: each starts at the first document boundary at or after a multiple of `target`
    (text: after a blank line; WikiText: at a ` = Title = ` line; jsonl: at a line; parquet: at a
    row group of about `target` uncompressed bytes). The cuts depend only on the file and `target`.
    A compressed file cannot be entered in the middle: it is one span, `[None]`."""
    if _compression(path) is not None:
        return [None]
    if fmt == "parquet":
        pf = _parquet_file(path)
        cuts, size = [0], 0
        for i in range(pf.num_row_groups):
            if size >= target:
                cuts.append(i)
                size = 0
            size += pf.metadata.row_group(i).total_byte_size
        return [(a, b) for a, b in zip(cuts, cuts[1:] + [pf.num_row_groups])] or [None]
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as f:
        at = target
        while at < size:
            cut = _boundary_after(f, at, fmt)
            if cut is None or cut >= size:
                break
            cuts.append(cut)
            at = (cut // target + 1) * target
    return list(zip(cuts, cuts[1:] + [size]))
