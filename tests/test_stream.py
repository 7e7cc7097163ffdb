"""The streaming loader: round-robin over files, seeded per-epoch shuffles, disjoint and equally long
rank shares (uneven files included), resume by equivalence (N batches, snapshot, rebuild, the next
K identical), the prefetch ring handing out exactly the stream's batches, and flat private memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bertprep.shards.errors import ConfigError
from bertprep.shards.reader import open_shards
from bertprep.trainer.prefetch import Prefetcher
from bertprep.trainer.stream import FeistelPermutation, ShardStream, StreamConfig
from bertprep.trainer.synthetic import write_synthetic_shards




class FakeShard:
    """Rows only: `take` returns the row numbers, so plans are checked without files."""

    def __init__(self, n: int, name: str):
        self.num_examples, self.path = n, name

    def take(self, rows):
        return {"row": np.asarray(rows)}


def fakes(*sizes):
    return [FakeShard(n, f"train_x_8_1_{i:05d}.arrow") for i, n in enumerate(sizes)]


@pytest.fixture(scope="module")
def shard_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    return write_synthetic_shards(folder, rows=[300, 170, 95], max_len=16, vocab_size=300, nsp=True)


@given(n=st.integers(1, 5000), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None)
def test_feistel_is_a_permutation(n, seed):
    perm = FeistelPermutation(n, [seed, 0, 0])
    out = perm(np.arange(n))
    assert np.array_equal(np.sort(out), np.arange(n))
    assert np.array_equal(out, perm(np.arange(n), native=False))  # the C rounds are numpy's, walk for walk


def test_feistel_in_c_is_numpy_at_large_domains():
    rng = np.random.default_rng(4)
    for n in (2**31 + 11, 10**9, 3):
        perm = FeistelPermutation(n, [7, 1, 2])
        x = rng.integers(0, n, 5000)
        assert np.array_equal(perm(x), perm(x, native=False))


def test_round_robin_over_files_until_each_is_used_up():
    s = ShardStream(fakes(40, 16, 24), StreamConfig(batch_size=8, seed=1))
    _, files, rounds = s.locate(np.arange(s.steps_per_epoch))
    assert s.per_file.tolist() == [5, 2, 3]
    assert files.tolist() == [0, 1, 2, 0, 1, 2, 0, 2, 0, 0]
    assert rounds.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 4]
    _, files2, _ = s.locate(np.arange(s.steps_per_epoch, 2 * s.steps_per_epoch))
    assert files2.tolist() == files.tolist()  # every epoch rotates the same way


@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=5), world=st.integers(1, 4),
       batch=st.integers(1, 16), seed=st.integers(0, 1000))
@settings(max_examples=80, deadline=None)
def test_ranks_get_disjoint_equal_shares(sizes, world, batch, seed):
    shards = fakes(*sizes)
    try:
        streams = [ShardStream(shards, StreamConfig(batch_size=batch, seed=seed, rank=r, world_size=world))
                   for r in range(world)]
    except ConfigError:
        assert all(n // world < batch for n in sizes)
        return
    steps = {s.steps_per_epoch for s in streams}
    assert len(steps) == 1  # every rank runs the same number of steps: uneven files cannot hang DDP
    seen = set()
    for s in streams:
        files, rows = s.rows(np.arange(s.steps_per_epoch))
        pairs = {(int(f), int(r)) for f, rs in zip(files, rows) for r in rs}
        assert len(pairs) == rows.size            # no row twice within an epoch on a rank
        assert not pairs & seen                   # and never on two ranks
        seen |= pairs
        assert all(np.all(np.diff(r) > 0) for r in rows)
        assert all(int(r.max()) < sizes[f] for f, r in zip(files, rows))


def test_epochs_reshuffle_and_seeds_differ():
    shards = fakes(64, 64)
    a = ShardStream(shards, StreamConfig(batch_size=8, seed=1))
    e0 = a.rows(np.arange(a.steps_per_epoch))[1]
    e1 = a.rows(np.arange(a.steps_per_epoch, 2 * a.steps_per_epoch))[1]
    assert not np.array_equal(e0, e1)
    assert np.array_equal(np.sort(e0.ravel()), np.sort(e1.ravel()))
    b = ShardStream(shards, StreamConfig(batch_size=8, seed=2))
    assert not np.array_equal(e0, b.rows(np.arange(b.steps_per_epoch))[1])
    same = ShardStream(shards, StreamConfig(batch_size=8, seed=1))
    assert np.array_equal(e0, same.rows(np.arange(same.steps_per_epoch))[1])


def test_overfit_repeats_the_first_batches():
    s = ShardStream(fakes(64, 64), StreamConfig(batch_size=8, seed=1, overfit_batches=3))
    f, r = s.rows(np.arange(9))
    assert np.array_equal(r[:3], r[3:6]) and np.array_equal(r[:3], r[6:9])
    with pytest.raises(ConfigError, match="--overfit-batches"):
        ShardStream(fakes(16), StreamConfig(batch_size=8, seed=1, overfit_batches=3))


def test_too_small_for_one_batch_is_refused():
    with pytest.raises(ConfigError, match="--batch-size"):
        ShardStream(fakes(10, 7), StreamConfig(batch_size=8, seed=1, world_size=2))


def test_batches_match_rows_and_files(shard_files):
    shards = open_shards(shard_files)
    s = ShardStream(shards, StreamConfig(batch_size=16, seed=3))
    got = s.batches(0, s.steps_per_epoch)
    files, rows = s.rows(np.arange(s.steps_per_epoch))
    for (f, r, cols), f2, r2 in zip(got, files, rows):
        assert f == f2 and np.array_equal(r, r2)
        direct = shards[f].take(r)
        assert all(np.array_equal(cols[k], direct[k]) for k in direct)


def test_resume_gives_the_batch_that_came_next(shard_files):
    shards = open_shards(shard_files)
    cfg = StreamConfig(batch_size=16, seed=3)
    with Prefetcher(ShardStream(shards, cfg), torch.device("cpu"), ring=3) as feed:
        first = [feed.next() for _ in range(25)]  # crosses an epoch boundary
        state = feed.state_dict()
        after = [feed.next() for _ in range(7)]
    assert state["next_batch"] == 25 and state["version"] == 2
    fresh = ShardStream(open_shards(shard_files), cfg)
    start = fresh.load_state_dict(state)
    with Prefetcher(fresh, torch.device("cpu"), start=start) as feed:
        again = [feed.next() for _ in range(7)]
    for a, b in zip(after, again):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(first) == 25


def test_prefetcher_hands_out_the_streams_batches_widened(shard_files):
    shards = open_shards(shard_files)
    s = ShardStream(shards, StreamConfig(batch_size=8, seed=5))
    with Prefetcher(s, torch.device("cpu"), ring=2) as feed:
        for i in range(40):
            b = feed.next()
            ref = s.batch(i)
            assert set(b) == set(ref)
            for k, v in b.items():
                assert v.dtype == torch.int64 and v.shape == ref[k].shape
                assert np.array_equal(v.numpy(), ref[k].astype(np.int64))


def test_batches_held_by_the_loop_are_never_overwritten(shard_files):
    """The CPU loop's batches are views of reused buffers: one still held must keep its values
    however many batches come after it (here all of them are held, then checked)."""
    shards = open_shards(shard_files)
    s = ShardStream(shards, StreamConfig(batch_size=8, seed=5))
    with Prefetcher(s, torch.device("cpu"), ring=2) as feed:
        held = [feed.next() for _ in range(60)]
        for i in range(60):  # and one dropped at once leaves its buffer to the next
            feed.next()
    for i, b in enumerate(held):
        ref = s.batch(i)
        assert all(np.array_equal(v.numpy(), ref[k].astype(np.int64)) for k, v in b.items()), i


def test_loader_state_refuses_another_plan(shard_files):
    shards = open_shards(shard_files)
    state = ShardStream(shards, StreamConfig(batch_size=8, seed=5)).state_dict(10)
    with pytest.raises(ConfigError, match="global_batch=8 but this run has 4"):
        ShardStream(shards, StreamConfig(batch_size=4, seed=5)).load_state_dict(state)
    assert ShardStream(shards, StreamConfig(batch_size=4, seed=5, accum=2)).load_state_dict(state) == 20
    with pytest.raises(ConfigError, match="files"):
        ShardStream(shards[:2], StreamConfig(batch_size=8, seed=5)).load_state_dict(state)
    with pytest.raises(ConfigError, match="version"):
        ShardStream(shards, StreamConfig(batch_size=8, seed=5)).load_state_dict(state | {"version": 99})


def test_prefetcher_reraises_loader_errors(shard_files):
    real = open_shards(shard_files[:1])[0]

    class Broken:
        path, num_examples = real.path, real.num_examples

        def take(self, rows):
            if len(rows) > 1:  # the ring's shape probe reads one row; real batches fail
                raise RuntimeError("disk on fire")
            return real.take(rows)

    s = ShardStream([Broken()], StreamConfig(batch_size=8, seed=1))
    with Prefetcher(s, torch.device("cpu")) as feed, pytest.raises(RuntimeError, match="disk on fire"):
        feed.next()


def _private_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    pytest.skip("no /proc/self/status")


def test_private_memory_does_not_grow_with_shard_size(tmp_path):
    """The shards are memory-mapped (their pages are reclaimable page cache, not counted here) and
    the shuffle keeps no per-row arrays: streaming as many batches from 40x more data costs no more
    private memory."""
    small = write_synthetic_shards(tmp_path / "small", rows=[2000], max_len=128, vocab_size=30000)
    big = write_synthetic_shards(tmp_path / "big", rows=[40000, 40000], max_len=128, vocab_size=30000, batch=8000)

    def stream_all(paths, batches=80_000 // 64):  # the big set's epoch; the small one's 40 times over
        s = ShardStream(open_shards(paths), StreamConfig(batch_size=64, seed=1))
        with Prefetcher(s, torch.device("cpu"), ring=4) as feed:
            for _ in range(batches):
                feed.next()
        return _private_kb()

    stream_all(small)  # warm-up: allocator pools, thread stacks
    base = stream_all(small)
    grown = stream_all(big) - base
    assert grown < 8 * 1024, f"private memory grew by {grown} kB streaming 80k examples (~31 MB of columns)"
