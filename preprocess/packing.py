"""Packing documents into fixed-length examples `[CLS] A [SEP] (B [SEP]) [PAD]...`.

Input is a token store held as numpy arrays (np.memmap works): `ids` (T,) token ids,
`sent_offsets` (S+1,) where sentence s is `ids[sent_offsets[s]:sent_offsets[s+1]]`, and
`doc_offsets` (D+1,) where document d is sentences `doc_offsets[d]..doc_offsets[d+1]`. A chunk is
the documents `doc_ids`, in that order; `pack_documents` turns it into a `PackedBatch`.

Two strategies:

* `segment` (default), after google-research/bert's create_pretraining_data: whole sentences of
  one document are packed up to a target length; the budget is max_len - 2 (max_len - 3 with
  NSP). With probability short_seq_prob an example's target is instead uniform in [2, budget],
  drawn per example (google draws it once per document). A sentence longer than the budget is
  first cut into budget-sized pieces, so without NSP every token of the chunk lands in exactly one
  example and no example mixes documents. A sentence longer than a short target is taken whole.
  With NSP the accumulated sentences are split at a random sentence boundary into A and B
  (label 1). With probability 0.5 B instead comes from a random other document of
  `random_doc_pool` (label 0): it starts at a random sentence start and runs up to the rest of the
  target (at least one token), and A's unused sentences are given back for the next example.
  When only one sentence was accumulated (it filled the target alone), an is-next B is the
  document's next sentence; only when there is none is B forced to be random. (google forces a
  random B for every lone sentence, which skews labels towards 0 where long sentences fill the
  budget alone: 34% is-next on our test corpus against 46% here.) The pair is then cut to the
  budget by dropping tokens from the longer side (B on a tie), each from the front or the back
  at random. When the pool holds no other non-empty document every B is real (label 1): a
  document's last lone sentence is split at a random token, a last one-token one is dropped.
* `split`: the chunk's documents are one token stream cut into windows of exactly max_len - 2
  tokens, `[CLS] window [SEP]` with no padding; the tail shorter than a window is dropped. With
  NSP the windows are max_len - 3 tokens, split at a random point into A and B; with probability
  0.5 B is replaced by an equally long span (uniform start) of a random other document (label 0).
  "Other" means neither the document of A's last token nor that of B's first; a window finds one
  among 8 random draws from the pool that is long enough, or else keeps its real B (label 1).

* `pack`: the chunk's documents, in order, fill rows of exactly max_len slots with no padding:
  each document piece is `[CLS] piece [SEP]` (a row may hold several), and a document that does
  not fit in what is left of a row is cut at the row's end and carried on in the next row as a
  new piece (so the sentences before the cut are whole and the one across it is cut). A piece
  needs 3 slots, so a row with 1 or 2 slots left after a document ends is closed with that much
  [PAD], and the chunk's last row is padded: nothing else is, and no token is lost or repeated.
  Each row's pieces are listed in `doc_starts` (start slot of each `[CLS]`) and `num_docs`, from
  which the trainer builds block-diagonal attention and positions that restart at each piece.
  A [CLS] per piece (as ModernBERT's packing concatenates whole `[CLS] ... [SEP]` sequences)
  makes every piece exactly the input an unpacked example of that length would be: position 0
  is [CLS], and each piece has its own [CLS] to attend to. No NSP (rows hold no pairs).

Documents are walked by a Python loop over examples in `segment` (sentences are the unit; each
step is a bisect) and over documents in `pack`; everything per token is vectorized.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Literal

import numpy as np

from bertprep.shards.errors import ConfigError, InputError
from bertprep.shards.options import check, option

SPLIT_DOC_TRIES = 8  # random documents a split-mode window tries before keeping its real B


@dataclass(frozen=True, kw_only=True)
class PackConfig:
    """How documents become examples."""

    max_len: int = option(128, at_least=8, at_most=4096, help="Tokens per example (8..4096), [CLS]/[SEP] included.")
    strategy: Literal["segment", "split", "pack"] = option("segment", help=(
        "segment: whole sentences of one document, as google-research/bert; split: contiguous windows of exactly "
        "max-len - 2 tokens (no padding); pack: consecutive documents fill every example, each document piece "
        "[CLS] ... [SEP], with the boundaries stored for per-document attention (no NSP)."))
    short_seq_prob: float = option(0.1, at_least=0, at_most=1,
                                   help="Share of segment-strategy examples given a random shorter target length.")
    nsp: bool = option(False, help="Make [CLS] A [SEP] B [SEP] pairs with next-sentence labels (50% random B).")

    def __post_init__(self):
        check(self)
        if self.strategy == "pack" and self.nsp:
            raise ConfigError("--nsp does not apply to --strategy pack (a packed example holds whole document "
                              "pieces, not sentence pairs); drop --nsp or use --strategy segment")

    @property
    def budget(self) -> int:
        """Tokens left for A and B after [CLS] and the [SEP]s."""
        return self.max_len - (3 if self.nsp else 2)


@dataclass(frozen=True)
class SpecialIds:
    """The control tokens' ids in the vocab."""

    pad: int
    unk: int
    cls: int
    sep: int
    mask: int


@dataclass(frozen=True)
class PackedBatch:
    """Fixed-length examples, one per row."""

    input_ids: np.ndarray  # (N, max_len) ids dtype: [CLS] A [SEP] (B [SEP]) then [PAD]
    token_type_ids: np.ndarray  # (N, max_len) uint8: 0 for [CLS], A, its [SEP]; 1 for B, its [SEP]
    length: np.ndarray  # (N,) uint16: real tokens
    nsp_label: np.ndarray | None  # (N,) int8: 1 = B follows A, 0 = random B; None without NSP
    doc_starts: np.ndarray | None = None  # (N, max_len // 3) uint16, `pack` only: each piece's [CLS] slot, 0 after
    num_docs: np.ndarray | None = None  # (N,) uint16, `pack` only: document pieces in the row


def pack_documents(ids: np.ndarray, sent_offsets: np.ndarray, doc_offsets: np.ndarray,
                   doc_ids: np.ndarray, *, cfg: PackConfig, special: SpecialIds,
                   rng: np.random.Generator, random_doc_pool: np.ndarray) -> PackedBatch:
    """Pack the documents `doc_ids` (in order) into examples; same inputs and rng state give the
    same batch. `random_doc_pool` lists the documents NSP may draw a random B from."""
    ids, sent_offsets, doc_offsets = np.asarray(ids), np.asarray(sent_offsets), np.asarray(doc_offsets)
    doc_ids = _check_docs(np.asarray(doc_ids), doc_offsets, "doc_ids")
    pool = _check_docs(np.asarray(random_doc_pool), doc_offsets, "random_doc_pool")
    if cfg.strategy == "pack":
        return _pack_packed(ids, sent_offsets, doc_offsets, doc_ids, cfg, special)
    if cfg.strategy == "split":
        return _pack_split(ids, sent_offsets, doc_offsets, doc_ids, pool, cfg, special, rng)
    return _pack_segments(ids, sent_offsets, doc_offsets, doc_ids, pool, cfg, special, rng)


def _check_docs(docs: np.ndarray, doc_offsets: np.ndarray, name: str) -> np.ndarray:
    """`docs` as int64 document indices, or an InputError naming the argument."""
    if docs.ndim != 1 or (docs.size and not np.issubdtype(docs.dtype, np.integer)):
        raise InputError(f"{name} must be a 1-D integer array of document indices")
    docs = docs.astype(np.int64)
    if docs.size and (docs.min() < 0 or docs.max() >= doc_offsets.size - 1):
        raise InputError(f"{name} holds a document index outside [0, {doc_offsets.size - 1})")
    return docs


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) over (starts, lens), without a Python loop."""
    lens = lens.astype(np.int64)
    first = np.cumsum(lens) - lens
    return np.repeat(starts.astype(np.int64) - first, lens) + np.arange(int(lens.sum()))


def _assemble(src, a_start, a_len, b_start, b_len, label, cfg, special) -> PackedBatch:
    """Rows from contiguous A and B ranges of `src`; b_len is ignored without NSP."""
    n, width = a_len.size, cfg.max_len
    col = np.arange(width)
    a_len = a_len.astype(np.int64)[:, None]
    in_a = (col >= 1) & (col <= a_len)
    idx = np.where(in_a, a_start[:, None] + col - 1, 0)
    tokens = in_a
    length = a_len[:, 0] + 2
    if cfg.nsp:
        b_len = b_len.astype(np.int64)[:, None]
        in_b = (col >= a_len + 2) & (col < a_len + 2 + b_len)
        idx = np.where(in_b, b_start[:, None] + col - a_len - 2, idx)
        tokens = in_a | in_b
        length = length + b_len[:, 0] + 1
    out = np.where(tokens, src[idx], src.dtype.type(special.pad)) if n else np.zeros((0, width), src.dtype)
    rows = np.arange(n)
    out[:, 0] = special.cls
    out[rows, a_len[:, 0] + 1] = special.sep
    out[rows, length - 1] = special.sep
    token_type = ((col >= a_len + 2) & (col < length[:, None])).astype(np.uint8)
    return PackedBatch(input_ids=out, token_type_ids=token_type, length=length.astype(np.uint16),
                       nsp_label=label.astype(np.int8) if cfg.nsp else None)


def _units(sent_offsets, doc_offsets, doc_ids, piece):
    """The chunk's packing units: its non-empty sentences, those over `piece` tokens cut into
    `piece`-sized parts. Returns unit token starts, lengths, and per unit the end (exclusive) of
    its document's units and its document id."""
    s0, s1 = doc_offsets[doc_ids], doc_offsets[doc_ids + 1]
    sents = _ranges(s0, s1 - s0)
    sent_doc = np.repeat(np.arange(doc_ids.size), s1 - s0)
    s_start = sent_offsets[sents].astype(np.int64)
    s_len = sent_offsets[sents + 1].astype(np.int64) - s_start
    n_pieces = -(-s_len // piece)  # 0 for an empty sentence
    which = _ranges(np.zeros_like(n_pieces), n_pieces)  # piece number within its sentence
    first_unit = np.repeat(np.arange(sents.size), n_pieces)
    u_start = s_start[first_unit] + which * piece
    u_len = np.minimum(piece, s_len[first_unit] - which * piece)
    u_doc = sent_doc[first_unit]
    doc_end = np.cumsum(np.bincount(u_doc, minlength=doc_ids.size))[u_doc]
    return u_start, u_len, doc_end, doc_ids[u_doc]


def _pack_segments(ids, sent_offsets, doc_offsets, doc_ids, pool, cfg, special, rng) -> PackedBatch:
    budget = cfg.budget
    u_start, u_len, doc_end, u_doc = _units(sent_offsets, doc_offsets, doc_ids, budget)
    n_units = u_len.size
    # Every example consumes at least one unit, so n_units draws of each kind are enough; drawing
    # them up front keeps the loop free of rng calls (and the result deterministic).
    short = rng.random(n_units) < cfg.short_seq_prob
    targets = np.where(short, rng.integers(2, budget + 1, size=n_units), budget).tolist()
    cum = np.concatenate([[0], np.cumsum(u_len)]).tolist()
    doc_end = doc_end.tolist()
    if not cfg.nsp:
        starts, ends, u, i = [], [], 0, 0
        while u < n_units:
            e = max(bisect_right(cum, cum[u] + targets[i], u + 1, doc_end[u] + 1) - 1, u + 1)
            starts.append(u)
            ends.append(e)
            u, i = e, i + 1
        starts, ends = np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)
        cum = np.array(cum, dtype=np.int64)
        a_len = cum[ends] - cum[starts]
        return _assemble(ids, u_start[starts], a_len, None, None, None, cfg, special)
    nsp = _NspWalk(sent_offsets, doc_offsets, pool, rng, n_units)
    rows = nsp.walk(u_start.tolist(), u_len.tolist(), cum, doc_end, u_doc.tolist(), targets, budget)
    a_start, a_len, b_start, b_len, label = np.array(rows, dtype=np.int64).reshape(-1, 5).T
    return _assemble(ids, a_start, a_len, b_start, b_len, label, cfg, special)


class _NspWalk:
    """The sequential NSP pairing of `segment` mode, with its random draws made up front."""

    def __init__(self, sent_offsets, doc_offsets, pool, rng, n):
        self.sent_offsets, self.doc_offsets, self.rng = sent_offsets, doc_offsets, rng
        sizes = sent_offsets[doc_offsets[pool + 1]] - sent_offsets[doc_offsets[pool]]
        self.pool = pool[sizes > 0].tolist()  # B needs at least one token
        self.coin = (rng.random(n) < 0.5).tolist()
        self.split = rng.random(n).tolist()
        self.pick = rng.integers(0, max(1, len(self.pool)), size=n).tolist()
        self.where = rng.random(n).tolist()

    def other_doc(self, i, doc):
        """A random non-empty pool document other than `doc`, or None if there is none."""
        pool = self.pool
        if not pool or (len(pool) == 1 and pool[0] == doc):
            return None
        r, tries = pool[self.pick[i]], 0
        while r == doc and tries < 64:  # rare: 1 / len(pool); bounded in case pool repeats doc
            r, tries = pool[int(self.rng.integers(len(pool)))], tries + 1
        return None if r == doc else r

    def random_b(self, i, doc, want):
        """(start, length) of up to `want` tokens of a random other document from a random
        sentence start, or None when the pool offers no other document."""
        r = self.other_doc(i, doc)
        if r is None:
            return None
        s0, s1 = int(self.doc_offsets[r]), int(self.doc_offsets[r + 1])
        end = int(self.sent_offsets[s1])
        start = int(self.sent_offsets[s0 + int(self.where[i] * (s1 - s0))])
        if start == end:  # only empty sentences follow: start at the document's first token
            start = int(self.sent_offsets[s0])
        return start, min(want, end - start)

    def walk(self, u_start, u_len, cum, doc_end, u_doc, targets, budget):
        rows, u, i, n = [], 0, 0, len(u_len)
        while u < n:
            t = targets[i]
            e = max(bisect_right(cum, cum[u] + t, u + 1, doc_end[u] + 1) - 1, u + 1)
            a_end = u + 1 + int(self.split[i] * (e - u - 1))  # in [u + 1, e - 1] when e - u >= 2
            la = cum[a_end] - cum[u]
            rb = None
            # A lone unit with no next unit in its document cannot be followed: random B.
            if self.coin[i] or (e - u == 1 and e == doc_end[u]):
                rb = self.random_b(i, u_doc[u], max(1, t - la))
            if rb is not None:  # random B; A's unused units go back to the pool of this document
                row, u = (u_start[u], la, rb[0], rb[1], 0), a_end
            elif e - u >= 2:
                row, u = (u_start[u], la, u_start[a_end], cum[e] - cum[a_end], 1), e
            elif e < doc_end[u]:  # a lone unit that fills its target: the next unit is B
                row, u = (u_start[u], la, u_start[e], u_len[e], 1), e + 1
            elif la >= 2:  # the document's last unit: split it inside
                c = 1 + int(self.split[i] * (la - 1))
                row, u = (u_start[u], c, u_start[u] + c, la - c, 1), e
            else:  # a lone one-token unit cannot make a pair
                u, i = e, i + 1
                continue
            rows.append(self._truncate(*row, budget))
            i += 1
        return rows

    def _truncate(self, a_start, la, b_start, lb, label, budget):
        """Cut the pair to the budget from the longer side (B on a tie), as google does token by
        token, each token from the front or back at random: the count from the front is binomial."""
        excess = la + lb - budget
        if excess <= 0:
            return a_start, la, b_start, lb, label
        # Down to equal lengths the longer side alone loses tokens; after that they alternate,
        # B first (ties go to B), so B takes the odd one.
        gap_cut = min(excess, abs(la - lb))
        rest = excess - gap_cut
        cut_a = rest // 2 + (gap_cut if la > lb else 0)
        cut_b = rest - rest // 2 + (gap_cut if lb > la else 0)
        front_a = int(self.rng.binomial(cut_a, 0.5))
        front_b = int(self.rng.binomial(cut_b, 0.5))
        return a_start + front_a, la - cut_a, b_start + front_b, lb - cut_b, label


def _pack_split(ids, sent_offsets, doc_offsets, doc_ids, pool, cfg, special, rng) -> PackedBatch:
    window = cfg.budget
    tok_start = sent_offsets[doc_offsets[doc_ids]].astype(np.int64)
    doc_len = sent_offsets[doc_offsets[doc_ids + 1]].astype(np.int64) - tok_start
    n_win = int(doc_len.sum()) // window
    positions = _ranges(tok_start, doc_len)[: n_win * window]  # the stream as positions in ids
    stream = ids[positions]
    a_start = np.arange(n_win, dtype=np.int64) * window
    if not cfg.nsp:
        return _assemble(stream, a_start, np.full(n_win, window), None, None, None, cfg, special)
    a_len = rng.integers(1, window, size=n_win)
    b_len = window - a_len
    b_start = a_start + a_len
    label = np.ones(n_win, dtype=np.int8)
    # The chunk documents A's last and B's first token came from: a random B must avoid both.
    doc_end = np.cumsum(doc_len)
    near_a = doc_ids[np.searchsorted(doc_end, b_start - 1, side="right")]
    near_b = doc_ids[np.searchsorted(doc_end, b_start, side="right")]
    want = rng.random(n_win) < 0.5
    if pool.size and n_win:
        cands = pool[rng.integers(0, pool.size, size=(n_win, SPLIT_DOC_TRIES))]
        c_start = sent_offsets[doc_offsets[cands]].astype(np.int64)
        c_len = sent_offsets[doc_offsets[cands + 1]].astype(np.int64) - c_start
        ok = (cands != near_a[:, None]) & (cands != near_b[:, None]) & (c_len >= b_len[:, None])
        pick = ok.argmax(axis=1)
        swap = want & ok.any(axis=1)
        rows = np.flatnonzero(swap)
        c_start, c_len = c_start[rows, pick[rows]], c_len[rows, pick[rows]]
        r_start = c_start + rng.integers(0, c_len - b_len[rows] + 1)
        # Random spans are gathered after the stream, so A and B stay ranges of one source.
        extra = ids[_ranges(r_start, b_len[rows])]
        b_start[rows] = stream.size + np.cumsum(b_len[rows]) - b_len[rows]
        stream = np.concatenate([stream, extra])
        label[rows] = 0
    return _assemble(stream, a_start, a_len, b_start, b_len, label, cfg, special)


def _pack_packed(ids, sent_offsets, doc_offsets, doc_ids, cfg, special) -> PackedBatch:
    """`pack`: documents laid end to end as `[CLS] piece [SEP]` blocks in rows of max_len slots."""
    W = cfg.max_len
    w2 = W - 2  # tokens in a piece that fills a row alone
    tok_start = sent_offsets[doc_offsets[doc_ids]].astype(np.int64)
    doc_len = sent_offsets[doc_offsets[doc_ids + 1]].astype(np.int64) - tok_start
    keep = doc_len > 0
    tok_start, doc_len = tok_start[keep], doc_len[keep]
    # Where each document's first piece goes: the only sequential part, O(1) per document.
    r0, c0, first = (np.empty(doc_len.size, dtype=np.int64) for _ in range(3))
    r = c = 0
    for i, n in enumerate(doc_len.tolist()):
        if W - c < 3:  # no room for [CLS] token [SEP]: close the row (1 or 2 [PAD])
            r, c = r + 1, 0
        f = min(n, W - c - 2)
        r0[i], c0[i], first[i] = r, c, f
        rest = n - f
        if rest:  # carried on in full rows, then a tail piece at the start of the next row
            r, c = r + 1 + rest // w2, (rest % w2 + 2 if rest % w2 else 0)
        else:
            c += f + 2
    n_rows = r + (c > 0)
    # Every piece: the first one of each document, then its full rows, then its tail.
    rest = doc_len - first
    full, tail = rest // w2, rest % w2
    per_doc = 1 + full + (tail > 0)
    doc_of = np.repeat(np.arange(doc_len.size), per_doc)
    j = np.arange(doc_of.size) - np.repeat(np.cumsum(per_doc) - per_doc, per_doc)  # piece number in its document
    p_row = r0[doc_of] + j
    p_col = np.where(j == 0, c0[doc_of], 0)
    p_tok = tok_start[doc_of] + np.where(j == 0, 0, first[doc_of] + (j - 1) * w2)
    p_len = np.where(j == 0, first[doc_of], np.where(j <= full[doc_of], w2, tail[doc_of]))
    # Rows: tokens, then [CLS] and [SEP] around each piece; the rest is [PAD].
    out = np.full((n_rows, W), special.pad, dtype=ids.dtype)
    flat = out.reshape(-1)
    at = p_row * W + p_col
    flat[_ranges(at + 1, p_len)] = ids[_ranges(p_tok, p_len)]
    flat[at] = special.cls
    flat[at + p_len + 1] = special.sep
    num_docs = np.bincount(p_row, minlength=n_rows)
    length = np.bincount(p_row, weights=p_len + 2, minlength=n_rows).astype(np.int64)
    slot = np.arange(p_row.size) - (np.cumsum(num_docs) - num_docs)[p_row]  # piece number in its row
    doc_starts = np.zeros((n_rows, W // 3), dtype=np.uint16)
    doc_starts[p_row, slot] = p_col
    return PackedBatch(input_ids=out, token_type_ids=np.zeros((n_rows, W), dtype=np.uint8),
                       length=length.astype(np.uint16), nsp_label=None, doc_starts=doc_starts,
                       num_docs=num_docs.astype(np.uint16))
