"""The `pack` strategy: rows of exactly max_len slots filled with `[CLS] piece [SEP]` blocks of
consecutive documents, every token of the chunk once and in order, documents cut only at a row's
end, and `doc_starts` / `num_docs` that say exactly where each piece begins.

Stores come from tests/test_packing.py's `make_store` (every token id unique: id = position +
OFFSET), so each packed token says where it came from.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertprep.preprocess.packing import PackConfig
from bertprep.shards.errors import ConfigError
from test_packing import OFFSET, SPECIAL, chunk_stream, doc_of_pos, make_store, pack


def pieces_of(batch, cfg):
    """Check each row's layout against its doc_starts; return the pieces as (row, store positions)."""
    n, W = batch.input_ids.shape
    assert W == cfg.max_len and batch.doc_starts.shape == (n, W // 3) and batch.nsp_label is None
    assert batch.doc_starts.dtype == np.uint16 and batch.num_docs.dtype == np.uint16
    assert not batch.token_type_ids.any()
    out = []
    for r, (row, length, k, starts) in enumerate(zip(batch.input_ids, batch.length.astype(int),
                                                     batch.num_docs.astype(int), batch.doc_starts.astype(int))):
        assert k >= 1 and np.all(starts[k:] == 0) and starts[0] == 0
        assert np.all(row[length:] == SPECIAL.pad)
        ends = np.append(starts[1:k], length)
        for s, e in zip(starts[:k], ends):  # each piece: [CLS] tokens [SEP], back to back
            assert e - s >= 3 and row[s] == SPECIAL.cls and row[e - 1] == SPECIAL.sep
            body = row[s + 1:e - 1].astype(np.int64)
            assert np.all(body >= OFFSET)
            out.append((r, body - OFFSET))
    return out


store_params = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 25), st.integers(8, 80))


@settings(max_examples=60, deadline=None)
@given(store_params)
def test_pack_keeps_every_token_once_in_rows_of_exactly_max_len(params):
    seed, n_docs, max_len = params
    store = make_store(seed, n_docs)
    _, sent_offsets, doc_offsets = store
    docs = np.random.default_rng(seed).permutation(n_docs)
    cfg = PackConfig(max_len=max_len, strategy="pack")
    batch = pack(store, docs, cfg)
    pieces = pieces_of(batch, cfg)
    # every token of the chunk, once, in chunk order
    got = np.concatenate([p for _, p in pieces] + [np.zeros(0, np.int64)])
    assert np.array_equal(got, chunk_stream(sent_offsets, doc_offsets, docs))
    n = len(batch.length)
    for i, (r, p) in enumerate(pieces):
        d = doc_of_pos(p, sent_offsets, doc_offsets)
        assert np.all(d == d[0]) and np.all(np.diff(p) == 1)  # one document, contiguous
        nxt = pieces[i + 1] if i + 1 < len(pieces) else None
        if nxt is not None and doc_of_pos(nxt[1][:1], sent_offsets, doc_offsets)[0] == d[0]:
            # a document is cut only where its row is full, and carried on at the next row's start
            assert batch.length[r] == max_len and nxt[0] == r + 1
    # rows are full; the only padding: the chunk's last row, and 1 or 2 slots that cannot hold a piece
    short = max_len - batch.length[:-1].astype(int) if n else np.zeros(0)
    assert np.all(short <= 2)
    assert n == 0 or batch.length[-1] >= 3


def test_pack_rows_hold_several_documents_and_starts_mark_them():
    # three documents of 3, 4 and 20 tokens at max_len 16: [CLS] 3 [SEP] [CLS] 4 [SEP] [CLS] 3 [SEP],
    # then the third's remaining 17 tokens: 14 in the second row, 3 in the third
    sent_offsets = np.array([0, 3, 7, 27])
    doc_offsets = np.array([0, 1, 2, 3])
    ids = (np.arange(27) + OFFSET).astype(np.uint16)
    b = pack((ids, sent_offsets, doc_offsets), np.arange(3), PackConfig(max_len=16, strategy="pack"))
    assert b.length.tolist() == [16, 16, 5]
    assert b.num_docs.tolist() == [3, 1, 1]
    assert b.doc_starts[0, :3].tolist() == [0, 5, 11] and not b.doc_starts[0, 3:].any()
    assert b.input_ids[0].tolist() == [2, 10, 11, 12, 3, 2, 13, 14, 15, 16, 3, 2, 17, 18, 19, 3]
    assert b.input_ids[1].tolist() == [2] + list(range(20, 34)) + [3]
    assert b.input_ids[2].tolist() == [2, 34, 35, 36, 3] + [0] * 11


def test_a_row_with_one_or_two_slots_left_is_closed_with_padding():
    sent_offsets = np.array([0, 12, 15])  # 12 tokens + [CLS]/[SEP] leave 2 of 16 slots: too few for a piece
    doc_offsets = np.array([0, 1, 2])
    ids = (np.arange(15) + OFFSET).astype(np.uint16)
    b = pack((ids, sent_offsets, doc_offsets), np.arange(2), PackConfig(max_len=16, strategy="pack"))
    assert b.length.tolist() == [14, 5] and b.num_docs.tolist() == [1, 1]
    assert b.input_ids[0, 14:].tolist() == [0, 0]


def test_pack_uses_no_randomness_and_ignores_short_seq_prob():
    store = make_store(3, 40)
    a = pack(store, np.arange(40), PackConfig(max_len=64, strategy="pack"), seed=1)
    b = pack(store, np.arange(40), PackConfig(max_len=64, strategy="pack", short_seq_prob=0.9), seed=2)
    for name in ("input_ids", "length", "doc_starts", "num_docs"):
        assert np.array_equal(getattr(a, name), getattr(b, name))


def test_pack_pads_almost_nothing_on_a_large_chunk():
    store = make_store(8, 2000)
    b = pack(store, np.arange(2000), PackConfig(max_len=128, strategy="pack"))
    padding = 1 - b.length.astype(np.int64).sum() / b.input_ids.size
    assert padding < 0.005, padding


def test_empty_chunk_and_memmap_ids(tmp_path):
    store = make_store(6, 5)
    cfg = PackConfig(max_len=16, strategy="pack")
    b = pack(store, np.zeros(0, np.int64), cfg)
    assert b.input_ids.shape == (0, 16) and b.doc_starts.shape == (0, 5) and b.num_docs.shape == (0,)
    ids, sent_offsets, doc_offsets = store
    (ids % 60000).astype(np.uint16).tofile(tmp_path / "ids.bin")
    mapped = np.memmap(tmp_path / "ids.bin", dtype=np.uint16, mode="r")
    x = pack((mapped, sent_offsets, doc_offsets), np.arange(5), cfg)
    assert x.input_ids.dtype == np.uint16 and len(x.length) > 0


def test_pack_refuses_nsp_naming_both_flags():
    with pytest.raises(ConfigError, match="--nsp.*--strategy pack"):
        PackConfig(max_len=64, strategy="pack", nsp=True)
