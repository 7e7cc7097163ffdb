"""The token store: a corpus as WordPiece ids with sentence and document boundaries, memory-mappable.

A token store is a directory (default `tokens/`) holding
  ids.bin         every token id of the corpus, in order, little-endian uint16 (uint32 for vocabs
                  over 65536 ids); special tokens are never stored
  sentences.bin   int64 offsets into ids: sentence s is ids[sentences[s]:sentences[s+1]] (S+1 values)
  documents.bin   int64 offsets into sentences: document d is sentences documents[d]..documents[d+1]
  tokenizer.json  the tokenizer that made the ids (HuggingFace `tokenizers` format), vocab.txt beside it
  manifest.json   format, version, inputs, options, counts and a sha256 per data file; written last
Empty sentences and documents are never stored, so every document has >= 1 sentence of >= 1 token.

A token piece (`TokenPieceWriter`, `read_token_piece`) is one span of the corpus tokenized by a
cluster worker: the encoder's output as it is, before the store's writer drops empty sentences, so
that appending the pieces in order gives the same store as appending the batches of a local run.
Pieces live under hidden temporary names in the output directory and are removed once appended.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertprep.shards.atomic import publish, read_format_json, sha256_file, temp_name, write_json
from bertprep.shards.errors import ChecksumError, InputError, ShardFormatError
from bertprep.shards.naming import LABEL_RE
from bertprep.shards.schema import SPECIAL_NAMES, id_dtype

FORMAT_NAME = "bertprep-tokens"
FORMAT_VERSION = 1
DATA_FILES = ("ids.bin", "sentences.bin", "documents.bin")
MANIFEST = "manifest.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
OFFSET_DTYPE = np.dtype("<i8")
PIECE_MAGIC = b"BPTPIECE"
PIECE_VERSION = 1
# magic, then uint32 version, uint32 id itemsize (2 or 4), int64 tokens, int64 sentences
PIECE_HEADER = np.dtype([("version", "<u4"), ("itemsize", "<u4"), ("tokens", "<i8"), ("sentences", "<i8")])


class TokenStoreWriter:
    """Streams batches of tokenized sentences to temporary files; `close()` publishes them and the
    manifest (last). Memory stays flat: nothing but the current batch is held.

    A store already in the directory stays complete and usable until `close()`: every new file is
    built beside it under a temporary name (`stage` for the tokenizer files), and only then is the
    old manifest removed, the new files renamed over the old ones and the new manifest written.
    A failed or killed run leaves the old store as it was (and temporaries for the next run to
    remove); a kill inside those few renames leaves no manifest, so never a store that looks complete."""

    def __init__(self, directory: Path, vocab_size: int):
        self.directory = Path(directory)
        self.dtype = id_dtype(vocab_size).newbyteorder("<")
        self._tmp = {name: temp_name(self.directory / name) for name in DATA_FILES}
        self._staged: dict[str, Path] = {}
        self._files = {name: open(path, "wb") for name, path in self._tmp.items()}
        self.num_tokens = 0
        self.num_sentences = 0
        self.num_documents = 0
        self._files["sentences.bin"].write(np.zeros(1, OFFSET_DTYPE).tobytes())
        self._files["documents.bin"].write(np.zeros(1, OFFSET_DTYPE).tobytes())
        self._pending_start = False

    def append(self, ids: np.ndarray, sentence_lengths: np.ndarray, starts_document: np.ndarray) -> None:
        """Add sentences: their ids concatenated, their token counts, and whether each opens a new
        document. Empty sentences are dropped; a document start they carry moves to the next kept one."""
        lengths = np.asarray(sentence_lengths, dtype=np.int64)
        starts = np.asarray(starts_document, dtype=bool)
        kept = np.flatnonzero(lengths > 0)
        # starts seen since the previous kept sentence (inclusive of this one), plus any carried in
        seen = np.concatenate([[0], np.cumsum(starts)])
        since_prev = seen[kept + 1] - seen[np.concatenate([[0], kept[:-1] + 1])]
        doc_starts = since_prev > 0
        if len(kept):
            doc_starts[0] |= self._pending_start or self.num_sentences == 0
            self._pending_start = bool(starts[kept[-1] + 1:].any())
        else:
            self._pending_start = self._pending_start or bool(starts.any())
            return
        lengths = lengths[kept]
        self._files["ids.bin"].write(np.asarray(ids).astype(self.dtype, copy=False).tobytes())
        offsets = self.num_tokens + np.cumsum(lengths)
        self._files["sentences.bin"].write(offsets.astype(OFFSET_DTYPE).tobytes())
        # documents.bin holds each document's end; a new document's start closes the previous one.
        sent_index = self.num_sentences + np.arange(len(lengths))
        closing = sent_index[doc_starts]
        self._files["documents.bin"].write(closing[closing > 0].astype(OFFSET_DTYPE).tobytes())
        self.num_documents += int(doc_starts.sum())
        self.num_tokens = int(offsets[-1])
        self.num_sentences += len(lengths)

    def stage(self, name: str, data: bytes) -> Path:
        """Write one of TOKENIZER_FILES, complete, under its temporary name (published by `close`);
        returns that name, which cluster workers read before the store is published."""
        if name not in TOKENIZER_FILES:
            raise ValueError(f"not a tokenizer file: {name}")
        tmp = self._staged[name] = temp_name(self.directory / name)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def close(self, manifest: dict) -> dict:
        """Close the last document, then replace the old store (if any) by the new one, manifest
        last. A staged file identical to the one it replaces leaves that file untouched (it may be
        this run's own input: `--vocab DIR/vocab.txt --out DIR`). Returns the manifest."""
        if self.num_sentences:
            self._files["documents.bin"].write(np.asarray([self.num_sentences], OFFSET_DTYPE).tobytes())
        for f in self._files.values():
            f.close()
        checksums = {}
        for name, tmp in self._tmp.items():
            checksums[name] = sha256_file(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        # Everything new is complete on disk: from here the old store stops being one.
        (self.directory / MANIFEST).unlink(missing_ok=True)
        for name, tmp in self._staged.items():
            final = self.directory / name
            if final.is_file() and not final.is_symlink() and sha256_file(final) == sha256_file(tmp):
                tmp.unlink()
            else:
                publish(tmp, final)
        for name, tmp in self._tmp.items():
            publish(tmp, self.directory / name)
        manifest = dict(manifest, format=FORMAT_NAME, format_version=FORMAT_VERSION,
                        id_dtype=self.dtype.name, files=checksums,
                        counts=dict(manifest.get("counts", {}), tokens=self.num_tokens,
                                    sentences=self.num_sentences, documents=self.num_documents))
        write_json(self.directory / MANIFEST, manifest)
        return manifest

    def discard(self) -> None:
        for f in self._files.values():
            with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
                f.close()
        for tmp in [*self._tmp.values(), *self._staged.values()]:
            tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class TokenStore:
    """An opened token store: memory-mapped arrays plus its manifest."""

    directory: Path
    manifest: dict
    ids: np.ndarray          # (T,) uint16/uint32
    sent_offsets: np.ndarray  # (S+1,) int64
    doc_offsets: np.ndarray   # (D+1,) int64, indices into sent_offsets

    @property
    def num_documents(self) -> int:
        return len(self.doc_offsets) - 1

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / "tokenizer.json"


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise InputError(f"{directory}: no token store here (run `bertprep tokenize CORPUS --out {directory}` first)")
    if not path.exists():
        raise InputError(f"{path}: missing; {directory} is not a complete token store (re-run bertprep tokenize)")
    manifest = read_format_json(path, FORMAT_NAME, FORMAT_VERSION, "token store manifest", "; re-run bertprep tokenize")
    problem = _manifest_problem(manifest)
    if problem:
        raise ShardFormatError(f"{path}: {problem}; re-run bertprep tokenize")
    return manifest


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _manifest_problem(m: dict) -> str | None:
    """What makes a token store manifest unusable (a field missing, of the wrong type or out of
    range), or None. Readers index these fields, so a hostile manifest stops here, not in numpy."""
    files = m.get("files")
    if not isinstance(files, dict) or sorted(files) != sorted(DATA_FILES) or not all(
            isinstance(v, str) for v in files.values()):
        return f"'files' must give the sha256 of exactly {', '.join(DATA_FILES)}"
    tok = m.get("tokenizer")
    if not isinstance(tok, dict) or not isinstance(tok.get("sha256"), str):
        return "'tokenizer' lacks the tokenizer's sha256"
    size = tok.get("vocab_size")
    if not _is_count(size) or not 5 <= size <= 1 << 32:
        return f"vocab_size {size!r} is not a vocabulary size"
    sp = tok.get("special_ids")
    if not isinstance(sp, dict) or sorted(sp) != sorted(SPECIAL_NAMES) or not all(
            _is_count(v) and v < size for v in sp.values()):
        return f"special_ids {sp!r} are not ids of {', '.join(SPECIAL_NAMES)} within the vocab"
    if m.get("id_dtype") != id_dtype(size).name:
        return f"id_dtype {m.get('id_dtype')!r} is not {id_dtype(size).name!r}, the id type of {size} ids"
    counts = m.get("counts")
    if not isinstance(counts, dict) or not all(_is_count(counts.get(k)) for k in ("documents", "sentences", "tokens")):
        return "'counts' lacks the numbers of documents, sentences and tokens"
    if not isinstance(m.get("label"), str) or not LABEL_RE.match(m["label"]):
        return f"label {m.get('label')!r} is not a corpus label (letters, digits, '-')"
    return None


def open_token_store(directory: Path | str, verify: bool = True) -> TokenStore:
    """Open and check a token store: manifest, checksums (when `verify`), and array consistency."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    for name in DATA_FILES + TOKENIZER_FILES:
        if not (directory / name).is_file():
            raise InputError(f"{directory / name}: missing from the token store (re-run bertprep tokenize)")
    if verify:
        for name, expected in manifest["files"].items():
            if name not in DATA_FILES:
                raise ShardFormatError(f"{directory / MANIFEST}: lists unexpected file {name!r}")
            actual = sha256_file(directory / name)
            if actual != expected:
                raise ChecksumError(f"{directory / name}: sha256 mismatch (manifest {expected[:12]}…, "
                                    f"file {actual[:12]}…); re-run bertprep tokenize")
        tok_sha = sha256_file(directory / "tokenizer.json")
        if tok_sha != manifest["tokenizer"]["sha256"]:
            raise ChecksumError(f"{directory / 'tokenizer.json'}: sha256 differs from the manifest's; re-run bertprep tokenize")

    def mapped(name: str, dtype) -> np.ndarray:
        path = directory / name
        size = path.stat().st_size
        if size % dtype.itemsize:  # numpy would raise on mapping it
            raise ShardFormatError(f"{path}: {size} bytes, not a whole number of {dtype.itemsize}-byte values; "
                                   "re-run bertprep tokenize")
        if size == 0:
            return np.zeros(0, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r")

    ids = mapped("ids.bin", np.dtype(manifest["id_dtype"]).newbyteorder("<"))
    sents = mapped("sentences.bin", OFFSET_DTYPE)
    docs = mapped("documents.bin", OFFSET_DTYPE)
    counts = manifest["counts"]
    if (len(ids), len(sents) - 1, len(docs) - 1) != (counts["tokens"], counts["sentences"], counts["documents"]):
        raise ShardFormatError(f"{directory}: array sizes disagree with the manifest's counts; re-run bertprep tokenize")
    if len(sents) and (sents[-1] != len(ids) or (len(docs) and docs[-1] != len(sents) - 1)):
        raise ShardFormatError(f"{directory}: offsets do not end at the data's end; re-run bertprep tokenize")
    if verify:
        _check_content(directory, manifest["tokenizer"]["vocab_size"], ids, sents, docs)
        _check_tokenizer(directory, manifest["tokenizer"]["vocab_size"])
    return TokenStore(directory, manifest, ids, sents, docs)


CHECK_BLOCK = 1 << 22  # values per block of the content check: memory stays flat for any store


def _check_content(directory: Path, vocab_size: int, ids: np.ndarray, sents: np.ndarray, docs: np.ndarray) -> None:
    """What `shard` indexes with, checked in one blockwise pass: every id within the vocabulary,
    offsets that start at 0 and strictly increase (no empty sentence or document is stored) and
    end at their data's end. Checksums cannot tell: they only say the files are the ones written."""
    for name, offsets, end in (("sentences.bin", sents, len(ids)), ("documents.bin", docs, len(sents) - 1)):
        if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != end:
            raise ShardFormatError(f"{directory / name}: offsets do not run from 0 to {end}; re-run bertprep tokenize")
        for a in range(0, len(offsets) - 1, CHECK_BLOCK):
            block = np.asarray(offsets[a:a + CHECK_BLOCK + 1])
            if not (block[1:] > block[:-1]).all():
                at = a + int(np.flatnonzero(block[1:] <= block[:-1])[0]) + 1
                raise ShardFormatError(f"{directory / name}: offset {at} ({int(block[at - a])}) does not exceed the "
                                       f"one before it; re-run bertprep tokenize")
    for a in range(0, len(ids), CHECK_BLOCK):
        top = int(ids[a:a + CHECK_BLOCK].max())
        if top >= vocab_size:
            raise ShardFormatError(f"{directory / 'ids.bin'}: holds id {top}, beyond the vocabulary of {vocab_size} "
                                   "ids; re-run bertprep tokenize")


def _check_tokenizer(directory: Path, vocab_size: int) -> None:
    """tokenizer.json must hold exactly the ids 0..vocab_size-1, and vocab.txt (which `shard` reads
    to find `##` pieces and specials) list its tokens in id order, one a line."""
    path = directory / "tokenizer.json"
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        by_id = {i: t for t, i in spec["model"]["vocab"].items()}
        by_id.update({t["id"]: t["content"] for t in spec.get("added_tokens") or []})
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ShardFormatError(f"{path}: not a WordPiece tokenizers JSON file; re-run bertprep tokenize") from None
    if sorted(by_id) != list(range(vocab_size)):
        raise ShardFormatError(f"{path}: holds {len(by_id)} ids, the manifest's vocab_size is {vocab_size}; "
                               "re-run bertprep tokenize")
    vocab_txt = directory / "vocab.txt"
    try:
        lines = vocab_txt.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError:
        lines = []
    if lines[:-1] != [by_id[i] for i in range(vocab_size)] or lines[-1] != "":
        raise ShardFormatError(f"{vocab_txt}: does not list tokenizer.json's {vocab_size} tokens in id order, one a "
                               "line; re-run bertprep tokenize")


class TokenPieceWriter:
    """One span's tokenizing, as the encoder gave it: a header (PIECE_MAGIC, then PIECE_HEADER),
    the ids in the store's id type (zero-padded to a multiple of 8 bytes), tokens per sentence
    (int64) and whether each sentence opens a document (uint8). Ids stream to disk; the per-sentence arrays (9 bytes a sentence) are held
    until `close()`, which publishes the piece under `path` (a temporary name itself)."""

    def __init__(self, path: Path, vocab_size: int):
        self.path = Path(path)
        self.dtype = id_dtype(vocab_size).newbyteorder("<")
        self.num_tokens = 0
        self._lengths: list[np.ndarray] = []
        self._starts: list[np.ndarray] = []
        self._tmp = temp_name(self.path)
        self._f = open(self._tmp, "wb")
        self._f.write(PIECE_MAGIC + bytes(PIECE_HEADER.itemsize))

    def __enter__(self) -> "TokenPieceWriter":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.discard()

    def append(self, ids: np.ndarray, sentence_lengths: np.ndarray, starts_document: np.ndarray) -> None:
        self._f.write(np.asarray(ids).astype(self.dtype, copy=False).tobytes())
        self.num_tokens += len(ids)
        self._lengths.append(np.asarray(sentence_lengths, dtype=OFFSET_DTYPE))
        self._starts.append(np.asarray(starts_document, dtype=np.uint8))

    def close(self) -> None:
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, OFFSET_DTYPE)
        starts = np.concatenate(self._starts) if self._starts else np.zeros(0, np.uint8)
        self._f.write(bytes(-self.num_tokens * self.dtype.itemsize % 8))  # lengths start 8-aligned
        self._f.write(lengths.tobytes())
        self._f.write(starts.tobytes())
        header = np.array([(PIECE_VERSION, self.dtype.itemsize, self.num_tokens, len(lengths))], PIECE_HEADER)
        self._f.seek(len(PIECE_MAGIC))
        self._f.write(header.tobytes())
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        publish(self._tmp, self.path)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._f.close()
        self._tmp.unlink(missing_ok=True)


def read_token_piece(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, tokens per sentence, sentence opens a document) of a piece, memory-mapped."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(len(PIECE_MAGIC) + PIECE_HEADER.itemsize)
    if len(head) < len(PIECE_MAGIC) + PIECE_HEADER.itemsize or not head.startswith(PIECE_MAGIC):
        raise ShardFormatError(f"{path}: not a bertprep token piece")
    h = np.frombuffer(head[len(PIECE_MAGIC):], PIECE_HEADER)[0]
    n_tok, n_sent, itemsize = int(h["tokens"]), int(h["sentences"]), int(h["itemsize"])
    if h["version"] != PIECE_VERSION or itemsize not in (2, 4) or n_tok < 0 or n_sent < 0:
        raise ShardFormatError(f"{path}: token piece of another version or layout")
    body = len(head)
    at = body + n_tok * itemsize + (-n_tok * itemsize % 8)
    if size != at + n_sent * 9:
        raise ShardFormatError(f"{path}: token piece of {size} bytes, its header says otherwise")
    if size == body:
        return np.zeros(0, f"<u{itemsize}"), np.zeros(0, OFFSET_DTYPE), np.zeros(0, np.uint8)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    ids = data[body:body + n_tok * itemsize].view(f"<u{itemsize}")
    lengths = data[at:at + n_sent * 8].view(OFFSET_DTYPE)
    starts = data[at + n_sent * 8:at + n_sent * 9]
    return ids, lengths, starts
