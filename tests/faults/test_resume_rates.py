"""--resume trains at the resuming run's rates (issue 18 item 9): every flag but the model's is the
resuming run's, so a new --lr and --weight-decay apply from the first resumed step, on the
schedule's curve at that step; the optimizer and schedule state a checkpoint holds would bring
back the old peak (a --lr 1e-2 run resumed with --lr 1e-3 trained at 3.5e-3)."""

from __future__ import annotations

import json

import pytest

from bertprep.trainer import checkpoint as ckpt_io
from bertprep.trainer import run as trainer
from bertprep.trainer.synthetic import write_synthetic_shards


def rates(run) -> dict[int, float]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in recs if "lr" in r}


def test_a_resumed_run_trains_at_its_own_rates(tmp_path):
    shards = write_synthetic_shards(tmp_path / "syn", rows=[120, 90], nsp=True)
    base = ["--shards", *map(str, shards), "--model", "tiny", "--hidden", "32", "--heads", "2", "--ffn", "64",
            "--batch-size", "8", "--warmup-steps", "2", "--min-lr", "0", "--ckpt-interval", "10",
            "--log-interval", "1", "--val-interval", "0", "--seed", "7", "--no-tensorboard", "--quiet"]
    run, whole = tmp_path / "run", tmp_path / "whole"
    assert trainer.main([*base, "--out", str(run), "--max-steps", "10", "--lr", "1e-2", "--weight-decay", "0.01"]) == 0
    new = ["--max-steps", "20", "--lr", "1e-3", "--weight-decay", "0.1"]
    assert trainer.main([*base, "--out", str(run), *new, "--resume"]) == 0
    assert trainer.main([*base, "--out", str(whole), *new]) == 0
    got, want = rates(run), rates(whole)
    assert all(got[s] == pytest.approx(want[s], rel=1e-9) for s in range(11, 21)), (got, want)
    ck = ckpt_io.load(ckpt_io.newest(run))
    assert [g["weight_decay"] for g in ck["optimizer"]["param_groups"]] == [0.1, 0.0]
