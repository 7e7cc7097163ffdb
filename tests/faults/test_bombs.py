"""Decompression bombs: msgpack+zstd shards built here that claim absurd sizes or inflate to
gigabytes (a header claiming 10^12 examples or just under the 8 GiB limit, a 2 GiB binary, a 1 GiB
string, a map of 2^31 entries, nesting 100,000 deep, 2 GiB of data after the last record, a zstd
frame asking for a 2 GiB window) are refused by `verify` and `inspect` with one line, without
hanging (a 60 s guard kills a command that would inflate the bomb; how fast the refusal is belongs
to bench/, not to a test on a busy machine) and in bounded memory, also on a machine whose memory
cannot hold what the header claims."""

from __future__ import annotations

import struct

import msgpack
import pytest
import zstandard

from bertprep.shards.msgpack_zstd import MAX_DECODED_BYTES, _row_bytes
from bertprep.shards.reader import open_shard
from faultkit import DATA, bertprep

NAME = "train_golden_8_7_00000.msgpack.zst"
GIB = 1 << 30
RSS_LIMIT = 400 << 20  # a Python with numpy, pyarrow and zstd loaded takes ~60-100 MiB
ZEROS = bytes(1 << 20)


def golden():
    s = open_shard(DATA / "golden_v2.msgpack.zst")
    return s.meta, s.slice(0, s.num_examples)


def header(n: int) -> bytes:
    meta, _ = golden()
    return msgpack.packb({"format": "bertprep-shard", "format_version": 2, "meta": meta, "num_examples": n})


def records(k: int) -> bytes:
    _, rows = golden()
    return b"".join(msgpack.packb({c: v[i % len(v)].tobytes() for c, v in rows.items()}) for i in range(k))


def write_zst(path, parts, zeros_after: int = 0, **params) -> None:
    """Compress `parts` then `zeros_after` zero bytes into one zstd frame, streaming (never in memory)."""
    cctx = zstandard.ZstdCompressor(level=1, **params)
    with open(path, "wb") as f, cctx.stream_writer(f) as z:
        for part in parts:
            z.write(part)
        for _ in range(zeros_after // len(ZEROS)):
            z.write(ZEROS)


def claim_just_under_the_limit() -> bytes:
    meta, _ = golden()
    return header(MAX_DECODED_BYTES // _row_bytes(meta) - 1) + records(3)


BOMBS = {
    # what the file holds -> (parts, zero bytes that follow, zstd parameters)
    "header claims 10^12 examples": ([header(10**12)], 0, {}),
    "header claims just under 8 GiB, holds 3 examples": ([claim_just_under_the_limit()], 0, {}),
    "a record with a 2 GiB binary": ([header(3), records(1), b"\x81\xa9input_ids\xc6" + struct.pack(">I", 2 * GIB - 1)],
                                     2 * GIB, {}),
    "a header string of 1 GiB": ([b"\xdb" + struct.pack(">I", GIB)], GIB, {}),
    "a map of 2^31 entries": ([header(3), b"\xdf" + struct.pack(">I", 1 << 31)], GIB, {}),
    "nesting 100,000 deep": ([header(1), b"\x91" * 100_000], 0, {}),
    "2 GiB of zeros after the last record": ([header(2), records(2)], 2 * GIB, {}),
    "a 2 GiB zstd window": ([header(2), records(2)], 64 << 20,
                            {"compression_params": zstandard.ZstdCompressionParameters(window_log=31)}),
}


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bombs")
    made = {}
    for i, (case, (parts, zeros, params)) in enumerate(sorted(BOMBS.items())):
        d = root / str(i)
        d.mkdir()
        write_zst(d / NAME, parts, zeros, **params)
        made[case] = d / NAME
    return made


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_a_msgpack_bomb_is_refused_without_inflating_it_in_bounded_memory(bombs, case):
    path = bombs[case]
    assert path.stat().st_size < 8 << 20  # small on disk, absurd inside
    for command in ("verify", "inspect"):
        r = bertprep(command, path, timeout=60)
        line = r.one_error_line()
        assert path.name in line, line
        assert r.peak_rss < RSS_LIMIT, f"{command}: peak RSS {r.peak_rss >> 20} MiB"


def test_a_claim_within_the_limit_but_beyond_this_machine_is_one_line(bombs):
    """Under `ulimit -v 3 GiB`, a header claiming almost 8 GiB of examples cannot be allocated."""
    path = bombs["header claims just under 8 GiB, holds 3 examples"]
    for command in ("verify", "inspect"):
        r = bertprep(command, path, timeout=60, address_space=3 * GIB)
        assert path.name in r.one_error_line()
