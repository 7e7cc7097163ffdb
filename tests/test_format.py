"""The shard format is a public interface: golden files of FORMAT_VERSION 2 (a `segment` shard
with NSP, and a `pack` shard with its document boundaries) must read back to the same arrays, and
writing the same arrays must give the same bytes (msgpack stream) and the same schema and buffers
(Arrow). A change that breaks this must bump FORMAT_VERSION and the goldens; a file of another
version is refused with advice (re-shard an older one, upgrade bertprep for a newer one)."""

from __future__ import annotations

import hashlib
import json
import re

import msgpack
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

KINDS = ("segment", "pack")
# sha256 of the decompressed msgpack stream of golden_columns(kind)
MSGPACK_STREAM_SHA256 = {
    "segment": "226103771094dd0dbd7b4a2a63811134b4deb25a87df59a717d21bdbcd120933",
    "pack": "af427ceb0d52cc5c2335920ee263f8ad67bf67ba4ce5f07665d494a59f2e7f0b",
}


def golden_path(kind: str, ext: str):
    return DATA / f"golden_v2{'' if kind == 'segment' else '_pack'}.{ext}"


def golden_meta(kind: str = "segment") -> dict:
    return {"format": schema.FORMAT_NAME, "format_version": 2, "max_len": 8, "max_predictions": 2, "seed": 7,
            "strategy": kind, "mask_prob": 0.15, "whole_word": False, "nsp": kind == "segment", "vocab_size": 100,
            "id_dtype": "uint16", "special_ids": {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4},
            "tokenizer_sha256": "0" * 64, "label": "golden", "split": "train"}


def golden_columns(kind: str = "segment") -> dict[str, np.ndarray]:
    if kind == "pack":  # rows: [CLS] a b [SEP] [CLS] c [SEP] [PAD]; [CLS] d e f g h i [SEP]
        return {
            "input_ids": np.array([[2, 10, 4, 3, 2, 20, 3, 0], [2, 11, 12, 13, 4, 15, 16, 3]], np.uint16),
            "token_type_ids": np.zeros((2, 8), np.uint8),
            "length": np.array([7, 8], np.uint16),
            "masked_positions": np.array([[2, 0], [4, 0]], np.uint16),
            "masked_ids": np.array([[30, 0], [14, 0]], np.uint16),
            "num_masked": np.array([1, 1], np.uint16),
            "doc_starts": np.array([[0, 4], [0, 0]], np.uint16),
            "num_docs": np.array([2, 1], np.uint16),
        }
    return {
        "input_ids": np.array([[2, 10, 4, 3, 20, 21, 3, 0], [2, 11, 12, 13, 4, 3, 0, 0]], np.uint16),
        "token_type_ids": np.array([[0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0, 0]], np.uint8),
        "length": np.array([7, 6], np.uint16),
        "masked_positions": np.array([[2, 5], [4, 0]], np.uint16),
        "masked_ids": np.array([[30, 21], [14, 0]], np.uint16),
        "num_masked": np.array([2, 1], np.uint16),
        "nsp_label": np.array([1, 0], np.int8),
    }


def write(cls, path, kind="segment"):
    w = cls(path, golden_meta(kind))
    w.write(golden_columns(kind))
    w.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ext", ["arrow", "msgpack.zst"])
def test_golden_files_read_back_to_the_golden_arrays(kind, ext):
    s = open_shard(golden_path(kind, ext))
    assert s.meta == golden_meta(kind) and s.num_examples == 2
    got = s.slice(0, 2)
    assert sorted(got) == sorted(golden_columns(kind))
    for name, expected in golden_columns(kind).items():
        assert got[name].dtype == expected.dtype and np.array_equal(got[name], expected), name
    assert np.array_equal(s.take(np.array([1, 0]))["length"], golden_columns(kind)["length"][::-1])


@pytest.mark.parametrize("kind", KINDS)
def test_msgpack_writer_produces_the_golden_stream(tmp_path, kind):
    write(MsgpackShardWriter, tmp_path / "x.msgpack.zst", kind)
    stream = zstandard.ZstdDecompressor().decompressobj().decompress((tmp_path / "x.msgpack.zst").read_bytes())
    golden = zstandard.ZstdDecompressor().decompressobj().decompress(golden_path(kind, "msgpack.zst").read_bytes())
    assert stream == golden
    assert hashlib.sha256(stream).hexdigest() == MSGPACK_STREAM_SHA256[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_arrow_writer_produces_the_golden_schema_and_buffers(tmp_path, kind):
    write(ArrowShardWriter, tmp_path / "x.arrow", kind)
    ours = pa.ipc.open_file(pa.memory_map(str(tmp_path / "x.arrow"))).read_all()
    golden = pa.ipc.open_file(pa.memory_map(str(golden_path(kind, "arrow")))).read_all()
    assert ours.schema.equals(golden.schema, check_metadata=True)
    assert str(ours.schema.field("input_ids").type) == "fixed_size_list<item: uint16>[8]"
    if kind == "pack":  # max_len 8 holds at most 8 // 3 = 2 pieces of [CLS] token [SEP]
        assert str(ours.schema.field("doc_starts").type) == "fixed_size_list<item: uint16>[2]"
    assert json.loads(ours.schema.metadata[schema.METADATA_KEY]) == golden_meta(kind)
    assert ours.equals(golden)


@pytest.mark.parametrize("version, advice", [
    (1, "version 1, this bertprep reads version 2; re-run `bertprep shard`"),
    (3, "version 3, this bertprep reads version 2; written by a newer bertprep: upgrade bertprep"),
])
def test_another_version_is_refused_with_advice(tmp_path, version, advice):
    meta = dict(golden_meta(), format_version=version)
    table = pa.table({"length": pa.array([1], pa.uint16())}).replace_schema_metadata(
        {schema.METADATA_KEY: json.dumps(meta).encode()})
    with pa.ipc.new_file(str(tmp_path / "old.arrow"), table.schema) as w:
        w.write_table(table)
    with pytest.raises(ShardFormatError, match=re.escape(advice)):
        open_shard(tmp_path / "old.arrow")
    header = {"format": schema.FORMAT_NAME, "format_version": version, "meta": meta, "num_examples": 0}
    (tmp_path / "old.msgpack.zst").write_bytes(zstandard.ZstdCompressor().compress(msgpack.packb(header)))
    with pytest.raises(ShardFormatError, match=re.escape(advice)):
        open_shard(tmp_path / "old.msgpack.zst")


def test_pack_metadata_with_nsp_is_refused(tmp_path):
    with pytest.raises(ShardFormatError, match="nsp is true with strategy 'pack'"):
        ArrowShardWriter(tmp_path / "x.arrow", dict(golden_meta("pack"), nsp=True))


def test_writer_refuses_columns_that_break_the_schema(tmp_path):
    w = ArrowShardWriter(tmp_path / "x.arrow", golden_meta())
    cols = golden_columns()
    cols["input_ids"] = cols["input_ids"].astype(np.uint32)
    with pytest.raises(ShardFormatError, match="input_ids"):
        w.write(cols)
    w.discard()
    assert not list(tmp_path.iterdir())
