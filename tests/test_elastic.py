"""The elastic, mixable plan (trainer/stream.py, trainer/mixture.py): global batch g is the same
rows on any number of ranks and micro-steps; a position saved on N ranks resumes on M at exactly
the next global batch; --mix interleaves sources by weight (every 1,000-batch window within 1%),
each source with its own epochs; --shuffle global visits every row of a source once per epoch;
locating step 10^6 of a 10^9-example plan is O(1)."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertprep.shards.errors import ConfigError
from bertprep.trainer.mixture import Interleave, Source, integer_weights, parse_mix
from bertprep.trainer.stream import ShardStream, StreamConfig, split_global_batch
from bertprep.trainer.synthetic import write_synthetic_shards


class FakeShard:
    """Rows only: `take` returns the row numbers."""

    def __init__(self, n: int, name: str):
        self.num_examples, self.path = n, name

    def take(self, rows):
        return {"row": np.asarray(rows)}


def fakes(*sizes, tag="x"):
    return [FakeShard(n, f"train_{tag}_8_1_{i:05d}.arrow") for i, n in enumerate(sizes)]


def global_batches(shards, steps, *, world, batch, accum, sources=None, **kw):
    """The rows of global batches 0..steps-1 as read by every rank, in slice order: [(file, row), ...] per batch."""
    streams = [ShardStream(shards, StreamConfig(batch_size=batch, accum=accum, seed=7, rank=r, world_size=world, **kw),
                           sources) for r in range(world)]
    out = []
    for g in range(steps):
        rows = {}
        for s in streams:
            for m in range(accum):
                _, f, r = s.examples([g * accum + m])
                rows[m * world + s.cfg.rank] = list(zip(f[0].tolist(), r[0].tolist()))
        out.append([x for k in sorted(rows) for x in rows[k]])
    return out


@pytest.mark.parametrize("order", ["file", "global"])
def test_global_batches_do_not_depend_on_the_world_size(order):
    shards = fakes(100, 61, 250, 48)
    mix = [Source("a", 2, 0.6), Source("b", 2, 0.4)]
    base = global_batches(shards, 40, world=1, batch=4, accum=6, sources=mix, order=order)
    for world, accum in ((2, 3), (3, 2), (6, 1)):  # the same 4-row micro-batches: the same rows in the same order
        assert global_batches(shards, 40, world=world, batch=4, accum=accum, sources=mix, order=order) == base
    for world, batch in ((2, 12), (4, 6)):  # other micro-batches: the same rows per global batch
        other = global_batches(shards, 40, world=world, batch=batch, accum=1, sources=mix, order=order)
        assert [sorted(b) for b in other] == [sorted(b) for b in base]


def test_a_position_saved_on_two_ranks_resumes_on_three_at_the_next_global_batch():
    shards = fakes(300, 170, 95)
    two = [ShardStream(shards, StreamConfig(batch_size=4, accum=3, seed=7, rank=r, world_size=2)) for r in range(2)]
    state = two[0].state_dict(17 * 3)  # 17 steps done
    assert state["next_batch"] == 17 and state["world_size"] == 2 and state["global_batch"] == 24
    three = [ShardStream(shards, StreamConfig(batch_size=4, accum=2, seed=7, rank=r, world_size=3)) for r in range(3)]
    starts = [s.load_state_dict(state) for s in three]
    assert starts == [34, 34, 34]
    after = global_batches(shards, 25, world=3, batch=4, accum=2)[17:]
    assert after == global_batches(shards, 25, world=2, batch=4, accum=3)[17:]
    assert [three[r].place([34])[0][0] for r in range(3)] == [17, 17, 17]


def test_a_resume_refuses_another_plan_and_names_what_may_change():
    s = ShardStream(fakes(300, 170), StreamConfig(batch_size=8, seed=7, world_size=2))
    state = s.state_dict(4)
    other = ShardStream(fakes(300, 170), StreamConfig(batch_size=8, seed=7, world_size=1))
    with pytest.raises(ConfigError, match=r"global_batch=16 but this run has 8.*number of processes, --batch-size"):
        other.load_state_dict(state)
    with pytest.raises(ConfigError, match="shuffle='file' but this run has 'global'"):
        ShardStream(fakes(300, 170), StreamConfig(batch_size=8, seed=7, world_size=2, order="global")).load_state_dict(state)
    with pytest.raises(ConfigError, match="version 1.*--init-from"):
        s.load_state_dict(dict(state, version=1))


@pytest.mark.parametrize("G, world, batch, expect", [
    (32, 1, 8, (8, 4)), (32, 2, 8, (8, 2)), (32, 4, 8, (8, 1)), (48, 3, 8, (8, 2)), (48, 2, 32, (24, 1)),
    (36, 2, 8, (6, 3)), (32, 5, 8, None),
])
def test_global_batch_size_splits_into_micro_steps(G, world, batch, expect):
    if expect is None:
        with pytest.raises(ConfigError, match="does not split evenly over 5 ranks"):
            split_global_batch(G, world, batch, 1)
        return
    b, a = split_global_batch(G, world, batch, 1)
    assert (b, a) == expect and b * a * world == G and b <= batch
    assert split_global_batch(None, world, batch, 3) == (batch, 3)
    with pytest.raises(ConfigError, match="--grad-accum is derived"):
        split_global_batch(G, world, batch, 2)


def smooth_rr(weights, n):
    """The reference: nginx's smooth weighted round-robin, turn by turn."""
    w, cur, out = np.array(weights), np.zeros(len(weights), dtype=np.int64), []
    for _ in range(n):
        cur += w
        s = int(np.argmax(cur))
        cur[s] -= w.sum()
        out.append(s)
    return out


@pytest.mark.parametrize("weights", [[0.7, 0.3], [1, 1, 1], [0.5, 0.3, 0.15, 0.05], [0.9137, 0.0863], [3, 997]])
def test_interleave_holds_the_proportions_in_every_window_of_1000(weights):
    ints = integer_weights(weights)
    inter = Interleave(ints)
    n = 30_000
    source, own = inter(np.arange(n))
    assert source.tolist()[:2000] == smooth_rr(ints, 2000)
    share = np.asarray(weights) / sum(weights)
    for s in range(len(weights)):
        hits = np.concatenate([[0], np.cumsum(source == s)])
        window = hits[1000:] - hits[:-1000]                    # every window of 1,000 consecutive batches
        assert np.abs(window / 1000 - share[s]).max() <= 0.01
        assert np.array_equal(own[source == s], np.arange(int(hits[-1])))  # each source's own batches, in order
    assert np.array_equal(inter.counts(12345), np.bincount(source[:12345], minlength=len(weights)))


def test_each_source_keeps_its_own_epochs():
    shards = fakes(64, 64, 640, 640, tag="y")  # source a: 2 files of 8 batches; b: 2 files of 80
    s = ShardStream(shards, StreamConfig(batch_size=8, seed=3), [Source("a", 2, 1), Source("b", 2, 1)])
    idx = np.arange(64)
    src = s.source_of(idx)
    epoch, files, _ = s.locate(idx)
    a = src == 0
    assert epoch[a].tolist() == [i // 16 for i in range(32)] and set(epoch[~a].tolist()) == {0}
    _, rows = s.rows(idx[a])
    e0, e1 = rows[:16], rows[16:32]
    assert not np.array_equal(e0, e1) and np.array_equal(np.sort(e0.ravel()), np.sort(e1.ravel()))
    assert s.state_dict(40)["epochs"] == {"a": 1, "b": 0}


def test_global_shuffle_visits_every_row_of_a_source_once_per_epoch():
    shards = fakes(100, 37, 250)
    s = ShardStream(shards, StreamConfig(batch_size=16, seed=5, order="global"))
    assert s.batches_per_epoch == 387 // 16
    epoch, files, rows = s.examples(np.arange(s.steps_per_epoch))
    pairs = set(zip(files.ravel().tolist(), rows.ravel().tolist()))
    assert len(pairs) == files.size and all(r < shards[f].num_examples for f, r in pairs)
    assert np.mean([len(set(f)) for f in files]) > 2  # a batch draws from several files
    got = s.batches(3, 2)
    assert np.array_equal(got[0][0], files[3]) and np.array_equal(got[1][2]["row"], rows[4])


def test_mix_specs_are_checked():
    assert parse_mix(["wiki=a/train_*:0.7", "books=b/c:d/train_*:0.3"])[1].pattern == "b/c:d/train_*"
    for bad, why in [("wiki", "NAME=GLOB:WEIGHT"), ("w=x:0", "must be a number > 0"), ("w=x:abc", "> 0"),
                     ("w w=x:1", "letters"), ("w=x:nan", "> 0")]:
        with pytest.raises(ConfigError, match=why):
            parse_mix([bad])
    with pytest.raises(ConfigError, match="given twice"):
        parse_mix(["a=x:1", "a=y:1"])


@given(weights=st.lists(st.floats(0.01, 100), min_size=1, max_size=6))
@settings(max_examples=40, deadline=None)
def test_integer_weights_keep_the_ratio(weights):
    ints = integer_weights(weights)
    assert min(ints) >= 1 and sum(ints) <= 100_000
    share, got = np.asarray(weights) / sum(weights), np.asarray(ints) / sum(ints)
    assert np.abs(share - got).max() < 0.002


def test_resume_at_step_a_million_of_a_billion_examples_is_instant():
    """O(1) resume: the plan locates any position without replaying the ones before it."""
    t0 = time.perf_counter()
    shards = fakes(*[1_000_000] * 600, tag="w") + fakes(*[1_000_000] * 400, tag="b")
    cfg = StreamConfig(batch_size=128, accum=2, seed=1, rank=3, world_size=4, order="global")
    s = ShardStream(shards, cfg, [Source("w", 600, 0.7), Source("b", 400, 0.3)])
    start = s.load_state_dict(s.state_dict(10**6 * 2))
    epoch, files, rows = s.examples(np.arange(start, start + 2))
    elapsed = time.perf_counter() - t0
    assert start == 2 * 10**6 and files.shape == (2, 128)
    assert elapsed < 1.0, f"{elapsed:.2f} s to resume at step 10^6"


def test_mix_is_a_repeatable_flag_and_a_toml_list(tmp_path):
    from bertprep.trainer.run import parse_config

    cfg = parse_config(["--mix", "a=x/train_*:0.7", "--mix", "b=y/train_*:0.3", "--shuffle", "global",
                        "--global-batch-size", "64"])
    assert cfg.data.mix == ("a=x/train_*:0.7", "b=y/train_*:0.3") and cfg.data.shards == ()
    assert (cfg.data.shuffle, cfg.data.global_batch_size) == ("global", 64)
    toml = tmp_path / "run.toml"
    toml.write_text('mix = ["a=x/train_*:1", "b=y/train_*:2"]\nglobal-batch-size = 64\n')
    assert parse_config(["--config", str(toml)]).data.mix == ("a=x/train_*:1", "b=y/train_*:2")
    assert parse_config(["--config", str(toml), "--mix", "c=z/train_*:1"]).data.mix == ("c=z/train_*:1",)
    with pytest.raises(ConfigError, match="--shards .* or --mix .*not both"):
        parse_config(["--config", str(toml), "--shards", str(toml)])
    with pytest.raises(ConfigError, match="--grad-accum is derived"):
        parse_config(["--config", str(toml), "--grad-accum", "2"])


def test_a_mixed_globally_shuffled_run_resumes_exactly_and_logs_each_source(tmp_path):
    from bertprep.trainer.config import train_config
    from bertprep.trainer.run import train
    from conftest import train_losses

    for name, rows in (("a", [150, 90]), ("b", [120])):
        write_synthetic_shards(tmp_path / name, rows=rows, nsp=True, label=name)
        write_synthetic_shards(tmp_path / name, rows=[40], nsp=True, split="val", label=name)
    mix = (f"a={tmp_path}/a/train_*:0.7", f"b={tmp_path}/b/train_*:0.3")
    flags = dict(mix=mix, shuffle="global", global_batch_size=16, batch_size=8, model="tiny", layers=1, hidden=32,
                 heads=2, ffn=64, lr=3e-3, warmup_steps=2, log_interval=1, val_interval=8, val_batches=2,
                 val_examples=0, ckpt_interval=4, seed=5, trace_data=True, quiet=True, tensorboard=False)
    whole = tmp_path / "whole"
    train(train_config(**flags, max_steps=8, out=str(whole)))
    part = tmp_path / "part" / "checkpoints"  # resumed from the whole run's step 4
    part.mkdir(parents=True)
    shutil.copy(whole / "checkpoints" / "step_00000004.pt", part)
    train(train_config(**flags, max_steps=8, out=str(part.parent), resume=True))
    assert train_losses(part.parent) == {s: v for s, v in train_losses(whole).items() if s > 4}
    traced = (whole / "trace" / "rank0.txt").read_text().splitlines()
    assert (part.parent / "trace" / "rank0.txt").read_text().splitlines() == traced[4 * 2:]
    assert any(len({tok.split(":")[0] for tok in line.split()[1:]}) > 1 for line in traced)  # --shuffle global
    recs = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_a", "mlm_loss_a"} <= set(recs[0]) | set(recs[1])
    val = next(r for r in recs if "val_loss" in r)
    assert {"val_loss_a", "val_loss_b", "val_mlm_acc_a"} <= set(val)


def test_a_mixed_run_keeps_the_tokenizer_and_the_report_finds_each_sources_val_files(token_store, tmp_path):
    """The tokenizer is found through the --mix sources' manifests (as through --shards'), so the
    run directory alone serves predict/export/finetune; the report's validation files are each
    source's val_ files."""
    from bertprep.report.report import _recorded_val_shards
    from bertprep.trainer.config import train_config
    from bertprep.trainer.run import train
    from conftest import run_cli

    for name, seed in (("a", 1), ("b", 2)):
        assert run_cli(["shard", "--tokens", token_store, "--out", tmp_path / name, "--max-len", "64",
                        "--seed", str(seed)]) == 0
    mix = (f"a={tmp_path}/a/train_*:0.7", f"b={tmp_path}/b/train_*:0.3")
    run = tmp_path / "run"
    train(train_config(mix=mix, model="tiny", layers=1, hidden=32, heads=2, ffn=64, batch_size=4, max_steps=2,
                       warmup_steps=1, val_interval=0, val_examples=0, out=str(run), quiet=True, tensorboard=False))
    assert (run / "tokenizer.json").read_bytes() == (token_store / "tokenizer.json").read_bytes()
    config = json.loads((run / "config.json").read_text())
    found = _recorded_val_shards(config)
    assert sorted(p.split("/")[-2] for p in found) == ["a", "b"] and all("/val_" in p for p in found)
