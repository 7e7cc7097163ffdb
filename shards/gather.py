"""Rows of several shard files at once, in any order: what the trainer's loader reads a chunk of
batches with (trainer/stream.py).

A column of a shard is held in parts (an Arrow file's record batches, memory-mapped; a msgpack
shard's one decoded array). `RowGather(shards)` lists every part of every file once; `take(files,
rows)` then finds each row's part with one `searchsorted` over all of them and copies the rows with
one C call per column (`_gather.c`, GIL released: the training thread runs meanwhile). Without the
C extension, one numpy gather per part touched does the same.
"""

from __future__ import annotations

import numpy as np

try:
    from bertprep.shards import _gather
except ImportError:  # not built: `pip install -e .` compiles it
    _gather = None


class RowGather:
    """`take(files, rows)` -> the columns of rows (file, row) of `shards`, in the order given.
    Shard-likes without `parts` (test doubles) are read through their own `take`, once per file."""

    def __init__(self, shards: list):
        self.shards = shards
        if not all(hasattr(s, "parts") for s in shards):
            self.parts = None
            return
        self.columns = list(shards[0].columns)
        firsts, self.parts = [], {c: [] for c in self.columns}
        self.file_first = np.zeros(len(shards) + 1, dtype=np.int64)  # first global row of each file
        for f, shard in enumerate(shards):
            for c in self.columns:
                arrays, starts = shard.parts(c)
                self.parts[c] += arrays
            firsts.append(self.file_first[f] + starts[:-1])
            self.file_first[f + 1] = self.file_first[f] + shard.num_examples
        self.part_first = np.concatenate(firsts)  # first global row of each part, ascending
        self.shapes = {c: (p[0].shape[1:], p[0].dtype) for c, p in self.parts.items()}  # a row's, per column

    def take(self, files: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
        if self.parts is None:
            return self._take_each(files, rows)
        where = self.file_first[files] + rows
        if rows.size and ((rows < 0).any() or (where >= self.file_first[files + 1]).any()):
            raise IndexError("RowGather.take: a row outside its shard file")
        which = np.searchsorted(self.part_first, where, side="right") - 1
        local = where - self.part_first[which]
        out = {}
        for c in self.columns:
            shape, dtype = self.shapes[c]
            out[c] = dst = np.empty((len(where),) + shape, dtype=dtype)
            if _gather is not None:
                _gather.gather(dst, self.parts[c], which, local, dst.itemsize * int(np.prod(shape)))
                continue
            for p in np.unique(which):
                sel = np.flatnonzero(which == p)
                dst[sel] = self.parts[c][p][local[sel]]
        return out

    def _take_each(self, files: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for f in np.unique(files):
            sel = np.flatnonzero(files == f)
            for k, v in self.shards[int(f)].take(rows[sel]).items():
                if k not in out:
                    out[k] = np.empty((files.size,) + v.shape[1:], dtype=v.dtype)
                out[k][sel] = v
        return out
