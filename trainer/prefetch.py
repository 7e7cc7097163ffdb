"""The host-to-device pipeline: a thread fills a ring of (pinned) host buffers from the shard
stream, a chunk of batches at a time; the loop takes batches from it already on its device,
widened to int64.

    stream.read() --thread--> host slot k: a chunk of batches (allocated once; pinned on CUDA)
        --side stream, non_blocking, one batch--> device tensors, event recorded on the side stream
        --compute stream waits on the event--> .long() on the compute stream --> the step

The thread reads a chunk of up to 8,192 rows at once (per-call costs are paid per chunk), re-masks
it (C, GIL released), and casts it into as many slots as it fills, one numpy call per column per
slot. A slot holds several batches (up to SLOT_BYTES), so the thread and the loop meet once per
slot, not once per batch: a hand-off between Python threads costs tens of microseconds under the
GIL, which at 32 rows a batch was most of the loader's time.

On CUDA the copy of batch i+1 is issued when batch i is handed out, so it overlaps step i; a host
slot goes back to the thread only with the event of the copy of its last batch (copies run in
order on the side stream), and the thread waits on that event before overwriting it. On CPU the
copy is the widening itself, into one of a few int64 buffers that no batch handed out still views,
so a slot goes back to the thread once its last batch is handed out; `make test` exercises the
rest of the path.

Within a slot each batch is one flat int32 run holding every column back to back (ids are
uint16/uint32 in the shards; torch's uint16 support is partial, and int32 is half of int64), so a
batch crosses to the device as one copy and is widened to int64 by one kernel, and the columns are
contiguous views of that.
"""

from __future__ import annotations

import queue as stdqueue
import sys
import threading
import time
from typing import Callable

import numpy as np
import torch

from bertprep.trainer.remask import Remasker
from bertprep.trainer.stream import ShardStream

RING_DTYPE = torch.int32
SLOT_BYTES = 2 << 20  # a slot's most: 1,024 rows of 128 tokens with every column (~2 MB)
_POLL_S = 0.1


class Prefetcher:
    """`next()` -> this rank's next batch as int64 tensors on `device`; `state_dict()` -> the
    position of the batch `next()` would return next (batches still in the ring are not counted)."""

    def __init__(self, stream: ShardStream, device: torch.device, *, start: int = 0, ring: int = 4,
                 chunk_rows: int = 8192, on_batch: Callable[[int, int, np.ndarray], None] | None = None,
                 remask: Remasker | None = None):
        self.stream, self.device = stream, torch.device(device)
        self._remask = remask            # --mask-prob: fresh masks, drawn per chunk of batches
        self.cuda = self.device.type == "cuda"
        self.consumed = start            # index of the batch next() returns next
        self.wait_s = 0.0                # time next() spent blocked on the loader (reset by the caller)
        self._on_batch = on_batch        # (index, file, rows) of each batch handed out: for --trace-data
        self._layout = self._plan_layout(stream, remask)            # column -> (offset, shape) in a batch
        self._sizes = [int(np.prod(shape)) for _, shape in self._layout.values()]
        self._per = sum(self._sizes)                                # int32 values per batch
        self._strided = {k: (o, shape, torch.empty(shape).stride()) for k, (o, shape) in self._layout.items()}
        self._chunk = max(1, min(256, SLOT_BYTES // (4 * self._per)))                # batches per slot
        self._read = self._chunk * max(1, chunk_rows // (stream.cfg.batch_size * self._chunk))  # per read
        self._slots = [torch.empty(self._chunk * self._per, dtype=RING_DTYPE, pin_memory=self.cuda)
                       for _ in range(max(2, ring))]
        self._buffers: list[np.ndarray] = []     # CPU: int64 batch buffers for reuse (_widening_buffer)
        self._host = [slot.numpy().reshape(self._chunk, self._per) for slot in self._slots]  # (batches, values)
        self._free: stdqueue.SimpleQueue = stdqueue.SimpleQueue()
        for i in range(len(self._slots)):
            self._free.put((i, None))
        self._ready: stdqueue.SimpleQueue = stdqueue.SimpleQueue()
        self._stop = threading.Event()
        self._copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._chunk_now = None           # (first index, files, rows, slot) being handed out
        self._next_b = 0                 # its next batch
        self._pending = None             # (index, file, rows, device tensor, event) issued ahead (CUDA)
        self._thread = threading.Thread(target=self._fill, args=(start,), name="bertprep-prefetch", daemon=True)
        self._thread.start()

    @staticmethod
    def _plan_layout(stream: ShardStream, remask: Remasker | None) -> dict[str, tuple[int, tuple[int, ...]]]:
        sample = stream.shards[0].take(np.zeros(1, dtype=np.int64))
        if remask is not None:  # its own number of prediction slots
            sample = remask(sample, np.zeros(1), 0, np.zeros(1))
        layout, offset = {}, 0
        for k, v in sample.items():
            shape = (stream.cfg.batch_size,) + v.shape[1:]
            layout[k] = (offset, shape)
            offset += int(np.prod(shape))
        return layout

    def _split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """CUDA: the columns of a flat batch-shaped tensor, as views (one as_strided each)."""
        return {k: flat.as_strided(shape, stride, o) for k, (o, shape, stride) in self._strided.items()}

    # --- producer thread ------------------------------------------------------------------------
    def _fill(self, index: int) -> None:
        try:
            S, B = self._chunk, self.stream.cfg.batch_size
            while not self._stop.is_set():
                files, rows, cols = self.stream.read(index, self._read, self._remask)
                for s0 in range(0, self._read, S):
                    slot = self._take_free_slot()
                    if slot is None:
                        return
                    # (batches, values per batch): column k of batch b at [b, offset_k:offset_k + size_k]
                    dst = self._host[slot]
                    for (k, (o, _)), n in zip(self._layout.items(), self._sizes):
                        dst[:, o:o + n] = cols[k][s0 * B:(s0 + S) * B].reshape(S, n)  # casts to int32 in place
                    self._ready.put((index + s0, files[s0:s0 + S], rows[s0:s0 + S], slot))
                index += self._read
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._ready.put(e)

    def _take_free_slot(self) -> int | None:
        while not self._stop.is_set():
            try:
                slot, copied = self._free.get(timeout=_POLL_S)
            except stdqueue.Empty:
                continue
            if copied is not None:
                copied.synchronize()  # the slot's last copy to the device must have finished
            return slot
        return None

    # --- consumer -------------------------------------------------------------------------------
    def _next_host(self, block: bool):
        """(index, file, rows, slot, batch b of it, whether b is the slot's last) of the next batch,
        or None when not `block` and the thread has not filled the next slot yet."""
        if self._chunk_now is None:
            t0 = time.perf_counter()
            try:
                item = self._ready.get(block=block, timeout=None)
            except stdqueue.Empty:
                return None
            self.wait_s += time.perf_counter() - t0
            if isinstance(item, BaseException):
                raise item
            self._chunk_now, self._next_b = item, 0
        first, files, rows, slot = self._chunk_now
        b = self._next_b
        self._next_b += 1
        last = self._next_b == self._chunk
        if last:
            self._chunk_now = None
        return first + b, files[b], rows[b], slot, b, last

    def _issue(self, block: bool):
        """Start the device copy of the next batch (CUDA): returns what next() hands out later."""
        item = self._next_host(block)
        if item is None:
            return None
        index, f, rows, slot, b, last = item
        with torch.cuda.stream(self._copy_stream):
            dev = self._slots[slot][b * self._per:(b + 1) * self._per].to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._copy_stream)
        if last:  # the slot's last batch: it returns with this copy's event
            self._free.put((slot, done))
        return index, f, rows, dev, done

    def next(self) -> dict[str, torch.Tensor]:
        if self.cuda:
            pending = self._pending if self._pending is not None else self._issue(block=True)
            self._pending = self._issue(block=False)  # batch i+1 copies while step i computes
            index, f, rows, dev, done = pending
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(done)
            dev.record_stream(compute)  # allocated on the side stream, used on this one
            batch = self._split(dev.long())
        else:
            index, f, rows, slot, b, last = self._next_host(block=True)
            # The widening is the copy, so the slot is free once its last batch is out; into a
            # buffer no batch handed out still views (a fresh one would cost its page faults, most
            # of the copy's time). numpy's views and from_numpy cost half of torch's as_strided.
            wide = self._widening_buffer()
            np.copyto(wide, self._host[slot][b], casting="unsafe")
            batch = {k: torch.from_numpy(wide[o:o + n].reshape(shape))
                     for (k, (o, shape)), n in zip(self._layout.items(), self._sizes)}
            if last:
                self._free.put((slot, None))
        if self._on_batch is not None:
            self._on_batch(index, int(f) if np.ndim(f) == 0 else f, rows)
        self.consumed = index + 1
        return batch

    def _widening_buffer(self) -> np.ndarray:
        """An int64 batch buffer that no tensor handed out still views: one of a few kept for reuse
        (a tensor from_numpy holds its array, and CPython counts the holders), else a new one."""
        for buf in self._buffers:
            if sys.getrefcount(buf) <= 3:  # the list, `buf` and getrefcount's argument: nothing else
                return buf
        buf = np.empty(self._per, dtype=np.int64)
        if len(self._buffers) < 4:
            self._buffers.append(buf)
        return buf

    def state_dict(self) -> dict:
        return self.stream.state_dict(self.consumed)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
