"""MLM masking: how many tokens each row predicts, which ones may be chosen, how they are corrupted.

Properties are checked with hypothesis against a small pure-Python reference (the count rule and
the word segmentation, one row at a time); the 80/10/10 split is checked statistically on a large
batch; the same seed must give the same output.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertprep.preprocess.masking import MaskConfig, mask_batch
from bertprep.shards.schema import default_max_predictions
from bertprep.shards.errors import ConfigError

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
N_SPECIAL = 6  # id 5 is another control token, e.g. [unused0]


def vocab(size: int, cont_frac: float, seed: int = 0):
    is_special = np.zeros(size, dtype=bool)
    is_special[[PAD, CLS, SEP, MASK, 5]] = True
    is_cont = np.random.default_rng(seed).random(size) < cont_frac
    is_cont[is_special] = False
    return is_special, is_cont


def make_rows(rng, n_rows, width, vocab_size, dtype=np.uint16, stray_specials=True):
    """Rows `[CLS] A [SEP] (B [SEP]) [PAD]...` of random lengths, some with specials inside."""
    ids = rng.integers(N_SPECIAL, vocab_size, size=(n_rows, width)).astype(dtype)
    lengths = rng.integers(0, width + 1, size=n_rows)
    lengths[rng.random(n_rows) < 0.3] = width
    for i, n in enumerate(lengths):
        if n:
            ids[i, 0] = CLS
            ids[i, n - 1] = SEP
        if n > 4 and rng.random() < 0.5:
            ids[i, rng.integers(1, n - 1)] = SEP
        if stray_specials and n > 4 and rng.random() < 0.2:
            ids[i, rng.integers(1, n - 1)] = rng.choice([UNK, 5, MASK])
        ids[i, n:] = PAD
    return ids, lengths


def ref_count(length: int, n_cand: int, p: float, max_pred: int) -> int:
    """google's num_to_predict, min(max_pred, max(1, int(round(len(tokens) * p)))) with the row's
    real tokens, specials included, as len(tokens); never more than the candidates. Python's
    round() is round-half-even, like np.rint."""
    return min(max_pred, max(1, int(round(length * p))), n_cand)


def ref_words(row, length, is_special, is_cont) -> list[list[int]]:
    """Positions of each whole word in a row, one token at a time."""
    words: list[list[int]] = []
    prev_cand = False
    for i in range(length):
        tok = int(row[i])
        cand = not is_special[tok]
        if cand and is_cont[tok] and prev_cand:
            words[-1].append(i)
        elif cand:
            words.append([i])
        prev_cand = cand
    return words


def check_batch(ids, lengths, out, cfg, is_special, is_cont):
    """Every property that must hold for any batch, row by row against the reference."""
    n_rows, width = ids.shape
    assert out.input_ids.dtype == ids.dtype and out.input_ids.shape == ids.shape
    assert out.masked_positions.dtype == np.uint16 and out.masked_ids.dtype == ids.dtype
    assert out.masked_positions.shape == out.masked_ids.shape == (n_rows, cfg.max_predictions)
    assert out.num_masked.dtype == np.uint16 and out.num_masked.shape == (n_rows,)
    for i in range(n_rows):
        row, n = ids[i], int(lengths[i])
        words = ref_words(row, n, is_special, is_cont)
        n_cand = sum(len(w) for w in words)
        k = ref_count(n, n_cand, cfg.mask_prob, cfg.max_predictions)
        m = int(out.num_masked[i])
        pos = out.masked_positions[i, :m].astype(int)
        assert np.all(out.masked_positions[i, m:] == 0) and np.all(out.masked_ids[i, m:] == 0)
        assert np.all(np.diff(pos) > 0), "positions must be ascending and unique"
        assert np.all(pos < n) and not is_special[row[pos]].any(), "special or padding chosen"
        assert np.array_equal(out.masked_ids[i, :m], row[pos])
        untouched = np.ones(width, dtype=bool)
        untouched[pos] = False
        assert np.array_equal(out.input_ids[i, untouched], row[untouched])
        new = out.input_ids[i, pos]
        assert np.all((new == MASK) | ~is_special[new]), "a random replacement was special"
        if not cfg.whole_word:
            assert m == k
            continue
        chosen = set(pos.tolist())
        picked = [w for w in words if w[0] in chosen]
        assert all(set(w) <= chosen for w in picked), "a word was split"
        assert sum(len(w) for w in picked) == m and m <= k
        # Greedy skips a word only when it does not fit the budget left at its turn, which is
        # at least the budget left at the end.
        assert all(len(w) > k - m for w in words if w[0] not in chosen)
        for w in picked:  # one 80/10/10 decision per word
            masked = out.input_ids[i, w] == MASK
            assert masked.all() or not masked.any()


batch_params = st.tuples(
    st.integers(0, 2**32 - 1),  # content seed
    st.integers(0, 12),  # rows
    st.integers(1, 40),  # width
    st.floats(0.01, 0.99),  # mask_prob
    st.integers(1, 40),  # max_predictions (clipped to the width)
    st.booleans(),  # whole_word
    st.sampled_from([0.0, 0.3, 0.8]),  # share of continuation ids
    st.sampled_from([np.uint16, np.uint32]),
)


@settings(max_examples=150, deadline=None)
@given(batch_params)
def test_properties_against_reference(params):
    seed, n_rows, width, p, max_pred, whole_word, cont_frac, dtype = params
    rng = np.random.default_rng(seed)
    is_special, is_cont = vocab(40, cont_frac, seed)
    ids, lengths = make_rows(rng, n_rows, width, 40, dtype)
    cfg = MaskConfig(mask_prob=p, max_predictions=min(max_pred, width), whole_word=whole_word)
    out = mask_batch(ids, lengths, cfg=cfg, mask_id=MASK, is_special=is_special,
                     is_continuation=is_cont, rng=rng)
    check_batch(ids, lengths, out, cfg, is_special, is_cont)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.01, 0.99), st.integers(1, 30))
def test_whole_word_without_continuations_takes_exactly_k(seed, p, max_pred):
    rng = np.random.default_rng(seed)
    is_special, is_cont = vocab(50, 0.0)
    ids, lengths = make_rows(rng, 8, 48, 50)
    cfg = MaskConfig(mask_prob=p, max_predictions=max_pred, whole_word=True)
    out = mask_batch(ids, lengths, cfg=cfg, mask_id=MASK, is_special=is_special,
                     is_continuation=is_cont, rng=rng)
    n_cand = ((np.arange(48) < lengths[:, None]) & ~is_special[ids]).sum(axis=1)
    assert out.num_masked.tolist() == [ref_count(int(n), int(c), p, max_pred) for n, c in zip(lengths, n_cand)]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3))
def test_greedy_looks_past_the_window(seed, max_pred):
    """Long words and a tiny budget: greedy must search past the first 2P words for ones that fit."""
    rng = np.random.default_rng(seed)
    is_special, is_cont = vocab(60, 0.8, seed)
    ids, lengths = make_rows(rng, 16, 64, 60)
    cfg = MaskConfig(mask_prob=0.05, max_predictions=max_pred, whole_word=True)
    out = mask_batch(ids, lengths, cfg=cfg, mask_id=MASK, is_special=is_special,
                     is_continuation=is_cont, rng=rng)
    check_batch(ids, lengths, out, cfg, is_special, is_cont)


def test_wide_rows_use_the_wide_key_path():
    """Rows over 256 tokens sort 64-bit keys; the properties must hold there too."""
    rng = np.random.default_rng(7)
    is_special, is_cont = vocab(70000, 0.3)
    ids, lengths = make_rows(rng, 20, 600, 70000, np.uint32)
    for whole_word in (False, True):
        cfg = MaskConfig(max_predictions=90, whole_word=whole_word)
        out = mask_batch(ids, lengths, cfg=cfg, mask_id=MASK, is_special=is_special,
                         is_continuation=is_cont, rng=rng)
        check_batch(ids, lengths, out, cfg, is_special, is_cont)


def test_rint_rounds_half_to_even():
    """n * p == 2.5 gives 2 and 3.5 gives 4: np.rint, documented in the module."""
    is_special, is_cont = vocab(50, 0.0)
    ids = np.full((2, 12), 10, dtype=np.uint16)
    lengths = np.array([5, 7])  # 5 and 7 tokens, all candidates (no [CLS]/[SEP] here)
    cfg = MaskConfig(mask_prob=0.5, max_predictions=10)
    out = mask_batch(ids, lengths, cfg=cfg, mask_id=MASK, is_special=is_special,
                     is_continuation=is_cont, rng=np.random.default_rng(0))
    assert out.num_masked.tolist() == [2, 4]


def test_count_includes_cls_and_sep_as_google():
    """[CLS] + 8 tokens + [SEP]: google's count is round(10 * 0.15) = 2, not round(8 * 0.15) = 1."""
    is_special, is_cont = vocab(50, 0.0)
    ids = np.array([[CLS, *range(10, 18), SEP]], dtype=np.uint16)
    out = mask_batch(ids, np.array([10]), cfg=MaskConfig(), mask_id=MASK, is_special=is_special,
                     is_continuation=is_cont, rng=np.random.default_rng(0))
    assert out.num_masked.tolist() == [2] and out.masked_positions.shape == (1, 5)


def test_default_slots_are_google_and_nvidia_values():
    assert [MaskConfig().slots(n) for n in (64, 128, 256, 512)] == [10, 20, 40, 80]
    assert MaskConfig(mask_prob=0.3).slots(128) == 40 and MaskConfig(max_predictions=7).slots(128) == 7
    for max_len in range(8, 1025):
        for p in (0.05, 0.15, 0.2, 0.3, 0.5, 0.9):
            slots = default_max_predictions(max_len, p)
            assert round(max_len * p) <= slots <= max_len and (slots % 5 == 0 or slots == max_len)


def big_batch(whole_word: bool, seed: int = 1):
    is_special, is_cont = vocab(30000, 0.3 if whole_word else 0.0)
    rng = np.random.default_rng(seed)
    ids, lengths = make_rows(rng, 20000, 128, 30000, stray_specials=False)
    lengths[:] = 128
    ids[:, -1] = SEP
    cfg = MaskConfig(max_predictions=20, whole_word=whole_word)
    out = mask_batch(ids, lengths, cfg=cfg, mask_id=MASK, is_special=is_special,
                     is_continuation=is_cont, rng=rng)
    return ids, out, is_special


@pytest.mark.parametrize("whole_word", [False, True])
def test_80_10_10(whole_word):
    ids, out, is_special = big_batch(whole_word)
    slots = np.arange(out.masked_positions.shape[1]) < out.num_masked[:, None]
    new = np.take_along_axis(out.input_ids, out.masked_positions.astype(np.intp), axis=1)[slots]
    old = out.masked_ids[slots]
    assert new.size > 200_000
    masked, kept = new == MASK, new == old
    # A random replacement equals the original with chance 1/29994: negligible at +-1%.
    assert abs(masked.mean() - 0.8) < 0.01
    assert abs((~masked & ~kept).mean() - 0.1) < 0.01
    assert abs(kept.mean() - 0.1) < 0.01
    assert not is_special[new[~masked]].any()


def test_positions_are_uniform():
    """Every candidate position of identical rows is chosen about equally often."""
    is_special, is_cont = vocab(1000, 0.0)
    ids = np.full((20000, 64), 100, dtype=np.uint16)
    ids[:, 0], ids[:, 40] = CLS, SEP
    lengths = np.full(20000, 41)
    cfg = MaskConfig(max_predictions=20)
    out = mask_batch(ids, lengths, cfg=cfg, mask_id=MASK, is_special=is_special,
                     is_continuation=is_cont, rng=np.random.default_rng(3))
    hits = np.bincount(out.masked_positions[:, :6].ravel(), minlength=64)  # k = rint(39*.15) = 6
    assert hits[0] == 0 and hits[40:].sum() == 0
    share = hits[1:40] / 20000
    assert np.all(np.abs(share - 6 / 39) < 0.015)


def test_same_seed_same_output_other_seed_differs():
    is_special, is_cont = vocab(500, 0.3)
    ids, lengths = make_rows(np.random.default_rng(0), 64, 64, 500)
    for whole_word in (False, True):
        cfg = MaskConfig(max_predictions=10, whole_word=whole_word)
        a, b, c = (mask_batch(ids, lengths, cfg=cfg, mask_id=MASK, is_special=is_special,
                              is_continuation=is_cont, rng=np.random.default_rng(s))
                   for s in (5, 5, 6))
        for name in ("input_ids", "masked_positions", "masked_ids", "num_masked"):
            assert np.array_equal(getattr(a, name), getattr(b, name))
        assert not np.array_equal(a.masked_positions, c.masked_positions)


@pytest.mark.parametrize("kwargs, flag", [
    (dict(mask_prob=0.0, max_predictions=5), "--mask-prob"),
    (dict(mask_prob=1.0, max_predictions=5), "--mask-prob"),
    (dict(mask_prob=1.5, max_predictions=5), "--mask-prob"),
    (dict(max_predictions=0), "--max-predictions"),
    (dict(max_predictions=3, mask_token_prob=0.95, random_token_prob=0.1), "random_token_prob"),
])
def test_config_errors_name_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        MaskConfig(**kwargs)


def test_more_predictions_than_positions_is_a_config_error():
    is_special, is_cont = vocab(50, 0.0)
    with pytest.raises(ConfigError, match="--max-predictions"):
        mask_batch(np.zeros((2, 8), np.uint16), np.zeros(2, int), cfg=MaskConfig(max_predictions=9),
                   mask_id=MASK, is_special=is_special, is_continuation=is_cont,
                   rng=np.random.default_rng(0))
