"""shards/gather.py: rows of many shard files in any order, as the loader reads a chunk. The C
gather and the numpy fallback give each shard's own `take`, row for row, across Arrow record
batches and msgpack shards, and a row outside its file is refused."""

from __future__ import annotations

import numpy as np
import pytest

from bertprep.shards import gather as gather_module
from bertprep.shards.msgpack_zstd import MsgpackShard, MsgpackShardWriter
from bertprep.shards.reader import open_shards
from bertprep.trainer.synthetic import synthetic_columns, synthetic_meta, write_synthetic_shards


@pytest.fixture(params=["c", "numpy"])
def native(request, monkeypatch):
    if request.param == "c":
        if gather_module._gather is None:
            pytest.skip("the C gather is not built (pip install -e .)")
    else:
        monkeypatch.setattr(gather_module, "_gather", None)
    return request.param


def _expect(shards, files, rows):
    return {c: np.stack([shards[f].take(np.array([r]))[c][0] for f, r in zip(files, rows)])
            for c in shards[0].columns}


def test_rows_of_several_arrow_files_and_record_batches_in_any_order(tmp_path, native):
    paths = write_synthetic_shards(tmp_path, rows=[700, 1, 1300], max_len=32, vocab_size=70000, batch=300)
    shards = open_shards(paths)
    rng = np.random.default_rng(0)
    files = rng.integers(0, 3, 2000)
    rows = rng.integers(0, np.array([s.num_examples for s in shards])[files])
    got = gather_module.RowGather(shards).take(files, rows)
    for c, want in _expect(shards, files, rows).items():
        assert got[c].dtype == want.dtype and (got[c] == want).all(), c


def test_msgpack_shards_are_one_part(tmp_path, native):
    meta = synthetic_meta(max_len=16, vocab_size=500, nsp=True)
    path = tmp_path / "train_000000.msgpack.zst"
    w = MsgpackShardWriter(path, meta)
    w.write(synthetic_columns(np.random.default_rng(1), 50, meta))
    w.close()
    shard = MsgpackShard(path)
    rows = np.array([49, 0, 7, 7, 30])
    got = gather_module.RowGather([shard]).take(np.zeros(5, dtype=np.int64), rows)
    for c, want in shard.take(rows).items():
        assert (got[c] == want).all(), c


def test_a_row_outside_its_file_is_refused(tmp_path, native):
    shards = open_shards(write_synthetic_shards(tmp_path, rows=[10, 10], max_len=16))
    for f, r in ((0, 10), (1, 10), (0, -1)):  # (0, 10) would otherwise be row 0 of file 1
        with pytest.raises(IndexError):
            gather_module.RowGather(shards).take(np.array([f]), np.array([r]))
