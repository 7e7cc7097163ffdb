"""The host-to-device pipeline: a thread fills a ring of (pinned) host buffers from the shard
stream; the loop takes batches from it already on its device, widened to int64.

    stream.batches() --thread--> host slot k (allocated once; pinned on CUDA)
        --side stream, non_blocking--> device tensors, event recorded on the side stream
        --compute stream waits on the event--> .long() on the compute stream --> the step

On CUDA the copy of batch i+1 is issued when batch i is handed out, so it overlaps step i; a host
slot goes back to the thread only with the event of its copy, and the thread waits on that event
before overwriting it. On CPU the same code runs with the copy being the widening itself (a new
tensor), after which the slot is free at once, so `make test` exercises the whole path.

Each ring slot is one flat int32 buffer holding every column of a batch back to back (ids are
uint16/uint32 in the shards; torch's uint16 support is partial, and int32 is half of int64), so a
batch crosses to the device as one copy and is widened to int64 by one kernel, and the columns are
contiguous views of that.
"""

from __future__ import annotations

import queue as stdqueue
import threading
import time
from typing import Callable

import numpy as np
import torch

from bertprep.trainer.remask import Remasker
from bertprep.trainer.stream import ShardStream

RING_DTYPE = torch.int32
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
        self._chunk = max(1, min(256, chunk_rows // stream.cfg.batch_size))  # batches read per call
        self._layout = self._plan_layout(stream, remask)            # column -> (offset, shape) in a slot
        self._sizes = [int(np.prod(shape)) for _, shape in self._layout.values()]
        size = sum(self._sizes)
        self._slots = [torch.empty(size, dtype=RING_DTYPE, pin_memory=self.cuda) for _ in range(max(2, ring))]
        self._views = [{k: slot.numpy()[o:o + n].reshape(shape) for (k, (o, shape)), n in  # the thread fills these
                        zip(self._layout.items(), self._sizes)} for slot in self._slots]
        self._free: stdqueue.SimpleQueue = stdqueue.SimpleQueue()
        for i in range(len(self._slots)):
            self._free.put((i, None))
        self._ready: stdqueue.SimpleQueue = stdqueue.SimpleQueue()
        self._stop = threading.Event()
        self._copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._pending = None             # (index, file, rows, device tensors, event) issued ahead (CUDA)
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
        """The columns of a flat slot-shaped tensor, as views."""
        return {k: part.view(shape) for (k, (_, shape)), part in zip(self._layout.items(), flat.split(self._sizes))}

    # --- producer thread ------------------------------------------------------------------------
    def _fill(self, index: int) -> None:
        try:
            while not self._stop.is_set():
                for f, rows, cols in self.stream.batches(index, self._chunk, self._remask):
                    slot = self._take_free_slot()
                    if slot is None:
                        return
                    for k, dst in self._views[slot].items():
                        dst[...] = cols[k]  # casts to int32 in place
                    self._ready.put((index, f, rows, slot))
                    index += 1
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._ready.put(e)

    def _take_free_slot(self) -> int | None:
        while not self._stop.is_set():
            try:
                slot, copied = self._free.get(timeout=_POLL_S)
            except stdqueue.Empty:
                continue
            if copied is not None:
                copied.synchronize()  # the slot's previous copy to the device must have finished
            return slot
        return None

    # --- consumer -------------------------------------------------------------------------------
    def _next_ready(self, block: bool):
        t0 = time.perf_counter()
        try:
            item = self._ready.get(block=block, timeout=None)
        except stdqueue.Empty:
            return None
        self.wait_s += time.perf_counter() - t0
        if isinstance(item, BaseException):
            raise item
        return item

    def _issue(self, block: bool):
        """Start the device copy of the next filled slot (CUDA): returns what next() hands out later."""
        item = self._next_ready(block)
        if item is None:
            return None
        index, f, rows, slot = item
        with torch.cuda.stream(self._copy_stream):
            dev = self._slots[slot].to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._copy_stream)
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
            wide = dev.long()
        else:
            index, f, rows, slot = self._next_ready(block=True)
            wide = self._slots[slot].long()  # the copy: a new tensor, so the slot is free at once
            self._free.put((slot, None))
        batch = self._split(wide)
        if self._on_batch is not None:
            self._on_batch(index, f, rows)
        self.consumed = index + 1
        return batch

    def state_dict(self) -> dict:
        return self.stream.state_dict(self.consumed)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
