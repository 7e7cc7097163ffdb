"""Dynamic masking: every training example masked afresh each epoch, at any rate, from the shards
that exist (RoBERTa's dynamic masking; MosaicBERT's and ModernBERT's 30%, NeoBERT's all-[MASK]).

Every shard keeps the original ids: `input_ids` with `masked_ids` put back at the first
`num_masked` of `masked_positions`. `remask` restores them and masks again, and returns the
columns the static path gives (the model's masked-only head reads `masked_positions`, whatever
their number), so the loop cannot tell the two apart. Validation never comes through here: its
figures stay on the shards' static 15% masks, comparable across runs.

Which tokens: exactly `k = min(P, max(1, rint(length * p)))` of a row's candidates (tokens within
its length that are not special; at most all of them), `length` counting [CLS] and [SEP]: google's
count, the rule the shards were masked with (preprocess/masking.py);
`P = max(1, rint(max_len * p))` slots, so `k` never hits the cap and the head computes no wasted
slots (Bernoulli per token would need P several standard deviations above the mean to keep the
cap from biasing against the ends of rows: 60 slots instead of 38 at 128 x 0.3). Exact-k costs a
row-wise sort of uint32 keys (a partition past 256 tokens), which numpy does with SIMD in about
the time of the hash itself.

The randomness is a counter-based hash, not a generator: each row's key is splitmix64 of (seed,
epoch, file, row), and a token's draw is murmur3's 32-bit finaliser of (key, position). So a mask
is a pure function of those five numbers: the same for any batch size, batch composition, worker
count or resume point, and different every epoch. The 80/10/10 choice and the random id come from
the key's other half, so they are independent of which tokens were chosen.

With `whole_word`, a word (a non-`##` candidate and the `##` candidates after it) is chosen whole
or not at all: words in the order of their first token's hash, taken greedily while they fit in
`k` (google's rule, as the shards'), and one 80/10/10 draw per word (BERT's; HF masks every token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from bertprep.shards.errors import ConfigError
from bertprep.shards.options import check, option
from bertprep.trainer.stream import _loader, _mix  # _loader: the C kernel, None when not built

MaskReplace = Literal["80/10/10", "mask-only"]
_GOLDEN32 = np.uint32(0x9E3779B9)
_ACTION_SALT = np.uint32(0x68E31DA4)  # separates the random-id draw from the 80/10/10 draw


@dataclass(frozen=True, kw_only=True)
class MaskingConfig:
    """masking: re-mask the training examples every epoch (remask.py); validation keeps the shards' masks"""

    mask_prob: float | None = option(None, above=0, below=1, help=(
        "re-mask every training example each epoch at this rate, from the original ids the shards keep "
        "(default: the shards' own static masks)"))
    mask_replace: MaskReplace = option("80/10/10", help=(
        "with --mask-prob: 80/10/10 ([MASK] / random token / kept, as BERT) or mask-only (every chosen token "
        "[MASK], as NeoBERT)"))
    whole_word: bool = option(False, help="with --mask-prob: choose whole words (a token and its ## pieces) together")

    def __post_init__(self):
        check(self)
        if self.mask_prob is None and (self.whole_word or self.mask_replace != "80/10/10"):
            raise ConfigError("--whole-word and --mask-replace set how examples are re-masked; give --mask-prob too")

    def slots(self, max_len: int) -> int:
        """Prediction slots per example: enough for the most a row of `max_len` tokens gets."""
        return max(1, int(np.rint(max_len * self.mask_prob)))


def row_keys(seed: int, epoch, file, row) -> np.ndarray:
    """(n,) uint64 keys of rows: splitmix64 chained over (seed, epoch, file, row), broadcast."""
    epoch, file, row = np.broadcast_arrays(*(np.asarray(a, dtype=np.uint64) for a in (epoch, file, row)))
    h = _mix(np.full(epoch.shape, seed, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    for part in (epoch, file, row):
        h = _mix(h ^ part)
    return h


def _draw(key32: np.ndarray, pos: np.ndarray, *, high_only: bool = False) -> np.ndarray:
    """uint32 hash of (row key, position): murmur3's finaliser; key32 (n, 1), pos broadcastable.
    `high_only`: without the last step, which changes only the low 16 bits (for sort keys, whose
    order the high bits decide)."""
    x = key32 + pos.astype(np.uint32, copy=False) * _GOLDEN32
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x85EBCA6B)
    x ^= x >> np.uint32(13)
    x *= np.uint32(0xC2B2AE35)
    if not high_only:
        x ^= x >> np.uint32(16)
    return x


@dataclass(frozen=True)
class Vocab:
    """What masking needs of a vocabulary: which ids are never chosen nor drawn, which continue a word."""

    is_special: np.ndarray               # (V,) bool
    is_continuation: np.ndarray | None   # (V,) bool; None: unknown (no whole-word masking)
    mask_id: int

    @property
    def special_below(self) -> int | None:
        """S when exactly the ids below S are special (BERT's and bertprep's vocabularies): the
        candidate test is then one comparison instead of a table look-up."""
        s = int(np.flatnonzero(self.is_special)[-1]) + 1 if self.is_special.any() else 0
        return s if self.is_special[:s].all() else None


def vocab_from(meta: dict, words: list[str] | None) -> Vocab:
    """The masking vocabulary of a shard set: from its vocab.txt when found (bracketed tokens are
    special, `##` pieces continue words: the rule the shards were masked with), else its five
    special ids only."""
    size = int(meta["vocab_size"])
    if words is not None:
        is_special = np.fromiter((t.startswith("[") and t.endswith("]") and len(t) > 2 for t in words), bool, size)
        is_cont = np.fromiter((t.startswith("##") and len(t) > 2 for t in words), bool, size)
    else:
        is_special, is_cont = np.zeros(size, dtype=bool), None
    is_special[list(meta["special_ids"].values())] = True
    return Vocab(is_special=is_special, is_continuation=is_cont, mask_id=int(meta["special_ids"]["mask"]))


def original_ids(cols: dict[str, np.ndarray]) -> np.ndarray:
    """(N, T) input_ids with each row's masked_ids put back at its masked_positions."""
    return _restored(cols)[:, :-1]


def _restored(cols: dict[str, np.ndarray]) -> np.ndarray:
    """(N, T + 1): the original ids and a scratch column that unused slots point at, so that every
    gather and scatter below runs over whole (N, P) arrays without compacting them first."""
    N, T = cols["input_ids"].shape
    ids = np.zeros((N, T + 1), dtype=cols["input_ids"].dtype)
    ids[:, :T] = cols["input_ids"]
    pos = cols["masked_positions"]
    live = np.arange(pos.shape[1], dtype=np.int32) < cols["num_masked"][:, None]
    flat = np.where(live, pos, T) + np.arange(0, N * (T + 1), T + 1)[:, None]
    ids.ravel()[flat] = cols["masked_ids"]
    ids[:, T] = 0  # what unused slots read back as masked_ids, whatever a shard holds there
    return ids


def remask(cols: dict[str, np.ndarray], keys: np.ndarray, cfg: MaskingConfig, vocab: Vocab, *,
           native: bool = True) -> dict[str, np.ndarray]:
    """The columns of N shard rows with fresh masks drawn from `keys` (N,) (see `row_keys`):
    input_ids, masked_positions (ascending, then 0), masked_ids and num_masked replaced; the rest as given.
    The C kernel (`_loader.c`: 2.5x faster for tokens, 3.5x for whole words, GIL released) when
    built and `native`; the numpy definition below otherwise. Both give the same arrays
    (tests/test_remask.py)."""
    if cfg.whole_word and vocab.is_continuation is None:
        raise ConfigError("--whole-word needs the vocabulary's ## pieces: give --vocab (the token store's vocab.txt)")
    if native and _loader is not None:
        return _remask_native(cols, keys, cfg, vocab)
    wide = _restored(cols)
    ids = wide[:, :-1]
    N, T = ids.shape
    P = min(cfg.slots(T), T)
    below = vocab.special_below
    off = ids < below if below is not None else vocab.is_special[ids]                          # (N, T)
    off |= np.arange(T, dtype=np.int32) >= cols["length"][:, None]        # candidates: the rest
    n = T - np.count_nonzero(off, axis=1)
    length = cols["length"].astype(np.int64)
    k = np.minimum(np.minimum(np.maximum(1, np.rint(length * cfg.mask_prob).astype(np.int64)), P), n)
    lo = (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32)[:, None]                            # which tokens
    hi = (keys >> np.uint64(32)).astype(np.uint32)[:, None]                                     # what they become
    if cfg.whole_word:
        positions, unit, k = _whole_words(ids, ~off, k, P, lo, vocab)
    else:
        positions = _tokens(off, k, P, lo)
        unit = positions
    # (N, P) throughout: unused slots sit at position T, the scratch column, whose id is 0.
    flat = positions.astype(np.int64) + np.arange(0, N * (T + 1), T + 1, dtype=np.int64)[:, None]
    original = wide.ravel()[flat]
    new = np.full_like(original, vocab.mask_id)
    if cfg.mask_replace == "80/10/10":
        u = _draw(hi, unit)                                              # one draw per word for the action
        pick = _draw(hi ^ _ACTION_SALT, positions).astype(np.uint64)     # and one per token for the random id
        if below is not None:  # the non-special ids are below..V-1
            random_ids = (pick * np.uint64(len(vocab.is_special) - below) >> np.uint64(32)) + np.uint64(below)
        else:
            pool = np.flatnonzero(~vocab.is_special)
            random_ids = pool[pick * np.uint64(pool.size) >> np.uint64(32)]
        new = np.where(u < np.uint32(0.8 * 2**32), new,
                       np.where(u < np.uint32(0.9 * 2**32), random_ids.astype(ids.dtype), original))
    wide.ravel()[flat] = new
    return cols | {"input_ids": ids, "masked_positions": np.where(positions < T, positions, 0).astype(np.uint16),
                   "masked_ids": original, "num_masked": k.astype(np.uint16)}


def _remask_native(cols: dict[str, np.ndarray], keys: np.ndarray, cfg: MaskingConfig, vocab: Vocab) -> dict:
    ids = np.ascontiguousarray(cols["input_ids"])
    N, T = ids.shape
    P = min(cfg.slots(T), T)
    below = vocab.special_below
    V = len(vocab.is_special)
    out = {"input_ids": np.empty_like(ids), "masked_positions": np.empty((N, P), dtype=np.uint16),
           "masked_ids": np.empty((N, P), dtype=ids.dtype), "num_masked": np.empty(N, dtype=np.uint16)}
    pool = np.flatnonzero(~vocab.is_special).astype(np.uint32) if below is None else np.zeros(0, np.uint32)
    u16 = [np.ascontiguousarray(cols[k], dtype=np.uint16) for k in ("masked_positions", "num_masked", "length")]
    _loader.remask(ids, u16[0], np.ascontiguousarray(cols["masked_ids"], dtype=ids.dtype), u16[1], u16[2],
                   np.ascontiguousarray(keys, dtype=np.uint64), vocab.is_special.view(np.uint8),
                   (vocab.is_continuation if cfg.whole_word else vocab.is_special).view(np.uint8), pool,
                   out["input_ids"], out["masked_positions"], out["masked_ids"], out["num_masked"],
                   T, u16[0].shape[1], P, ids.dtype.itemsize, -1 if below is None else below, vocab.mask_id, V,
                   max(1, (T - 1).bit_length()), float(cfg.mask_prob), cfg.mask_replace == "80/10/10",
                   bool(cfg.whole_word))
    return cols | out


def _keys(off: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, int]:
    """Sort keys (N, T): the hash in the high bits, the position in the low ones (so keys are
    unique and a sort gives both order and place); the positions marked `off` sort last."""
    T = off.shape[1]
    bits = max(1, (T - 1).bit_length())
    if bits <= 10:  # >= 22 random bits; uint32 sorts twice as fast as uint64
        key = _draw(lo, np.arange(T, dtype=np.uint32), high_only=True)
        key &= np.uint32(~((1 << bits) - 1) & 0xFFFFFFFF)
        key |= np.arange(T, dtype=np.uint32)
    else:
        key = _draw(lo, np.arange(T, dtype=np.uint32)).astype(np.uint64) << np.uint64(bits)
        key |= np.arange(T, dtype=np.uint64)
    key |= off * key.dtype.type(np.iinfo(key.dtype).max)  # 8x faster than bitwise_or(..., where=off)
    return key, (1 << bits) - 1


def _tokens(off: np.ndarray, k: np.ndarray, P: int, lo: np.ndarray) -> np.ndarray:
    """(N, P) positions, ascending in the first k[i] slots of row i (its k[i] smallest-keyed
    candidates: positions not `off`), then T."""
    key, pos_mask = _keys(off, lo)
    if key.shape[1] > 256:  # only the P smallest keys can be chosen; up to 256, a whole sort is as fast
        key = np.partition(key, P - 1, axis=1)[:, :P]
    key.sort(axis=1)
    T = off.shape[1]
    positions = np.where(np.arange(P) < k[:, None], (key[:, :P] & key.dtype.type(pos_mask)).astype(np.uint32,
                         copy=False), np.uint32(T))
    positions.sort(axis=1)  # the chosen ascending, the unused slots (T) after them; uint32 sorts fastest
    return positions


def _whole_words(ids, cand, k, P, lo, vocab: Vocab):
    """(positions, the first position of each one's word, tokens per row) of whole words taken
    greedily in key order while they fit in k."""
    N, T = cand.shape
    start = cand.copy()
    start[:, 1:] &= ~(vocab.is_continuation[ids[:, 1:]] & cand[:, :-1])
    # A word runs from its start to the next position that does not continue it (a start or a
    # non-candidate): `after[i]`, the first such position at or after i, by a running minimum from
    # the right. Position 0 of every row is one, so no word crosses into the next row.
    inside = (cand & ~start).ravel()
    after = np.where(inside, np.int32(N * T), np.arange(N * T, dtype=np.int32))
    after = np.append(np.minimum.accumulate(after[::-1])[::-1], np.int32(N * T))
    key, pos_mask = _keys(~start, lo)
    key.sort(axis=1)
    words = np.count_nonzero(start, axis=1)
    base = np.arange(0, N * T, T, dtype=np.int64)
    # Greedy settles within the first words of the random order (P words hold at least k tokens):
    # run it on P of them, then on the rest only for the rows that still have room.
    W = min(T, P, int(words.max(initial=0)))
    first = (key[:, :W] & pos_mask).astype(np.int64) + base[:, None]
    sizes = np.where(np.arange(W) < words[:, None], after[np.minimum(first + 1, N * T)] - first, 0)
    taken, left = _greedy_fit(sizes, k)
    starts, lengths = [first[taken]], [sizes[taken]]
    rest = np.flatnonzero((left > 0) & (words > W))
    if rest.size:
        first = (key[rest, W:] & pos_mask).astype(np.int64) + base[rest, None]
        sizes = np.where(np.arange(W, T) < words[rest, None], after[np.minimum(first + 1, N * T)] - first, 0)
        taken, _ = _greedy_fit(sizes, left[rest])
        starts.append(first[taken])
        lengths.append(sizes[taken])
    starts, lengths = np.concatenate(starts), np.concatenate(lengths)
    # Every token of the chosen words, each knowing its word's start; then row by row, ascending.
    offset = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    tokens = np.repeat(starts, lengths) + offset
    chosen = np.zeros(N * T, dtype=bool)
    chosen[tokens] = True
    is_start = np.zeros(N * T, dtype=bool)
    is_start[starts] = True
    at = np.flatnonzero(chosen)
    word_start = np.maximum.accumulate(np.where(is_start[at], at, 0))  # a word's tokens are consecutive
    rows = at // T
    got = np.bincount(rows, minlength=N)
    slot = rows * P + np.arange(at.size) - np.repeat(np.cumsum(got) - got, got)
    positions = np.full((N, P), T, dtype=np.uint32)
    unit = np.zeros((N, P), dtype=np.uint32)
    positions.ravel()[slot] = at - rows * T
    unit.ravel()[slot] = word_start - rows * T
    return positions, unit, got


def _greedy_fit(size: np.ndarray, budget: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which words (size 0: none), in the given order, greedy all-or-nothing packing into
    `budget` takes, and the budget left. Each pass drops words larger than what is left (greedy
    would skip them) and takes the prefix of the rest that fits; everything taken precedes
    everything undecided, so this is the sequential greedy in a few vectorized passes."""
    taken = np.zeros(size.shape, dtype=bool)
    open_ = size > 0
    left = budget.astype(np.int64)
    while True:
        open_ &= size <= left[:, None]
        if not open_.any():
            return taken, left
        fits = open_ & (_row_cumsum(np.where(open_, size, 0)) <= left[:, None])
        taken |= fits
        open_ &= ~fits
        left = left - np.where(fits, size, 0).sum(axis=1)


def _row_cumsum(x: np.ndarray) -> np.ndarray:
    """np.cumsum(x, axis=1) of a 2-D array, as one flat cumsum (numpy's axis=1 runs a slow loop per row)."""
    flat = np.cumsum(x.ravel()).reshape(x.shape)
    return flat - (flat[:, :1] - x[:, :1])


class Remasker:
    """`remask` for a training stream: `self(cols, epoch, file, rows)` re-masks rows of one file
    (`ShardStream.batches` calls it once per file of a prefetch chunk: numpy's per-call costs are
    paid per chunk, not per batch)."""

    def __init__(self, cfg: MaskingConfig, vocab: Vocab, seed: int):
        if cfg.mask_prob is None:
            raise ValueError("Remasker needs a --mask-prob")
        self.cfg, self.vocab, self.seed = cfg, vocab, seed

    def __call__(self, cols: dict[str, np.ndarray], epoch, file, rows) -> dict[str, np.ndarray]:
        return remask(cols, row_keys(self.seed, epoch, file, rows), self.cfg, self.vocab)
