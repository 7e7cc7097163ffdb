"""msgpack + zstd shards, for interchange: the same fields as the Arrow shards, record by record.

Layout: one zstd frame holding a msgpack stream: first a header map
`{"format", "format_version", "meta", "num_examples"}`, then one map per example whose values are
the little-endian bytes of that example's arrays (`input_ids` of max_len ids, ...). The reader
decodes into the same (n, width) numpy arrays as the Arrow reader, within bounds fixed by the
header, so a file that claims or inflates to absurd sizes is refused instead of exhausting memory.
"""

from __future__ import annotations

import io
from pathlib import Path

import msgpack
import numpy as np
import zstandard

from bertprep.shards import schema
from bertprep.shards.atomic import publish, sha256_file, temp_name
from bertprep.shards.errors import ShardFormatError

# The most decoded bytes one msgpack shard may hold (its arrays, in memory); a larger claim is refused.
MAX_DECODED_BYTES = 8 << 30


def _row_bytes(meta: dict) -> int:
    total = 0
    for name in schema.column_names(meta):
        width, dtype = schema.column_spec(name, meta)
        total += (width or 1) * dtype.itemsize
    return total


class MsgpackShardWriter:
    """Append batches of examples; the header's count is known only at the end, so records are
    buffered compressed in memory and the file is written at `close()` (parts are bounded by
    --examples-per-shard)."""

    def __init__(self, path: Path | str, meta: dict, level: int = 3):
        self.path = Path(path)
        self.meta = schema.check_meta(meta, str(path))
        self.num_examples = 0
        self._level = level
        self._records = io.BytesIO()
        self._packer = msgpack.Packer(use_bin_type=True)

    def write(self, columns: dict[str, np.ndarray]) -> None:
        schema.check_columns(columns, self.meta, str(self.path))
        names = schema.column_names(self.meta)
        le = {n: columns[n].astype(columns[n].dtype.newbyteorder("<"), copy=False) for n in names}
        for i in range(len(columns["length"])):
            self._records.write(self._packer.pack({n: le[n][i].tobytes() for n in names}))
        self.num_examples += len(columns["length"])

    def close(self) -> str:
        header = {
            "format": schema.FORMAT_NAME,
            "format_version": schema.FORMAT_VERSION,
            "meta": self.meta,
            "num_examples": self.num_examples,
        }
        tmp = temp_name(self.path)
        try:
            cctx = zstandard.ZstdCompressor(level=self._level)
            with open(tmp, "wb") as f, cctx.stream_writer(f, closefd=False) as z:
                z.write(self._packer.pack(header))
                z.write(self._records.getbuffer())
            publish(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return sha256_file(self.path)

    def discard(self) -> None:
        self._records = io.BytesIO()


class MsgpackShard:
    """A msgpack shard decoded into arrays, read through the same `take`/`slice` as ArrowShard."""

    def __init__(self, path: Path | str, max_decoded_bytes: int = MAX_DECODED_BYTES):
        self.path = Path(path)
        self._max = max_decoded_bytes
        self._load()

    def _load(self) -> None:
        where = str(self.path)
        n = None
        try:
            with open(self.path, "rb") as f:
                reader = zstandard.ZstdDecompressor().stream_reader(f)
                # Bounded unpacking: no string, array or map may exceed what a valid shard needs.
                unpacker = msgpack.Unpacker(reader, raw=False, max_buffer_size=64 << 20,
                                            max_str_len=1 << 20, max_array_len=1 << 16, max_map_len=64,
                                            max_bin_len=1 << 20)
                header = unpacker.unpack()
                if not isinstance(header, dict) or header.get("format") != schema.FORMAT_NAME:
                    raise ShardFormatError(f"{where}: not a bertprep msgpack shard")
                meta = dict(header.get("meta") or {})
                meta.setdefault("format", header.get("format"))
                meta.setdefault("format_version", header.get("format_version"))
                self.meta = schema.check_meta(meta, where)
                n = header.get("num_examples")
                if not isinstance(n, int) or n < 0 or n * _row_bytes(self.meta) > self._max:
                    raise ShardFormatError(f"{where}: header claims {n!r} examples, beyond the "
                                           f"{self._max >> 20} MiB a shard may decode to")
                self.columns = schema.column_names(self.meta)
                specs = {c: schema.column_spec(c, self.meta) for c in self.columns}
                arrays = {c: np.zeros((n,) + ((w,) if w else ()), dtype=d) for c, (w, d) in specs.items()}
                for i in range(n):
                    rec = unpacker.unpack()
                    for c, (w, d) in specs.items():
                        values = np.frombuffer(rec[c], dtype=d.newbyteorder("<"), count=w or 1)
                        arrays[c][i] = values if w else values[0]
                try:
                    unpacker.unpack()
                except msgpack.OutOfData:
                    pass
                else:
                    raise ShardFormatError(f"{where}: more records than the header's {n}")
        except msgpack.OutOfData:
            raise ShardFormatError(f"{where}: truncated msgpack shard (fewer records than its header says)") from None
        except FileNotFoundError:
            raise ShardFormatError(f"{where}: no such shard file") from None
        except MemoryError:  # the header's claim is within MAX_DECODED_BYTES but not within this machine
            raise ShardFormatError(f"{where}: decoding needs more memory than this machine has "
                                   f"(the header claims {n!r} examples)") from None
        except (zstandard.ZstdError, msgpack.UnpackException, ValueError, TypeError, KeyError, OSError) as e:
            raise ShardFormatError(f"{where}: unreadable msgpack shard ({e.__class__.__name__}: {e})") from None
        self._arrays = arrays
        self.num_examples = n

    def __getstate__(self):
        return {"path": self.path, "max": self._max}

    def __setstate__(self, state):
        self.path, self._max = state["path"], state["max"]
        self._load()

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        rows = np.asarray(rows, dtype=np.int64)
        return {c: a[rows] for c, a in self._arrays.items()}

    def slice(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {c: a[start:stop].copy() for c, a in self._arrays.items()}

    def parts(self, name: str) -> tuple[list[np.ndarray], np.ndarray]:
        """Column `name` as one decoded array, and its rows' bounds [0, n] (shards/gather.py)."""
        return [self._arrays[name]], np.array([0, self.num_examples], dtype=np.int64)

    def close(self) -> None:
        self._arrays = {}
