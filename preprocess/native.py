"""The native backend: BERT WordPiece in C (`_native.c`), exactly the reference's ids.

Correctness does not rest on a re-implementation of BERT's normalizer. The C code reads a table,
built here once per normalizer by asking `tokenizers` itself: every code point in TABLE_RANGES
is normalized (`normalize_str`, all of them in one call, `|` between them) and every character
that comes out is classed by the BertPreTokenizer (`pre_tokenize_str`) as whitespace, punctuation
or word. The BERT normalizer is a per-character map (clean-up, CJK spacing, lower-casing) except
for its NFD step, which also reorders runs of combining marks; so a code point is taken only when
what it becomes holds no combining mark (canonical combining class 0 for every output character):
then the marks that NFD produced were all removed, their order never mattered, and a text maps
to the concatenation of its characters' maps. Everything else is SLOW: code points whose output
keeps a combining mark, code points Python's `unicodedata` does not know, and everything outside
TABLE_RANGES (the BMP and the emoji blocks). A sentence with any SLOW character is encoded by `tokenizers` (the reference
encoder), in place. The C side adds only what is the same for every table: words end at
whitespace, punctuation is a word of its own, and WordPiece's greedy longest match with `##`
continuations and [UNK] for a word over max_input_chars_per_word characters or without a match.

The native path is taken only for the pipeline it implements: a BertNormalizer (any options),
a BertPreTokenizer and a WordPiece model, with no added tokens other than special ones (which
the reference treats as text). `unsupported(tok)` says why not, otherwise.
"""

from __future__ import annotations

import json
import unicodedata
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tokenizers import Tokenizer, pre_tokenizers

from bertprep.preprocess import sentences as sentence_rules
from bertprep.preprocess.reference import ReferenceEncoder

try:
    from bertprep.preprocess import _native
except ImportError:  # not built: `pip install -e .` compiles it
    _native = None

CMAP_LIMIT = _native.CMAP_LIMIT if _native else 0x20000  # the C table's size
# The code points the table covers: the BMP and the emoji blocks (other code points are rare and
# go to tokenizers; asking tokenizers about fewer code points makes start-up faster).
TABLE_RANGES = ((0, 0x10000), (0x1F000, 0x1FB00))
TAG_ONE, TAG_GONE, TAG_MANY, TAG_SLOW = 0, 1, 2, 3
CL_SPACE, CL_PUNCT, CL_WORD = 1, 2, 3
MAX_WORD_CHARS = 1 << 16  # the C word buffer holds this many characters
# The sentence rule `_native.c` reproduces; a change to sentences.py must be ported there.
BOUNDARY_PATTERN = r"""([.!?]+["'\u201d\u2019)\]]*)\s+(?=["'\u201c\u2018(\[]?[A-Z0-9])"""

_tables: dict[str, tuple[bytes, bytes]] = {}
_spaces: list[int] = []


def unsupported(tok: Tokenizer) -> str | None:
    """Why the native backend cannot give this tokenizer's ids, or None when it can."""
    if _native is None:
        return "the C extension bertprep.preprocess._native is not built (pip install -e .)"
    if sentence_rules._BOUNDARY_RE.pattern != BOUNDARY_PATTERN:
        return "preprocess/sentences.py's rule changed and _native.c does not implement it yet"
    spec = json.loads(tok.to_str())
    kinds = {part: (spec.get(part) or {}).get("type") for part in ("normalizer", "pre_tokenizer", "model")}
    wanted = {"normalizer": "BertNormalizer", "pre_tokenizer": "BertPreTokenizer", "model": "WordPiece"}
    for part, kind in kinds.items():
        if kind != wanted[part]:
            return f"its {part} is {kind}, not {wanted[part]}"
    model = spec["model"]
    if model.get("unk_token") not in model.get("vocab", {}):
        return f"its unk_token {model.get('unk_token')!r} is not in the vocab"
    if not 0 <= model.get("max_input_chars_per_word", 100) <= MAX_WORD_CHARS:
        return f"its max_input_chars_per_word is over {MAX_WORD_CHARS}"
    extra = [t["content"] for t in spec.get("added_tokens", []) if not t.get("special")]
    if extra:
        return f"it has non-special added tokens ({', '.join(map(repr, extra[:3]))})"
    return None


def _classes(chars: np.ndarray) -> np.ndarray:
    """How BertPreTokenizer treats each code point in `chars`: CL_WORD, CL_SPACE or CL_PUNCT.

    In `a c1 a c2 a ...` (no spaces) word characters merge with their `a` neighbours, so a
    character is whitespace when no piece covers it and punctuation when a piece is just it."""
    text = "a" + "a".join(map(chr, chars)) + "a"
    cls = np.full(len(chars), CL_WORD, dtype=np.uint32)
    covered = np.zeros(len(text), dtype=bool)
    for _, (start, end) in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(text):
        covered[start:end] = True
        if end == start + 1 and start % 2:
            cls[start // 2] = CL_PUNCT
    cls[~covered[1::2]] = CL_SPACE
    return cls


def char_tables(tok: Tokenizer) -> tuple[bytes, bytes]:
    """(cmap, pool) for `_native.Encoder`, computed from `tok.normalizer`; cached per normalizer."""
    key = json.dumps(json.loads(tok.to_str())["normalizer"], sort_keys=True)
    if key in _tables:
        return _tables[key]
    normalizer = tok.normalizer
    cps = [c for lo, hi in TABLE_RANGES for c in range(lo, hi)
           if c != 0x7C and unicodedata.category(chr(c)) not in ("Cn", "Cs")]
    outputs = normalizer.normalize_str("|".join(map(chr, cps))).split("|")
    if len(outputs) != len(cps):  # some character maps to a `|`: ask one at a time
        outputs = [normalizer.normalize_str(chr(c)) for c in cps]
    cps.append(0x7C)
    outputs.append(normalizer.normalize_str("|"))
    cps = np.asarray(cps, dtype=np.uint32)
    lengths = np.fromiter(map(len, outputs), dtype=np.int64, count=len(outputs))
    flat = np.frombuffer("".join(outputs).encode("utf-32-le"), dtype="<u4")  # every output character
    distinct = np.unique(flat)
    marks = np.fromiter((unicodedata.combining(chr(c)) != 0 for c in distinct), dtype=bool, count=len(distinct))
    where = np.searchsorted(distinct, flat)
    items = _classes(distinct)[where] << 24 | flat
    owner = np.repeat(np.arange(len(outputs)), lengths)
    keeps_mark = np.bincount(owner, weights=marks[where], minlength=len(outputs)) > 0
    slow = keeps_mark | (lengths > 15)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    entry = np.full(len(cps), TAG_SLOW, dtype=np.uint32)
    one = ~slow & (lengths == 1)
    entry[one] = TAG_ONE | (items[first[one]] >> 24) << 2 | flat[first[one]] << 8
    entry[~slow & (lengths == 0)] = TAG_GONE
    many = ~slow & (lengths > 1)
    pool = items[np.repeat(many, lengths)]
    offsets = np.concatenate([[0], np.cumsum(lengths[many])[:-1]]).astype(np.uint32)
    entry[many] = TAG_MANY | lengths[many].astype(np.uint32) << 4 | offsets << 8
    cmap = np.full(CMAP_LIMIT, TAG_SLOW, dtype=np.uint32)
    cmap[cps] = entry
    _tables[key] = (cmap.astype("<u4").tobytes(), pool.astype("<u4").tobytes())
    return _tables[key]


def python_whitespace() -> list[int]:
    """Code points that Python's str.isspace() (so `\\s`, strip() and split()) takes as whitespace."""
    if not _spaces:
        _spaces.extend(c for c in range(0x110000) if chr(c).isspace())
    return _spaces


def native_encoder(tok: Tokenizer):
    """The C encoder object for `tok` (callers check `unsupported(tok)` first)."""
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    cmap, pool = char_tables(tok)
    return _native.Encoder(list(vocab), list(vocab.values()), model.get("continuing_subword_prefix", "##"),
                           vocab[model["unk_token"]], model.get("max_input_chars_per_word", 100), cmap, pool,
                           python_whitespace(), sorted(sentence_rules.ABBREVIATIONS),
                           sentence_rules._ends_with_abbreviation)


class NativeEncoder:
    """Paragraphs -> sentences -> ids in C on `threads` threads; SLOW sentences via `tokenizers`."""

    name = "native"

    def __init__(self, tok: Tokenizer, threads: int = 1):
        self.reference = ReferenceEncoder(tok)
        self._c = native_encoder(tok)
        self.threads = max(1, threads)
        self._pool = ThreadPoolExecutor(self.threads - 1, "bertprep-encode") if self.threads > 1 else None

    def prepare(self, paragraphs: list[str], opens: bytes) -> list[tuple[list[str], bytes]]:
        """Cut the batch into one slice per thread, of about equal text length."""
        if self.threads == 1 or len(paragraphs) < 2 * self.threads:
            return [(paragraphs, opens)]
        cum = np.cumsum([len(p) for p in paragraphs])
        cuts = np.searchsorted(cum, cum[-1] * np.arange(1, self.threads) / self.threads)
        bounds = [0, *sorted(set(int(c) + 1 for c in cuts if c + 1 < len(paragraphs))), len(paragraphs)]
        return [(paragraphs[a:b], opens[a:b]) for a, b in zip(bounds, bounds[1:])]

    def _encode_slice(self, part: tuple[list[str], bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids_b, lengths_b, starts_b, slow = self._c.encode(*part)
        ids = np.frombuffer(ids_b, dtype=np.int32)
        lengths = np.frombuffer(lengths_b, dtype=np.int64)
        starts = np.frombuffer(starts_b, dtype=np.bool_)
        if slow:
            where = np.fromiter((i for i, _ in slow), dtype=np.int64, count=len(slow))
            slow_ids, slow_lengths = self.reference.encode_sentences([s for _, s in slow])
            lengths = lengths.copy()
            lengths[where] = slow_lengths
            is_slow = np.zeros(len(lengths), dtype=bool)
            is_slow[where] = True
            from_slow = np.repeat(is_slow, lengths)
            merged = np.empty(len(from_slow), dtype=np.int32)
            merged[~from_slow] = ids
            merged[from_slow] = slow_ids
            ids = merged
        return ids, lengths, starts

    def encode(self, prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, tokens per sentence, sentence opens a document) for one prepared batch."""
        if len(prepared) == 1:
            return self._encode_slice(prepared[0])
        later = [self._pool.submit(self._encode_slice, part) for part in prepared[1:]]
        parts = [self._encode_slice(prepared[0])] + [f.result() for f in later]
        return tuple(np.concatenate(column) for column in zip(*parts))

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown()
