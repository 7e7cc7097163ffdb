"""DDP as it runs for users: a real `torchrun --nproc-per-node 2` of trainer/run.py on CPU (gloo).
Ranks read disjoint rows, run the same number of steps over uneven shards (no hang, across epochs),
write one metrics file and checkpoints holding both ranks' RNG states, and a resumed 2-process run
reproduces the uninterrupted losses. Elastic resume (--global-batch-size): a run stopped on 2 ranks
continues on 1 and on 4, and one stopped on 1 continues on 2, reading across all ranks exactly
the uninterrupted run's rows in order, with its losses (no dropout: its draws are per rank)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bertprep.shards.errors import ConfigError
from bertprep.trainer import checkpoint as ckpt_io
from bertprep.trainer.config import train_config
from conftest import train_losses
from bertprep.trainer.run import train
from bertprep.trainer.synthetic import write_synthetic_shards

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 180
STEPS = 36


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> Path:
    """Files whose sizes split unevenly over 2 ranks and batches of 8 (121 // 2 = 60 = 7 batches + 4)."""
    folder = tmp_path_factory.mktemp("ddp")
    write_synthetic_shards(folder, rows=[121, 91, 37], nsp=True)
    write_synthetic_shards(folder, rows=[41], nsp=True, split="val")
    return folder


def torchrun(folder: Path, out: Path, *extra: str, nproc: int = 2) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            str(ROOT / "trainer" / "run.py"), "--shards", *map(str, sorted(folder.glob("train_*"))),
            "--out", str(out), "--max-steps", str(STEPS), "--batch-size", "8", "--model", "tiny", "--hidden", "32",
            "--heads", "2", "--ffn", "64", "--lr", "3e-3", "--warmup-steps", "3", "--log-interval", "1",
            "--val-interval", "12", "--ckpt-interval", "12", "--max-checkpoints", "5", "--seed", "11",
            "--trace-data", "--no-tensorboard", "--quiet", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def trace(out: Path, rank: int) -> list[tuple[int, int, list[int]]]:
    """(batch index, file, rows) of each batch rank `rank` read (--trace-data)."""
    lines = (out / "trace" / f"rank{rank}.txt").read_text().split("\n")[:-1]
    return [(int(i), int(f), list(map(int, rows))) for i, f, *rows in (line.split() for line in lines)]




@pytest.fixture(scope="module")
def ddp_run(uneven, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "ddp"
    torchrun(uneven, out)
    return out


def test_two_ranks_read_disjoint_rows_and_run_equal_steps(ddp_run):
    t0, t1 = trace(ddp_run, 0), trace(ddp_run, 1)
    assert [i for i, _, _ in t0] == [i for i, _, _ in t1] == list(range(STEPS))
    per_epoch = 7 + 5 + 2  # floor(floor(n / 2) / 8) per file: the plan both ranks share
    for start in range(0, STEPS, per_epoch):
        seen0 = {(f, r) for i, f, rows in t0[start:start + per_epoch] for r in rows}
        seen1 = {(f, r) for i, f, rows in t1[start:start + per_epoch] for r in rows}
        assert not seen0 & seen1, "ranks read the same example in one epoch"
    assert [f for _, f, _ in t0[:per_epoch]] == [0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 0, 1, 0, 0]


def test_one_metrics_file_and_checkpoints_with_every_ranks_rng(ddp_run):
    assert sorted(train_losses(ddp_run)) == list(range(1, STEPS + 1))
    recs = [json.loads(line) for line in (ddp_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "val_loss" in r] == [12, 24, 36]
    ck = ckpt_io.load(ckpt_io.newest(ddp_run))
    assert ck["step"] == STEPS and len(ck["rng"]["torch"]) == 2
    assert not ck["rng"]["torch"][0].equal(ck["rng"]["torch"][1])  # dropout differs across ranks
    assert json.loads((ddp_run / "config.json").read_text())["world_size"] == 2


def test_resumed_ddp_run_reproduces_the_losses(uneven, ddp_run, tmp_path):
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt_io.checkpoint_path(ddp_run, 12), out / "checkpoints")
    torchrun(uneven, out, "--resume")
    whole = train_losses(ddp_run)
    assert train_losses(out) == {s: v for s, v in whole.items() if s > 12}


def test_another_global_batch_cannot_resume(uneven, ddp_run, tmp_path):
    """Without --global-batch-size, one rank of 8 is a global batch of 8, not the checkpoint's 16:
    another data order, refused with what to pass."""
    out = tmp_path / "single"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt_io.newest(ddp_run), out / "checkpoints")
    cfg = train_config(shards=tuple(map(str, sorted(uneven.glob("train_*")))), out=str(out), resume=True,
                      batch_size=8, seed=11, max_steps=STEPS + 2, model="tiny", hidden=32, heads=2, ffn=64,
                      quiet=True, tensorboard=False)
    with pytest.raises(ConfigError, match=r"global_batch=16 but this run has 8.*checkpoint's: 16"):
        train(cfg)


def test_two_ranks_on_a_time_budget_stop_together_annealed(uneven, tmp_path):
    """--max-time with --schedule time under torchrun: each rank reads its own clock, so they must
    agree on one (a rank stopping a step before the other would leave its peer hanging in a
    collective), and the rate the run ends at is the budget's floor."""
    out = tmp_path / "timed"
    torchrun(uneven, out, "--max-steps", "1000000", "--max-time", "0.05", "--schedule", "time",
             "--val-interval", "0", "--ckpt-interval", "1000000")
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    end = recs[-1]
    assert end["event"] == "end" and end["stopped"] == "max_time"
    rates = [r["lr"] for r in recs if "lr" in r]
    # past the 3 warm-up steps (how many more depends on the machine's speed, not on the code)
    assert len(rates) > 3 and rates[-1] < 0.05 * 3e-3
    assert ckpt_io.load(ckpt_io.newest(out))["train_s"] >= 3.0


ELASTIC = ("--global-batch-size", "32", "--dropout", "0", "--val-interval", "0", "--ckpt-interval", "6")
TOLERANCE = 1e-5  # relative: fp32 sums in another order (DDP's all-reduce against local accumulation)


def global_rows(out: Path, world: int, accum: int) -> dict[int, list[tuple[int, int]]]:
    """{global batch: its rows across all ranks in slice order} from a run's traces: rank r's
    batch i is slice (i % accum) * world + r of global batch i // accum (trainer/stream.py)."""
    slices: dict[int, dict[int, list]] = {}
    for r in range(world):
        for i, f, rows in trace(out, r):
            slices.setdefault(i // accum, {})[(i % accum) * world + r] = [(f, x) for x in rows]
    assert all(sorted(k) == list(range(world * accum)) for k in slices.values())
    return {g: [x for k in sorted(ks) for x in ks[k]] for g, ks in sorted(slices.items())}


def resumed_from(run: Path, step: int, out: Path) -> Path:
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt_io.checkpoint_path(run, step), out / "checkpoints")
    return out


@pytest.fixture(scope="module")
def elastic_run(uneven, tmp_path_factory) -> Path:
    """12 steps on 2 ranks of 8 examples x 2 micro-steps (global batch 32): the uninterrupted run."""
    out = tmp_path_factory.mktemp("elastic") / "two"
    torchrun(uneven, out, *ELASTIC, "--max-steps", "12")
    return out


@pytest.mark.parametrize("start_world, world", [(2, 1), (2, 4), (1, 2)])
def test_elastic_resume_reads_the_next_global_batches(uneven, elastic_run, tmp_path, start_world, world):
    first = elastic_run
    if start_world != 2:  # the same 12 steps on `start_world` ranks (--max-steps sets the schedule): its step 6
        first = tmp_path / "first"
        torchrun(uneven, first, *ELASTIC, "--max-steps", "12", nproc=start_world)
        assert global_rows(first, start_world, 32 // 8 // start_world) == global_rows(elastic_run, 2, 2)
    out = resumed_from(first, 6, tmp_path / "resumed")
    torchrun(uneven, out, *ELASTIC, "--max-steps", "12", "--resume", nproc=world)
    whole = global_rows(elastic_run, 2, 2)
    assert global_rows(out, world, 32 // 8 // world) == {g: rows for g, rows in whole.items() if g >= 6}
    assert json.loads((out / "config.json").read_text())["grad_accum"] == 32 // 8 // world
    expect = {s: v for s, v in train_losses(elastic_run).items() if s > 6}
    got = train_losses(out)
    assert got.keys() == expect.keys()
    assert all(got[s] == pytest.approx(expect[s], rel=TOLERANCE) for s in got), (got, expect)
