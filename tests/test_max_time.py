"""`--max-time MINUTES`: a run stops when its training time (validation and checkpoint pauses left
out) reaches the budget, with a final validation and a loadable checkpoint; `--val-minutes`
validates at marks of that same clock; the clock is carried through a checkpoint, so a resumed run
whose budget is spent does nothing; `--schedule time` decays the learning rate over that budget so
the run ends annealed whatever its speed; bad values are one line and exit 2.

The trainer's clock is a fake here (`fake_clock`): each reading advances it by a fixed tick, so what
these tests check depends on the step count, never on how busy the machine is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bertprep.trainer import checkpoint as ckpt_io
from bertprep.trainer import loop
from bertprep.trainer.optim import budget_lr_factor
from bertprep.trainer.run import evaluate, main
from bertprep.trainer.synthetic import write_synthetic_shards
from conftest import FakeClock

BUDGET_MIN = 0.05          # 3 seconds of training
VAL_EVERY_MIN = 0.02       # marks at 1.2 s and 2.4 s of training time, then the final validation
VAL_PAUSE_S = 0.4          # each validation is slowed by this much: it must not count as training
@pytest.fixture(autouse=True)
def fake_clock(monkeypatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(loop, "time", clock)
    return clock




@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("syn")
    write_synthetic_shards(folder, rows=[200])
    write_synthetic_shards(folder, rows=[64], split="val")
    return folder


def args(shards: Path, out: Path, *extra: str) -> list[str]:
    return ["--shards", str(next(shards.glob("train_*.arrow"))), "--out", str(out), "--model", "tiny",
            "--hidden", "32", "--heads", "2", "--ffn", "64", "--batch-size", "8", "--max-steps", "1000000",
            "--warmup-steps", "5", "--lr", "1e-3", "--log-interval", "50", "--val-interval", "0",
            "--val-batches", "2", "--val-examples", "0", "--ckpt-interval", "1000000", "--no-tensorboard",
            *extra]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_max_time_stops_on_time_with_a_checkpoint_and_a_final_validation(shards, tmp_path, monkeypatch, capsys,
                                                                          fake_clock):
    real_validate = loop.validate

    def slow_validate(*a, **kw):
        fake_clock.pause(VAL_PAUSE_S)
        return real_validate(*a, **kw)
    monkeypatch.setattr(loop, "validate", slow_validate)

    run = tmp_path / "run"
    t0 = fake_clock.now
    assert main(args(shards, run, "--max-time", str(BUDGET_MIN), "--val-minutes", str(VAL_EVERY_MIN))) == 0
    wall = fake_clock.now - t0
    err = capsys.readouterr().err
    budget = BUDGET_MIN * 60

    recs = records(run)
    end = recs[-1]
    assert end["event"] == "end" and end["stopped"] == "max_time"
    vals = [r for r in recs if "val_loss" in r]
    # Two timed marks and the final validation, at the last step, with the budget used up.
    assert len(vals) == 3 and vals[-1]["step"] == end["step"]
    assert [v["train_s"] >= mark for v, mark in zip(vals, (1.2, 2.4, budget))] == [True] * 3
    assert budget <= vals[-1]["train_s"] < budget + 0.1  # stopped at the first step past the budget
    assert "--max-time 0.05 min of training reached" in err and "val " in err
    # Validation time was not training time: three slowed validations fit in the wall time on top.
    assert wall >= vals[-1]["train_s"] + 3 * VAL_PAUSE_S
    assert 0 < vals[-1]["train_cpu_s"]

    ck = ckpt_io.load(ckpt_io.newest(run))
    assert ck["step"] == end["step"] and ck["train_s"] >= budget
    again = evaluate(sorted(map(str, shards.glob("val_*.arrow"))), str(run))
    assert again["step"] == end["step"] and again["val_tokens"] > 0


def test_a_resumed_run_keeps_counting_its_budget(shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(args(shards, run, "--max-time", "0.01")) == 0  # 0.6 s of the fake clock
    first = records(run)[-1]["step"]
    # The same budget is already spent: nothing to do, nothing written but the end record.
    assert main(args(shards, run, "--max-time", "0.01", "--resume")) == 0
    assert "already used" in capsys.readouterr().err
    assert records(run)[-1] == {"event": "end", "step": first, "stopped": "max_time"}
    assert ckpt_io.newest(run).name == f"step_{first:08d}.pt"
    # A larger budget continues from where the clock stood.
    assert main(args(shards, run, "--max-time", "0.02", "--resume")) == 0
    ck = ckpt_io.load(ckpt_io.newest(run))
    assert ck["step"] > first and 1.2 <= ck["train_s"] < 1.2 + 0.1


@pytest.mark.parametrize("flag,value", [("--max-time", "-1"), ("--val-minutes", "nan"), ("--max-time", "inf")])
def test_bad_budget_is_one_line_and_exit_2(shards, tmp_path, capsys, flag, value):
    assert main(args(shards, tmp_path / "run", flag, value)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {flag}") and "\n" not in err


def test_budget_schedule_warms_up_in_steps_then_follows_the_clock_to_its_floor():
    kw = dict(warmup=10, decay="linear", min_ratio=0.1)
    assert [budget_lr_factor(s, 0.0, **kw) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    # after warm-up the rate is set by the share of the budget used, not by the step count
    assert budget_lr_factor(50, 0.5, **kw) == budget_lr_factor(5000, 0.5, **kw) == pytest.approx(0.55)
    assert budget_lr_factor(50, 1.0, **kw) == budget_lr_factor(50, 3.0, **kw) == pytest.approx(0.1)
    # a budget that runs out during warm-up is not overshot by the ramp
    assert budget_lr_factor(5, 0.9, **kw) == pytest.approx(0.19)
    cos = [budget_lr_factor(100, f, warmup=10, decay="cosine", min_ratio=0.0) for f in (0.0, 0.5, 1.0)]
    assert cos == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)


def test_schedule_time_ends_the_run_annealed_where_a_step_schedule_would_not(shards, tmp_path):
    """A time budget with the step horizon left at its default: the step schedule never leaves its
    peak rate; --schedule time reaches the floor as the budget runs out."""
    lrs = {}
    for schedule in ("steps", "time"):
        run = tmp_path / schedule
        assert main(args(shards, run, "--max-time", "0.03", "--schedule", schedule, "--log-interval", "5")) == 0
        recs = [r for r in records(run) if "lr" in r]
        assert records(run)[-1]["stopped"] == "max_time"
        lrs[schedule] = [r["lr"] for r in recs]
    assert lrs["steps"][-1] == pytest.approx(1e-3, rel=0.01)  # decaying over 1,000,000 steps
    after_warmup = lrs["time"][1:]
    assert len(after_warmup) >= 5 and after_warmup == sorted(after_warmup, reverse=True)
    assert lrs["time"][-1] < 0.05 * 1e-3  # the last window trained at < 5% of the peak


def test_schedule_time_needs_a_budget(shards, tmp_path, capsys):
    assert main(args(shards, tmp_path / "run", "--schedule", "time")) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --schedule time decays the learning rate over the --max-time budget; give --max-time"
