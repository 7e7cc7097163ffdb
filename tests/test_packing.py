"""Packing documents into examples: exact row layout, nothing lost or duplicated, no mixed documents.

Token stores are built synthetically with every token id unique (id = position + OFFSET), so each
packed token says where in the store it came from. Hypothesis varies the store, the length and the
strategy; `segment`'s fill is compared with a written-out reference of google's loop (with the cut
carried over); NSP label balance is checked on a larger corpus.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertprep.preprocess import packing
from bertprep.preprocess.packing import PackConfig, SpecialIds, _cuts, pack_documents
from bertprep.shards.errors import ConfigError, InputError

SPECIAL = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)
OFFSET = 10  # token id = store position + OFFSET, above every special id


def make_store(seed: int, n_docs: int, mean_len: float = 25, max_sents: int = 12):
    """Random documents of random sentences, some empty, some longer than any budget."""
    rng = np.random.default_rng(seed)
    n_sents = rng.integers(0, max_sents + 1, size=n_docs)
    s_len = rng.poisson(mean_len, size=int(n_sents.sum()))
    s_len[rng.random(s_len.size) < 0.05] = 0
    long = rng.random(s_len.size) < 0.05
    s_len[long] = rng.integers(100, 300, size=int(long.sum()))
    sent_offsets = np.concatenate([[0], np.cumsum(s_len)]).astype(np.int64)
    doc_offsets = np.concatenate([[0], np.cumsum(n_sents)]).astype(np.int64)
    ids = (np.arange(sent_offsets[-1]) + OFFSET).astype(np.uint32)
    return ids, sent_offsets, doc_offsets


def doc_of_pos(pos, sent_offsets, doc_offsets):
    """Document of each store position (through its sentence)."""
    sent = np.searchsorted(sent_offsets, pos, side="right") - 1
    return np.searchsorted(doc_offsets, sent, side="right") - 1


def split_rows(batch, cfg):
    """Check every row's layout; return each row's A and B as store positions."""
    n, width = batch.input_ids.shape
    assert width == cfg.max_len and batch.token_type_ids.shape == (n, width)
    assert batch.token_type_ids.dtype == np.uint8 and batch.length.dtype == np.uint16
    assert (batch.nsp_label is not None) == cfg.nsp
    pairs = []
    for row, tt, length in zip(batch.input_ids, batch.token_type_ids, batch.length.astype(int)):
        assert 3 <= length <= width and row[0] == SPECIAL.cls and row[length - 1] == SPECIAL.sep
        assert np.all(row[length:] == SPECIAL.pad) and np.all(tt[length:] == 0)
        seps = np.flatnonzero(row[:length] == SPECIAL.sep)
        assert len(seps) == (2 if cfg.nsp else 1)
        assert np.all(row[1:length] != SPECIAL.cls) and np.all(row[1:length] != SPECIAL.pad)
        a = row[1:seps[0]].astype(np.int64) - OFFSET
        b = row[seps[0] + 1:length - 1].astype(np.int64) - OFFSET
        assert a.size >= 1 and (b.size >= 1 if cfg.nsp else b.size == 0)
        assert np.all(tt[:seps[0] + 1] == 0) and np.all(tt[seps[0] + 1:length] == 1)
        pairs.append((a, b))
    return pairs


def contiguous(pos):
    return pos.size == 0 or np.all(np.diff(pos) == 1)


def chunk_stream(sent_offsets, doc_offsets, doc_ids):
    return np.concatenate([np.arange(sent_offsets[doc_offsets[d]], sent_offsets[doc_offsets[d + 1]])
                           for d in doc_ids] + [np.zeros(0, np.int64)])


def pack(store, doc_ids, cfg, seed=0, pool=None):
    ids, sent_offsets, doc_offsets = store
    pool = np.arange(doc_offsets.size - 1) if pool is None else pool
    return pack_documents(ids, sent_offsets, doc_offsets, doc_ids, cfg=cfg, special=SPECIAL,
                          rng=np.random.default_rng(seed), random_doc_pool=pool)


store_params = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 25), st.integers(8, 80),
                         st.sampled_from([0.0, 0.1, 1.0]))


def ref_segment(docs, targets, budget):
    """google's create_instances_from_document fill without NSP, with the cut carried over: add a
    document's sentences until the target is reached or passed or the document ends, keep the
    first `budget` tokens, and put the rest back as the next example's first sentence."""
    out, targets = [], iter(targets)
    for sentences in docs:
        units, chunk = [u for u in sentences if len(u)], []
        while units:
            if not chunk:  # a new example: its target
                target = next(targets)
            chunk += units.pop(0)
            if len(chunk) >= target or not units:
                out.append(chunk[:budget])
                if len(chunk) > budget:
                    units.insert(0, chunk[budget:])
                chunk = []
    return out


def doc_sentences(sent_offsets, doc_offsets, d):
    return [list(range(sent_offsets[s], sent_offsets[s + 1])) for s in range(doc_offsets[d], doc_offsets[d + 1])]


class FixedTargets:
    """Stands in for packing._Draws: the given target lengths, one per example."""

    def __init__(self, targets):
        self.targets = iter(targets)

    def __call__(self):
        return next(self.targets), False, 0.5, 0.5, 0.5


@settings(max_examples=80, deadline=None)
@given(store_params)
def test_segment_keeps_every_token_once_in_order_within_one_document(params):
    seed, n_docs, max_len, short = params
    store = make_store(seed, n_docs)
    _, sent_offsets, doc_offsets = store
    doc_ids = np.random.default_rng(seed).permutation(n_docs)[: max(0, n_docs - 3)]
    cfg = PackConfig(max_len=max_len, short_seq_prob=short)
    pairs = split_rows(pack(store, doc_ids, cfg, seed), cfg)
    got = np.concatenate([a for a, _ in pairs] + [np.zeros(0, np.int64)])
    assert np.array_equal(got, chunk_stream(sent_offsets, doc_offsets, doc_ids))
    sent_ends = set(sent_offsets.tolist())
    for a, _ in pairs:
        assert contiguous(a) and np.unique(doc_of_pos(a, sent_offsets, doc_offsets)).size == 1
        # An example ends where the budget runs out or at a sentence end (its target, its document's end).
        assert a.size == cfg.budget or a[-1] + 1 in sent_ends


@settings(max_examples=60, deadline=None)
@given(store_params, st.integers(0, 2**32 - 1))
def test_segment_is_googles_fill_with_the_cut_carried(params, target_seed):
    seed, n_docs, max_len, _ = params
    store = make_store(seed, n_docs)
    _, sent_offsets, doc_offsets = store
    cfg = PackConfig(max_len=max_len)
    targets = np.random.default_rng(target_seed).integers(2, cfg.budget + 1, size=10_000).tolist()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(packing, "_Draws", lambda rng, cfg, block: FixedTargets(targets))
        pairs = split_rows(pack(store, np.arange(n_docs), cfg, seed), cfg)
    docs = [doc_sentences(sent_offsets, doc_offsets, d) for d in range(n_docs)]
    assert [a.tolist() for a, _ in pairs] == ref_segment(docs, targets, cfg.budget)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(8, 80))
def test_segment_without_short_targets_cuts_each_document_into_full_examples(seed, max_len):
    """Every target is the budget: each document becomes budget-long examples, the last one ending
    at the document's end."""
    store = make_store(seed, 12)
    _, sent_offsets, doc_offsets = store
    cfg = PackConfig(max_len=max_len, short_seq_prob=0.0)
    pairs = split_rows(pack(store, np.arange(12), cfg, seed), cfg)
    expected = []
    for d in range(12):
        tokens = np.arange(sent_offsets[doc_offsets[d]], sent_offsets[doc_offsets[d + 1]])
        expected += [tokens[i:i + cfg.budget].tolist() for i in range(0, tokens.size, cfg.budget)]
    assert [a.tolist() for a, _ in pairs] == expected


@settings(max_examples=60, deadline=None)
@given(store_params, st.booleans())
def test_split_rows_are_full_windows_of_the_stream(params, nsp):
    seed, n_docs, max_len, _ = params
    store = make_store(seed, n_docs)
    _, sent_offsets, doc_offsets = store
    doc_ids = np.arange(n_docs)[::2]
    cfg = PackConfig(max_len=max_len, strategy="split", nsp=nsp)
    batch = pack(store, doc_ids, cfg, seed)
    stream = chunk_stream(sent_offsets, doc_offsets, doc_ids)
    window = cfg.budget
    assert batch.length.size == stream.size // window and np.all(batch.length == max_len)
    for i, (a, b) in enumerate(split_rows(batch, cfg)):
        win = stream[i * window:(i + 1) * window]
        if not nsp or batch.nsp_label[i] == 1:
            assert np.array_equal(np.concatenate([a, b]), win)
            continue
        assert np.array_equal(a, win[:a.size]) and b.size == window - a.size and contiguous(b)
        b_docs = np.unique(doc_of_pos(b, sent_offsets, doc_offsets))
        near = doc_of_pos(win[a.size - 1:a.size + 1], sent_offsets, doc_offsets)
        assert b_docs.size == 1 and b_docs[0] not in near


@settings(max_examples=60, deadline=None)
@given(store_params)
def test_segment_nsp_pairs(params):
    seed, n_docs, max_len, short = params
    store = make_store(seed, n_docs)
    _, sent_offsets, doc_offsets = store
    cfg = PackConfig(max_len=max_len, short_seq_prob=short, nsp=True)
    batch = pack(store, np.arange(n_docs), cfg, seed)
    pairs = split_rows(batch, cfg)
    starts = set(sent_offsets.tolist())
    for (a, b), label in zip(pairs, batch.nsp_label):
        assert contiguous(a) and contiguous(b) and a.size + b.size <= cfg.budget
        a_doc, b_doc = (np.unique(doc_of_pos(x, sent_offsets, doc_offsets)) for x in (a, b))
        assert a_doc.size == 1 and b_doc.size == 1
        if label == 1:  # B is what follows A, split at a sentence end when one lies inside
            assert a_doc[0] == b_doc[0] and b[0] == a[-1] + 1
            assert b[0] in starts or not starts & set(range(a[0] + 1, b[-1] + 1))
        else:
            assert label == 0 and a_doc[0] != b_doc[0]
    # Nothing of a document's own is lost: its tokens are, in order, the As and real Bs (a
    # one-token remainder that cannot make a pair is dropped only without a second document).
    sizes = np.diff(sent_offsets[doc_offsets])
    if (sizes > 0).sum() >= 2:
        own = [x for (a, b), label in zip(pairs, batch.nsp_label) for x in ((a, b) if label else (a,))]
        got = np.concatenate(own + [np.zeros(0, np.int64)])
        assert np.array_equal(got, chunk_stream(sent_offsets, doc_offsets, np.arange(n_docs)))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(8, 80))
def test_segment_nsp_random_b_is_googles(seed, max_len):
    """A random B is whole sentences of another document from a sentence start until the target
    is reached (or its document ends), cut by truncate_seq_pair: with targets at the budget, a
    pair falls short of the budget only where B's document ended."""
    store = make_store(seed, 20)
    ids, sent_offsets, doc_offsets = store
    cfg = PackConfig(max_len=max_len, short_seq_prob=0.0, nsp=True)
    batch = pack(store, np.arange(20), cfg, seed)
    doc_end = sent_offsets[doc_offsets[1:]]
    for (a, b), label in zip(split_rows(batch, cfg), batch.nsp_label):
        if label == 0 and a.size + b.size < cfg.budget:
            assert b[-1] + 1 == doc_end[doc_of_pos(b[-1:], sent_offsets, doc_offsets)[0]]


@given(st.integers(1, 200), st.integers(1, 200), st.integers(5, 150))
def test_truncation_matches_token_by_token_reference(la, lb, budget):
    """The closed-form cut equals google's truncate_seq_pair loop: drop one token from the longer
    side (B on a tie) until the pair fits."""
    ref_a, ref_b = la, lb
    while ref_a + ref_b > budget:
        if ref_a > ref_b:
            ref_a -= 1
        else:
            ref_b -= 1
    cut_a, cut_b = _cuts(la, lb, budget)
    assert (la - cut_a, lb - cut_b) == (ref_a, ref_b)


def test_nsp_labels_are_roughly_balanced():
    store = make_store(1, 3000, max_sents=30)
    for strategy in ("segment", "split"):
        cfg = PackConfig(max_len=128, strategy=strategy, nsp=True)
        batch = pack(store, np.arange(3000), cfg)
        assert batch.nsp_label.size > 2000
        assert 0.42 < batch.nsp_label.mean() < 0.58, strategy


def test_single_document_pool_makes_only_real_next_pairs():
    store = make_store(2, 1, max_sents=40)
    cfg = PackConfig(max_len=64, nsp=True)
    batch = pack(store, np.array([0]), cfg, pool=np.array([0]))
    assert batch.nsp_label.size > 0 and np.all(batch.nsp_label == 1)
    for a, b in split_rows(batch, cfg):
        assert b[0] > a[-1]


def test_short_targets_make_shorter_examples():
    store = make_store(3, 200)
    full = pack(store, np.arange(200), PackConfig(max_len=128, short_seq_prob=0.0))
    short = pack(store, np.arange(200), PackConfig(max_len=128, short_seq_prob=1.0))
    assert short.length.mean() < 0.75 * full.length.mean()


@pytest.mark.parametrize("strategy", ["segment", "split"])
@pytest.mark.parametrize("nsp", [False, True])
def test_same_seed_same_batch_other_seed_differs(strategy, nsp):
    store = make_store(4, 100)
    cfg = PackConfig(max_len=64, strategy=strategy, nsp=nsp, short_seq_prob=0.3)
    a, b, c = (pack(store, np.arange(100), cfg, seed) for seed in (1, 1, 2))
    for name in ("input_ids", "token_type_ids", "length", "nsp_label"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or np.array_equal(x, y)
    if (strategy, nsp) != ("split", False):  # split without NSP uses no randomness
        assert a.input_ids.shape != c.input_ids.shape or not np.array_equal(a.input_ids, c.input_ids)


def test_memmap_store_and_uint16_ids(tmp_path):
    ids, sent_offsets, doc_offsets = make_store(5, 30)
    small = (ids % 60000).astype(np.uint16)
    path = tmp_path / "ids.bin"
    small.tofile(path)
    mapped = np.memmap(path, dtype=np.uint16, mode="r")
    for cfg in (PackConfig(max_len=32), PackConfig(max_len=32, strategy="split", nsp=True)):
        a, b = (pack((x, sent_offsets, doc_offsets), np.arange(30), cfg) for x in (small, mapped))
        assert a.input_ids.dtype == np.uint16 and np.array_equal(a.input_ids, b.input_ids)


def test_empty_chunk_gives_an_empty_batch():
    store = make_store(6, 5)
    for cfg in (PackConfig(max_len=16), PackConfig(max_len=16, nsp=True, strategy="split")):
        batch = pack(store, np.zeros(0, np.int64), cfg)
        assert batch.input_ids.shape == (0, 16) and batch.length.shape == (0,)


@pytest.mark.parametrize("kwargs, flag", [
    (dict(max_len=7), "--max-len"),
    (dict(max_len=5000), "--max-len"),
    (dict(max_len=64, strategy="greedy"), "--strategy"),
    (dict(max_len=64, short_seq_prob=1.5), "--short-seq-prob"),
])
def test_config_errors_name_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        PackConfig(**kwargs)


def test_document_index_out_of_range_is_an_input_error():
    store = make_store(7, 5)
    with pytest.raises(InputError, match="doc_ids"):
        pack(store, np.array([5]), PackConfig(max_len=16))
