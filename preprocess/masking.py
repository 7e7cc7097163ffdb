"""BERT masked-language-model masking of a whole batch at once, in pure vectorized numpy.

`mask_batch` takes packed rows `[CLS] A [SEP] (B [SEP]) [PAD]...` and picks, per row, the tokens
the model must predict, as many as google-research/bert's create_masked_lm_predictions:
`k = min(max_predictions, max(1, rint(length * mask_prob)))` where `length` counts the row's real
tokens, [CLS] and [SEP]s included (google's `len(tokens)`), capped at the row's candidates (tokens
within its length that are not special), so none when there are none. Counting the specials too
(rather than the candidates alone) is google's rule, kept so that shards and google's instances
agree on the count; it adds one prediction at some lengths (125 real tokens: 19, not 18). `rint` rounds
half to even (`rint(2.5) == 2`), as Python 3's round() in google's code. Each chosen token becomes
`[MASK]` (80%), a random non-special vocab id (10%) or stays itself (10%).

With `whole_word`, a word (a non-continuation token and the `##` continuations after it; a
continuation right after a special token or at position 0 starts its own word) is chosen whole or
not at all. Words are visited in a random order and taken greedily: a word that would push the
count past `k` is skipped and later, smaller words may still fit (google's rule). So the count is
at most `k`, and exactly `k` when no row has continuations. The 80/10/10 choice is made once per
word, so a word is all `[MASK]`, all random or all kept (HF's DataCollatorForWholeWordMask masks
every chosen token; BERT does not).

No loop runs per row or per token: random keys with the non-candidates pushed to the top, a
row-wise sort, and cumsums over words. The whole-word greedy runs a few passes over the batch
(at most `max_predictions + 1`, usually two or three).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from bertprep.shards.errors import ConfigError, InputError
from bertprep.shards.options import check, option
from bertprep.shards.schema import default_max_predictions


@dataclass(frozen=True, kw_only=True)
class MaskConfig:
    """How many tokens to predict and how to corrupt them. `max_predictions` None means the
    default of `slots(max_len)`, which the caller (it knows the row length) resolves."""

    mask_prob: float = option(0.15, above=0, below=1, help="Share of tokens chosen for prediction.")
    max_predictions: int | None = option(None, at_least=1, at_most=4096, help=(
        "Prediction slots per example [default: max-len * mask-prob rounded up to a multiple of 5: 20 at 128, 80 at "
        "512]."))
    whole_word: bool = option(False, help="Choose whole words (a token and its ## pieces) together.")
    mask_token_prob: float = 0.8  # chosen tokens that become [MASK] (BERT's 80/10/10; no flag)
    random_token_prob: float = 0.1  # chosen tokens that become a random id

    def __post_init__(self):
        check(self)  # --max-predictions: at most the longest --max-len (4096)
        if not 0.0 <= self.mask_token_prob <= 1.0:
            raise ConfigError(f"mask_token_prob must be in [0, 1], got {self.mask_token_prob}")
        if not 0.0 <= self.random_token_prob <= 1.0 - self.mask_token_prob:
            raise ConfigError(f"random_token_prob must be in [0, 1 - mask_token_prob], got {self.random_token_prob}")

    def slots(self, max_len: int) -> int:
        """Prediction slots per row of `max_len` tokens: --max-predictions, or its default."""
        return self.max_predictions or default_max_predictions(max_len, self.mask_prob)


@dataclass(frozen=True)
class MaskedBatch:
    """The masked rows and what the model must predict where."""

    input_ids: np.ndarray  # (N, L) input dtype: chosen positions replaced
    masked_positions: np.ndarray  # (N, P) uint16: ascending in the first num_masked slots, 0 after
    masked_ids: np.ndarray  # (N, P) input dtype: the original ids there, 0 after
    num_masked: np.ndarray  # (N,) uint16


def prediction_counts(length: np.ndarray, n_cand: np.ndarray, mask_prob: float, max_predictions: int) -> np.ndarray:
    """k = min(P, max(1, rint(length * p))), capped at the candidates (so 0 when a row has none)."""
    k = np.maximum(1, np.rint(length * mask_prob).astype(np.int64))
    return np.minimum(np.minimum(k, max_predictions), n_cand)


def mask_batch(input_ids: np.ndarray, lengths: np.ndarray, *, cfg: MaskConfig, mask_id: int,
               is_special: np.ndarray, is_continuation: np.ndarray,
               rng: np.random.Generator) -> MaskedBatch:
    """Choose and corrupt prediction targets in every row of `input_ids` (N, L).

    `lengths` (N,) counts each row's real tokens; `is_special` and `is_continuation` are boolean
    arrays over the vocab (the caller builds them from the tokenizer). Same inputs and rng state
    give the same output.
    """
    if cfg.max_predictions is None:
        cfg = dataclasses.replace(cfg, max_predictions=cfg.slots(np.shape(input_ids)[-1]))
    input_ids, lengths, is_special, is_continuation = _check_inputs(
        input_ids, lengths, cfg, is_special, is_continuation)
    cand = (np.arange(input_ids.shape[1]) < lengths[:, None]) & ~is_special[input_ids]
    k = prediction_counts(lengths, cand.sum(axis=1), cfg.mask_prob, cfg.max_predictions)
    if cfg.whole_word:
        chosen_flat, unit_size = _choose_whole_words(input_ids, cand, k, cfg.max_predictions,
                                                     is_continuation, rng)
    else:
        chosen_flat, unit_size = _choose_tokens(cand, k, cfg.max_predictions, rng), None
    # One uniform draw per chosen unit (token, or whole word) decides [MASK] / random / keep.
    u = rng.random(chosen_flat.size)
    action = 1 + (u >= cfg.mask_token_prob) + (u >= cfg.mask_token_prob + cfg.random_token_prob)
    if unit_size is not None:  # spread each word's start and action over its tokens
        chosen_flat, action = _expand_words(chosen_flat, unit_size, action)
    # Sorting flat indices puts rows in order and positions ascending within a row; the action
    # (1 mask, 2 random, 3 keep) rides along in the two low bits.
    packed = np.sort(chosen_flat << 2 | action)
    return _corrupt(input_ids, packed >> 2, (packed & 3).astype(np.uint8), cfg.max_predictions,
                    mask_id, is_special, rng)


def _check_inputs(input_ids, lengths, cfg, is_special, is_continuation):
    """Arrays in the shapes and dtypes mask_batch relies on, or a typed error naming the problem."""
    input_ids = np.asarray(input_ids)
    lengths = np.asarray(lengths).astype(np.int64, copy=False)
    if input_ids.ndim != 2 or input_ids.dtype not in (np.uint16, np.uint32):
        raise InputError(f"input_ids must be a 2-D uint16/uint32 array, got {input_ids.dtype} {input_ids.shape}")
    width = input_ids.shape[1]
    if lengths.shape != input_ids.shape[:1] or (lengths.size and (lengths.min() < 0 or lengths.max() > width)):
        raise InputError(f"lengths must be (N,) within [0, {width}], got shape {lengths.shape}")
    if cfg.max_predictions > width:
        raise ConfigError(f"--max-predictions ({cfg.max_predictions}) must not exceed the row length ({width})")
    if width > 1 << 16:
        raise ConfigError(f"rows of {width} tokens do not fit uint16 positions (max 65536)")
    is_special, is_continuation = np.asarray(is_special), np.asarray(is_continuation)
    if is_special.dtype != bool or is_continuation.dtype != bool or is_special.shape != is_continuation.shape:
        raise InputError("is_special and is_continuation must be boolean arrays of the vocab size")
    if is_special.all():
        raise InputError("is_special marks every vocab id; no id is left for random replacement")
    return input_ids, lengths, is_special, is_continuation


def _sort_keys(eligible: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.integer]:
    """Per-row sort keys `(random << pos_bits) | position`; ineligible positions sort last.

    Packing the position into the low bits lets a plain `np.sort` (SIMD, no argsort) give both the
    random order and where each entry came from. Eligible entries draw one bit fewer than the
    ineligible ceiling, so no random draw can tie with or pass an ineligible position.
    """
    width = eligible.shape[1]
    pos_bits = max(1, (width - 1).bit_length())
    # uint32 keeps >= 23 random bits for rows up to 256 and sorts twice as fast as uint64.
    dtype = np.uint32 if pos_bits <= 8 else np.uint64
    rand_bits = np.dtype(dtype).itemsize * 8 - pos_bits - 1
    keys = rng.integers(0, 1 << rand_bits, size=eligible.shape, dtype=dtype)
    keys[~eligible] = 1 << rand_bits
    keys <<= dtype(pos_bits)
    keys |= np.arange(width, dtype=dtype)
    return keys, dtype((1 << pos_bits) - 1)


def _choose_tokens(cand: np.ndarray, k: np.ndarray, max_predictions: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Flat indices of k[i] uniformly random candidates of each row i."""
    keys, pos_mask = _sort_keys(cand, rng)
    if max_predictions < keys.shape[1]:  # only the P smallest keys can be chosen
        keys = np.partition(keys, max_predictions - 1, axis=1)[:, :max_predictions]
    keys.sort(axis=1)
    take = np.arange(keys.shape[1]) < k[:, None]
    flat = (keys & pos_mask).astype(np.int64) + np.arange(cand.shape[0])[:, None] * cand.shape[1]
    return flat[take]


def _choose_whole_words(input_ids, cand, k, max_predictions, is_continuation, rng):
    """Flat start indices and sizes of the words chosen: greedy, all-or-nothing, random order."""
    width = cand.shape[1]
    prev_cand = np.zeros_like(cand)
    prev_cand[:, 1:] = cand[:, :-1]
    start = cand & ~(is_continuation[input_ids] & prev_cand)
    # A word runs from its start to the next start or non-candidate ("boundary"). Position 0 of
    # every row is a boundary, so in the flattened batch no run crosses into the next row.
    boundary = (start | ~cand).ravel()
    bpos = np.flatnonzero(boundary)
    run = np.diff(bpos, append=boundary.size)
    is_word = start.ravel()[bpos]
    size_flat = np.zeros(boundary.size, dtype=np.int32)
    size_flat[bpos[is_word]] = run[is_word]

    keys, pos_mask = _sort_keys(start, rng)
    keys.sort(axis=1)
    n_words = start.sum(axis=1)

    def words(rows, lo, hi):  # flat starts and sizes of words lo..hi-1 of `rows` in random order
        flat = (keys[rows, lo:hi] & pos_mask).astype(np.int64) + rows[:, None] * width
        return flat, np.where(np.arange(lo, hi) < n_words[rows, None], size_flat[flat], 0)

    # Greedy almost always settles within the first few words of the random order, so run it on
    # a window of 2P words and continue past it only for the rows that still have budget.
    rows = np.arange(cand.shape[0])
    window = min(int(n_words.max(initial=0)), 2 * max_predictions)
    flat, size = words(rows, 0, window)
    taken, left = _greedy_fit(size, k)
    starts, sizes = [flat[taken]], [size[taken]]
    rest = rows[(left > 0) & (n_words > window)]
    if rest.size:
        flat, size = words(rest, window, int(n_words[rest].max()))
        taken, _ = _greedy_fit(size, left[rest])
        starts.append(flat[taken])
        sizes.append(size[taken])
    return np.concatenate(starts), np.concatenate(sizes)


def _greedy_fit(size: np.ndarray, budget: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which words (size 0 = no word), in the given order, greedy all-or-nothing packing into
    `budget` takes, and the budget left.

    Each pass drops words larger than what is left (greedy will skip them: the budget only
    shrinks) and takes the prefix of the rest that fits. Everything taken precedes everything
    undecided, so this equals the sequential greedy; a pass that takes nothing ends the loop.
    """
    taken = np.zeros(size.shape, dtype=bool)
    open_ = size > 0
    left = budget.astype(np.int64)
    while True:
        open_ &= size <= left[:, None]
        if not open_.any():
            return taken, left
        fits = open_ & (np.cumsum(np.where(open_, size, 0), axis=1) <= left[:, None])
        taken |= fits
        open_ &= ~fits
        left = left - np.where(fits, size, 0).sum(axis=1)


def _expand_words(starts: np.ndarray, sizes: np.ndarray, action: np.ndarray):
    """Flat indices of every token of the given words, each carrying its word's action."""
    total = int(sizes.sum())
    first = np.cumsum(sizes) - sizes
    tokens = np.repeat(starts - first, sizes) + np.arange(total)
    return tokens, np.repeat(action, sizes)


def _corrupt(input_ids, chosen_flat, action, max_predictions, mask_id, is_special, rng) -> MaskedBatch:
    """Write the chosen (sorted, flat) positions into (N, P) slots and apply each one's action."""
    n_rows, width = input_ids.shape
    rows, cols = np.divmod(chosen_flat, width)
    num = np.bincount(rows, minlength=n_rows)
    first = np.cumsum(num) - num
    slot = np.arange(rows.size) - first[rows]
    original = input_ids[rows, cols]

    non_special = np.flatnonzero(~is_special).astype(input_ids.dtype)
    random_ids = non_special[rng.integers(0, non_special.size, size=rows.size)]
    new = np.where(action == 1, input_ids.dtype.type(mask_id),
                   np.where(action == 2, random_ids, original))

    out = input_ids.copy()
    out[rows, cols] = new
    positions = np.zeros((n_rows, max_predictions), dtype=np.uint16)
    positions[rows, slot] = cols
    masked_ids = np.zeros((n_rows, max_predictions), dtype=input_ids.dtype)
    masked_ids[rows, slot] = original
    return MaskedBatch(input_ids=out, masked_positions=positions, masked_ids=masked_ids,
                       num_masked=num.astype(np.uint16))
