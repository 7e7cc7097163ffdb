"""Arrow IPC shards: writer and memory-mapped reader side by side.

A shard is an uncompressed Arrow IPC *file* (random access) of record batches with the columns of
`schema.COLUMNS`; fixed-size lists hold the per-token arrays so the reader maps them straight to
(n, width) numpy views of the file, with no copy and no per-example objects. The schema metadata
under key `bertprep` holds the shard's settings as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from bertprep.shards import schema
from bertprep.shards.atomic import publish, sha256_file, temp_name
from bertprep.shards.errors import ShardFormatError


def arrow_schema(meta: dict) -> pa.Schema:
    fields = []
    for name in schema.column_names(meta):
        width, dtype = schema.column_spec(name, meta)
        typ = pa.from_numpy_dtype(dtype)
        fields.append(pa.field(name, typ if width is None else pa.list_(typ, width), nullable=False))
    return pa.schema(fields, metadata={schema.METADATA_KEY: json.dumps(meta, sort_keys=True).encode()})


class ArrowShardWriter:
    """Append batches of examples; the file takes its final name only on a clean `close()`."""

    def __init__(self, path: Path | str, meta: dict):
        self.path = Path(path)
        self.meta = schema.check_meta(meta, str(path))
        self.num_examples = 0
        self._tmp = temp_name(self.path)
        self._schema = arrow_schema(meta)
        self._sink = pa.OSFile(str(self._tmp), "wb")
        self._writer = pa.ipc.new_file(self._sink, self._schema)

    def write(self, columns: dict[str, np.ndarray]) -> None:
        schema.check_columns(columns, self.meta, str(self.path))
        arrays = []
        for field in self._schema:
            arr = np.ascontiguousarray(columns[field.name])
            if arr.ndim == 2:
                arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1]))
            else:
                arrays.append(pa.array(arr))
        self._writer.write_batch(pa.record_batch(arrays, schema=self._schema))
        self.num_examples += len(columns["length"])

    def close(self) -> str:
        """Finish the file, give it its final name, return its sha256."""
        try:
            self._writer.close()
            self._sink.close()
            publish(self._tmp, self.path)
        except BaseException:  # a full disk shows here first: leave no temporary file behind
            self.discard()
            raise
        return sha256_file(self.path)

    def discard(self) -> None:
        for closer in (self._writer.close, self._sink.close):
            try:
                closer()
            except Exception:  # already failed or closed: the temp file is removed either way
                pass
        self._tmp.unlink(missing_ok=True)


class ArrowShard:
    """A shard file opened memory-mapped: `take(rows)` / `slice(a, b)` give dicts of numpy arrays."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._open()

    def _open(self) -> None:
        where = str(self.path)
        try:
            self._mmap = pa.memory_map(where, "r")
            reader = pa.ipc.open_file(self._mmap)
            raw = (reader.schema.metadata or {}).get(schema.METADATA_KEY)
            if raw is None:
                raise ShardFormatError(f"{where}: Arrow file without bertprep metadata")
            self.meta = schema.check_meta(json.loads(raw), where)
            if not reader.schema.equals(arrow_schema(self.meta), check_metadata=False):
                raise ShardFormatError(f"{where}: Arrow schema differs from the one its metadata implies")
            self.columns = schema.column_names(self.meta)
            views: dict[str, list[np.ndarray]] = {c: [] for c in self.columns}
            starts = [0]
            for i in range(reader.num_record_batches):
                rb = reader.get_batch(i)
                for name in self.columns:
                    width, dtype = schema.column_spec(name, self.meta)
                    col = rb.column(name)
                    flat = (col.flatten() if width else col).to_numpy(zero_copy_only=True)
                    if flat.dtype != dtype:
                        raise ShardFormatError(f"{where}: column {name} is {flat.dtype}, metadata says {dtype}")
                    view = flat.reshape(-1, width) if width else flat
                    if len(view) != rb.num_rows:  # a damaged length field, which Arrow does not cross-check
                        raise ShardFormatError(f"{where}: column {name} of batch {i} has {len(view)} rows, "
                                               f"the batch says {rb.num_rows}")
                    views[name].append(view)
                starts.append(starts[-1] + rb.num_rows)
        except (pa.ArrowException, OSError, KeyError, ValueError, TypeError) as e:  # any pyarrow refusal
            if isinstance(e, FileNotFoundError):
                raise ShardFormatError(f"{where}: no such shard file") from None
            raise ShardFormatError(f"{where}: unreadable Arrow shard ({e.__class__.__name__}: {e})") from None
        self._views = views
        self._starts = np.asarray(starts, dtype=np.int64)
        self.num_examples = int(self._starts[-1])

    # Pickling reopens the map (for DataLoader worker processes) instead of copying the data.
    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.path = state["path"]
        self._open()

    def slice(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return self.take(np.arange(start, stop, dtype=np.int64))

    def parts(self, name: str) -> tuple[list[np.ndarray], np.ndarray]:
        """Column `name` as it lies in the file: one memory-mapped array per record batch, and the
        first row of each (then the row count) (shards/gather.py)."""
        return self._views[name], self._starts

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Rows (any order) as freshly allocated arrays; one gather per record batch touched."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_examples):
            raise IndexError(f"{self.path}: rows outside 0..{self.num_examples - 1}")
        batch_of_row = np.searchsorted(self._starts, rows, side="right") - 1
        out = {}
        for name in self.columns:  # shapes from the schema: a file may hold no batch at all
            width, dtype = schema.column_spec(name, self.meta)
            out[name] = np.empty((len(rows),) + ((width,) if width else ()), dtype=dtype)
        for b in np.unique(batch_of_row):
            sel = np.flatnonzero(batch_of_row == b)
            local = rows[sel] - self._starts[b]
            for name in self.columns:
                out[name][sel] = self._views[name][b][local]
        return out

    def close(self) -> None:
        self._views = {}
        self._mmap.close()
