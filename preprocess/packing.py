"""Packing documents into fixed-length examples `[CLS] A [SEP] (B [SEP]) [PAD]...`.

Input is a token store held as numpy arrays (np.memmap works): `ids` (T,) token ids,
`sent_offsets` (S+1,) where sentence s is `ids[sent_offsets[s]:sent_offsets[s+1]]`, and
`doc_offsets` (D+1,) where document d is sentences `doc_offsets[d]..doc_offsets[d+1]`. A chunk is
the documents `doc_ids`, in that order; `pack_documents` turns it into a `PackedBatch`.

Two strategies:

* `segment` (default), as google-research/bert's create_pretraining_data builds instances, but
  losing no token. The budget is max_len - 2 (max_len - 3 with NSP). An example's target is the
  budget or, with probability short_seq_prob, uniform in [2, budget] (drawn per example; google
  draws it once per document). Sentences of one document are added until the target is reached
  or passed (google's fill), and the example is cut at the budget; where google drops what
  passes the budget, here it is carried: the next example starts with the rest of the cut
  sentence. So without NSP a document is cut into budget-long examples, each but the last ending
  where the budget runs out and the last at the document's end (a short target ends its example
  at the first sentence end past it), and every token of the chunk lands in exactly one example.
  With NSP the example's sentences are split into A and B at a random sentence end (google's
  a_end); B is real (label 1) or, with probability 0.5, taken from a random other document of
  `random_doc_pool` (label 0; never A's own document, which google can pick): google's random
  B, whole sentences from a random one on until the target is reached or passed. Such a pair
  is cut to the budget by google's truncate_seq_pair (from the longer side, B on a tie), B's
  tokens each from the front or back at random and A's from its back; A's cut tail and its
  unused sentences go back to the document, so they start the next example. A real pair is the
  example's own tokens up to the budget, cut only at its end and carried: where google trims
  the longer side, here B alone gives up the excess, so A can be the longer side. Deviations
  that keep more examples real: a lone sentence that reached the target is followed by the
  document's next sentence as a real B when it leaves room for one (google forces a random B:
  44% is-next on the shipped corpus, 48% here), and a sentence that fills the budget alone is
  split at a random token into A and a real B; only a document's last lone sentence always
  gets a random B. Tokens lost: none without NSP; with NSP, none of a document's own tokens except a last
  one-token remainder when the pool holds no other non-empty document (then every B is real).
  Random Bs' tokens are copies from other documents and are cut freely.
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

from bisect import bisect_left, bisect_right
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
        "segment: sentences of one document up to the length, as google-research/bert builds instances, with what "
        "passes the length carried into the next example; split: contiguous windows of exactly max-len - 2 tokens "
        "(no padding); pack: consecutive documents fill every example, each document piece [CLS] ... [SEP], with "
        "the boundaries stored for per-document attention (no NSP)."))
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
    # The units are the chunk's non-empty sentences, whole: a piece larger than any sentence.
    u_start, u_len, doc_end, u_doc = _units(sent_offsets, doc_offsets, doc_ids, np.iinfo(np.int64).max)
    cum = np.concatenate([[0], np.cumsum(u_len)])
    # Positions are counted in the chunk's stream of units; a document's tokens are contiguous in
    # ids, so stream position x of unit u's document is ids[shift[u] + x].
    shift = (u_start - cum[:-1]).tolist()
    draws = _Draws(rng, cfg, int(cum[-1]) // budget + doc_ids.size + 16)
    cum, doc_end = cum.tolist(), doc_end.tolist()
    if cfg.nsp:
        rows = _NspWalk(sent_offsets, doc_offsets, pool, rng).walk(cum, doc_end, shift, u_doc.tolist(), draws, budget)
        a_start, a_len, b_start, b_len, label = np.array(rows, dtype=np.int64).reshape(-1, 5).T
        return _assemble(ids, a_start, a_len, b_start, b_len, label, cfg, special)
    rows, p, u = [], 0, 0
    while u < len(u_len):
        e = _fill_end(cum, doc_end, p, u, draws()[0])
        take = min(budget, cum[e] - p)  # what passes the budget is carried into the next example
        rows.append((shift[u] + p, take))
        p += take
        u = bisect_right(cum, p, u + 1, e + 1) - 1
    a_start, a_len = np.array(rows, dtype=np.int64).reshape(-1, 2).T
    return _assemble(ids, a_start, a_len, None, None, None, cfg, special)


def _fill_end(cum, doc_end, p, u, target):
    """The first unit end at or past stream position p + target (google's "reached or passed"),
    or the end of the document of unit u (which holds p)."""
    return bisect_left(cum, p + target, u + 1, doc_end[u])


def _cuts(la, lb, budget):
    """Tokens google's truncate_seq_pair removes from A and from B: one at a time from the longer
    side (B on a tie) until the pair fits the budget."""
    excess = la + lb - budget
    if excess <= 0:
        return 0, 0
    # Down to equal lengths the longer side alone loses tokens; after that they alternate, B
    # first (ties go to B), so B takes the odd one.
    gap_cut = min(excess, abs(la - lb))
    rest = excess - gap_cut
    return rest // 2 + (gap_cut if la > lb else 0), rest - rest // 2 + (gap_cut if lb > la else 0)


class _Draws:
    """Each example's random numbers (target length, NSP coin, A/B split, random document and
    sentence), drawn in blocks: no rng call per example, the same sequence for the same rng."""

    def __init__(self, rng, cfg, block):
        self.rng, self.cfg, self.block, self.rows = rng, cfg, max(1, block), iter(())

    def __call__(self):
        row = next(self.rows, None)
        if row is None:
            u = self.rng.random((self.block, 6))
            budget = self.cfg.budget
            target = np.where(u[:, 0] < self.cfg.short_seq_prob, 2 + (u[:, 1] * (budget - 1)).astype(np.int64), budget)
            self.rows = zip(target.tolist(), (u[:, 2] < 0.5).tolist(), *u[:, 3:].T.tolist())
            row = next(self.rows)
        return row


class _NspWalk:
    """The sequential NSP pairing of `segment` mode (the module docstring says how)."""

    def __init__(self, sent_offsets, doc_offsets, pool, rng):
        self.sent_offsets, self.doc_offsets, self.rng = sent_offsets, doc_offsets, rng
        sizes = sent_offsets[doc_offsets[pool + 1]] - sent_offsets[doc_offsets[pool]]
        self.pool = pool[sizes > 0].tolist()  # B needs at least one token

    def other_doc(self, pick, doc):
        """A random non-empty pool document other than `doc`, or None if there is none."""
        pool = self.pool
        if not pool or (len(pool) == 1 and pool[0] == doc):
            return None
        r, tries = pool[int(pick * len(pool))], 0
        while r == doc and tries < 64:  # rare: 1 / len(pool); bounded in case pool repeats doc
            r, tries = pool[int(self.rng.integers(len(pool)))], tries + 1
        return None if r == doc else r

    def random_b(self, pick, where, doc, want):
        """(start, length) of a random other document's sentences from a random one on, until
        `want` tokens are reached or passed (at least one sentence, as google), or None when the
        pool offers no other document."""
        r = self.other_doc(pick, doc)
        if r is None:
            return None
        s0, s1 = int(self.doc_offsets[r]), int(self.doc_offsets[r + 1])
        s = s0 + int(where * (s1 - s0))
        start, end = int(self.sent_offsets[s]), int(self.sent_offsets[s1])
        if start == end:  # only empty sentences follow: start at the document's first sentence
            s, start = s0, int(self.sent_offsets[s0])
        ends = self.sent_offsets[s + 1:s1 + 1]
        k = int(np.searchsorted(ends, start + max(1, want)))
        return start, (int(ends[k]) if k < ends.size else end) - start

    def walk(self, cum, doc_end, shift, u_doc, draws, budget):
        """Rows (a_start, a_len, b_start, b_len, label) as positions in ids."""
        rows, p, u, n = [], 0, 0, len(cum) - 1
        while u < n:
            target, coin, split, pick, where = draws()
            e = _fill_end(cum, doc_end, p, u, target)
            lone = e == u + 1
            if coin or (lone and e == doc_end[u]):  # random B (a document's last lone sentence has no next)
                a_end = e if lone else u + 1 + int(split * (e - u - 1))  # A: units u..a_end-1, as google
                la = cum[a_end] - p
                rb = self.random_b(pick, where, u_doc[u], target - la)
                if rb is not None:
                    cut_a, cut_b = _cuts(la, rb[1], budget)
                    front = int(self.rng.binomial(cut_b, 0.5))  # B's cut, token by token from front or back
                    rows.append((shift[u] + p, la - cut_a, rb[0] + front, rb[1] - cut_b, 0))
                    p += la - cut_a  # A's cut tail and unused sentences go back to the document
                    u = bisect_right(cum, p, u + 1, a_end + 1) - 1
                    continue
            if lone and e < doc_end[u] and cum[e] - p < budget:  # a lone sentence's B: the next one
                e += 1
            take = min(budget, cum[e] - p)  # what passes the budget is carried into the next example
            if e - u >= 2:  # A/B split at a random sentence end inside the example
                la = cum[u + 1 + int(split * (e - u - 1))] - p
            elif take >= 2:  # one sentence spans the example: B continues A mid-sentence
                la = 1 + int(split * (take - 1))
            else:  # one token that cannot make a pair (the pool holds no other document)
                p, u = p + 1, u + 1
                continue
            rows.append((shift[u] + p, la, shift[u] + p + la, take - la, 1))
            p += take
            u = bisect_right(cum, p, u + 1, e + 1) - 1
        return rows


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
