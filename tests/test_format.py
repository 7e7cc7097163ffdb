"""The shard format is a public interface: golden files of FORMAT_VERSION 1 must read back to the
same arrays, and writing the same arrays must give the same bytes (msgpack stream) and the same
schema and buffers (Arrow). A change that breaks this must bump FORMAT_VERSION and the goldens."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pytest
import zstandard

from bertprep.shards import schema
from bertprep.shards.arrow_ipc import ArrowShardWriter
from bertprep.shards.errors import ShardFormatError
from bertprep.shards.msgpack_zstd import MsgpackShardWriter
from bertprep.shards.reader import open_shard
from conftest import DATA

GOLDEN_ARROW = DATA / "golden_v1.arrow"
GOLDEN_MSGPACK = DATA / "golden_v1.msgpack.zst"
# sha256 of the decompressed msgpack stream of golden_columns()
MSGPACK_STREAM_SHA256 = "e37862ea430b8a13a55e09b5c570deffac7b8f1ad9aed14fc53c883f3fbad6a1"


def golden_meta() -> dict:
    return {"format": schema.FORMAT_NAME, "format_version": 1, "max_len": 8, "max_predictions": 2, "seed": 7,
            "strategy": "segment", "mask_prob": 0.15, "whole_word": False, "nsp": True, "vocab_size": 100,
            "id_dtype": "uint16", "special_ids": {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4},
            "tokenizer_sha256": "0" * 64, "label": "golden", "split": "train"}


def golden_columns() -> dict[str, np.ndarray]:
    return {
        "input_ids": np.array([[2, 10, 4, 3, 20, 21, 3, 0], [2, 11, 12, 13, 4, 3, 0, 0]], np.uint16),
        "token_type_ids": np.array([[0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0, 0]], np.uint8),
        "length": np.array([7, 6], np.uint16),
        "masked_positions": np.array([[2, 5], [4, 0]], np.uint16),
        "masked_ids": np.array([[30, 21], [14, 0]], np.uint16),
        "num_masked": np.array([2, 1], np.uint16),
        "nsp_label": np.array([1, 0], np.int8),
    }


def write(cls, path):
    w = cls(path, golden_meta())
    w.write(golden_columns())
    w.close()


@pytest.mark.parametrize("path", [GOLDEN_ARROW, GOLDEN_MSGPACK], ids=["arrow", "msgpack"])
def test_golden_files_read_back_to_the_golden_arrays(path):
    s = open_shard(path)
    assert s.meta == golden_meta() and s.num_examples == 2
    got = s.slice(0, 2)
    for name, expected in golden_columns().items():
        assert got[name].dtype == expected.dtype and np.array_equal(got[name], expected), name
    assert np.array_equal(s.take(np.array([1, 0]))["length"], [6, 7])


def test_msgpack_writer_produces_the_golden_stream(tmp_path):
    write(MsgpackShardWriter, tmp_path / "x.msgpack.zst")
    stream = zstandard.ZstdDecompressor().decompressobj().decompress((tmp_path / "x.msgpack.zst").read_bytes())
    golden = zstandard.ZstdDecompressor().decompressobj().decompress(GOLDEN_MSGPACK.read_bytes())
    assert stream == golden
    assert hashlib.sha256(stream).hexdigest() == MSGPACK_STREAM_SHA256


def test_arrow_writer_produces_the_golden_schema_and_buffers(tmp_path):
    write(ArrowShardWriter, tmp_path / "x.arrow")
    ours = pa.ipc.open_file(pa.memory_map(str(tmp_path / "x.arrow"))).read_all()
    golden = pa.ipc.open_file(pa.memory_map(str(GOLDEN_ARROW))).read_all()
    assert ours.schema.equals(golden.schema, check_metadata=True)
    assert str(ours.schema.field("input_ids").type) == "fixed_size_list<item: uint16>[8]"
    assert json.loads(ours.schema.metadata[schema.METADATA_KEY]) == golden_meta()
    assert ours.equals(golden)


def test_an_unknown_version_is_refused_with_advice(tmp_path):
    meta = dict(golden_meta(), format_version=2)
    table = pa.table({"length": pa.array([1], pa.uint16())}).replace_schema_metadata(
        {schema.METADATA_KEY: json.dumps(meta).encode()})
    with pa.ipc.new_file(str(tmp_path / "v2.arrow"), table.schema) as w:
        w.write_table(table)
    with pytest.raises(ShardFormatError, match="version 2.*re-run `bertprep shard`"):
        open_shard(tmp_path / "v2.arrow")


def test_writer_refuses_columns_that_break_the_schema(tmp_path):
    w = ArrowShardWriter(tmp_path / "x.arrow", golden_meta())
    cols = golden_columns()
    cols["input_ids"] = cols["input_ids"].astype(np.uint32)
    with pytest.raises(ShardFormatError, match="input_ids"):
        w.write(cols)
    w.discard()
    assert not list(tmp_path.iterdir())
