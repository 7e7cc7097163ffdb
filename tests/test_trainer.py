"""The training loop end to end on CPU: the loss falls on real shards of the Python docs,
--overfit-batches drives it under 0.1, a stopped or killed run resumes to exactly the losses of
the uninterrupted one, SIGTERM leaves a loadable checkpoint, a non-finite loss stops the run keeping
the last good checkpoint, mismatched shards are refused with one line and exit 2, and the
run directory (metrics.jsonl, checkpoints, --config) is as documented."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bertprep.shards.errors import ConfigError, ShardFormatError
from bertprep.trainer import checkpoint as ckpt_io
from bertprep.trainer import loop
from bertprep.trainer.config import TrainConfig, train_config
from bertprep.trainer.prefetch import Prefetcher
from bertprep.trainer.run import evaluate, main, parse_config, train
from bertprep.trainer.synthetic import write_synthetic_shards
from conftest import run_cli, train_losses

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"model": "tiny", "layers": 2, "hidden": 32, "heads": 2, "ffn": 64}




@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    """Synthetic NSP shards: 3 uneven train files and a val file, max_len 32, vocab 64."""
    folder = tmp_path_factory.mktemp("syn")
    write_synthetic_shards(folder, rows=[120, 90, 70], nsp=True)
    write_synthetic_shards(folder, rows=[64], nsp=True, split="val")
    return folder


@pytest.fixture(scope="module")
def pydocs_shards(token_store, tmp_path_factory) -> Path:
    """Real shards: the session token store of tests/data/pydocs.wiki.tokens (conftest), cut by
    `bertprep shard` into 64-token examples, 3 train files and a val file."""
    from bertprep.cli import main as bertprep

    out = tmp_path_factory.mktemp("pydocs") / "shards"
    try:
        bertprep(["shard", "--tokens", str(token_store), "--out", str(out), "--max-len", "64", "--seed", "123",
                  "--examples-per-shard", "256", "--workers", "1"])
    except SystemExit as e:
        assert not e.code
    return out


def make_cfg(folder: Path, out: Path, **kw) -> TrainConfig:
    base = dict(shards=tuple(str(p) for p in sorted(folder.glob("train_*.arrow"))), out=str(out), batch_size=8,
                max_steps=12, lr=3e-3, warmup_steps=2, log_interval=1, val_interval=0, ckpt_interval=100,
                seed=7, quiet=True, tensorboard=False, **SMALL)
    return train_config(**(base | kw))


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]




def test_loss_falls_on_real_shards(pydocs_shards, tmp_path):
    assert len(list(pydocs_shards.glob("train_pydocs_64_123_*.arrow"))) >= 2
    cfg = make_cfg(pydocs_shards, tmp_path / "run", max_steps=60, batch_size=16, lr=2e-3, warmup_steps=6,
                   log_interval=10, val_interval=60, val_examples=1, hidden=64, heads=2, ffn=256, dropout=0.0)
    summary = train(cfg)
    curve = train_losses(tmp_path / "run")
    vocab = json.loads((tmp_path / "run" / "config.json").read_text())["data"]["vocab_size"]
    assert curve[10] > math.log(vocab) - 1.0            # starts near chance over the vocabulary
    assert curve[60] < curve[10] - 1.0, curve           # and learns
    # The validation split is 27 examples, ~270 masked tokens: how the documents are cut and masked
    # moves their mean loss by ~0.1 nat (6.50 before issue 19's segment, 6.66 after), so the bar
    # sits below chance with that room; the training curve above shows the learning.
    assert summary["val_loss"] < math.log(vocab) - 0.75
    assert "[MASK]" in (tmp_path / "run" / "examples.txt").read_text()  # decoded with the real vocab
    # tok/s counts real tokens, not padding: these split shards' examples average under 64 tokens
    per_example = [r["tokens_per_s"] / r["samples_per_s"] for r in records(tmp_path / "run") if "tokens_per_s" in r]
    assert per_example and all(32 < t < 63 for t in per_example), per_example


def test_metrics_jsonl_and_run_directory(syn, tmp_path):
    summary = train(make_cfg(syn, tmp_path / "run", max_steps=6, log_interval=2, val_interval=3, ckpt_interval=2,
                             max_checkpoints=2, val_examples=1, tensorboard=True))
    recs = records(tmp_path / "run")
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == [2, 4, 6]
    for r in steps:
        assert {"step", "loss", "lr", "tokens_per_s", "samples_per_s", "data_wait_s"} <= r.keys()
        assert r["tokens_per_s"] > 0 and 0 <= r["data_wait_s"]
    vals = [r for r in recs if "val_loss" in r]
    assert [r["step"] for r in vals] == [3, 6]
    assert {"val_loss", "val_mlm_acc", "val_ppl", "val_nsp_acc"} <= vals[0].keys()
    assert math.isclose(vals[0]["val_ppl"], math.exp(vals[0]["val_loss"]))
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path / "run")] == ["step_00000004.pt", "step_00000006.pt"]
    assert "== step 3" in (tmp_path / "run" / "examples.txt").read_text()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["hidden"] == 32
    assert summary["step"] == 6 and summary["stopped"] == "max_steps" and "val_loss" in summary
    try:
        import tensorboard  # noqa: F401  (optional: events are skipped with a note without it)
        assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    except ImportError:
        assert not (tmp_path / "run" / "tb").exists()
    ck = ckpt_io.load(ckpt_io.newest(tmp_path / "run"))
    assert ck["step"] == 6 and ck["loader"]["next_batch"] == 6 and ck["data"]["vocab_size"] == 64
    assert set(ck) >= {"model", "optimizer", "scheduler", "rng", "config", "model_config"}


def test_overfit_batches_drive_the_loss_under_0_1(syn, tmp_path):
    cfg = make_cfg(syn, tmp_path / "run", overfit_batches=1, max_steps=150, lr=1e-2, warmup_steps=10,
                   dropout=0.0, log_interval=10, hidden=64, heads=2, ffn=128, decay="cosine", min_lr=1e-3)
    train(cfg)
    final = train_losses(tmp_path / "run")[150]
    assert final < 0.1, f"overfitting one batch ended at loss {final}"


def _stop_at(monkeypatch, batch_index: int):
    """Send this process SIGTERM when the loader hands out batch `batch_index` (a kill mid-step)."""
    real_next = Prefetcher.next

    def next_and_maybe_signal(self):
        b = real_next(self)
        if self.consumed == batch_index + 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return b
    monkeypatch.setattr(Prefetcher, "next", next_and_maybe_signal)


def test_stop_and_resume_reproduce_the_uninterrupted_losses(syn, tmp_path, monkeypatch):
    kw = dict(max_steps=12, grad_accum=2, dropout=0.1, ckpt_interval=4, max_checkpoints=10)
    train(make_cfg(syn, tmp_path / "whole", **kw))
    whole = train_losses(tmp_path / "whole")
    assert len(whole) == 12

    # Stopped by SIGTERM during step 5 (its 9th micro-batch): saves step 5 and exits cleanly.
    with monkeypatch.context() as m:
        _stop_at(m, 8)
        summary = train(make_cfg(syn, tmp_path / "split", **kw))
    assert summary["stopped"] == "signal SIGTERM" and summary["step"] == 5
    summary = train(make_cfg(syn, tmp_path / "split", resume=True, **kw))
    assert summary["first_step"] == 5 and summary["step"] == 12
    assert train_losses(tmp_path / "split") == whole  # exactly equal, dropout and data order included

    # Killed outright later on: only the step-4 checkpoint survives, beside a metrics.jsonl that logged
    # every step; resuming from it drops the records past step 4 and reproduces them.
    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt_io.checkpoint_path(tmp_path / "whole", 4), killed / "checkpoints")
    shutil.copy(tmp_path / "whole" / "metrics.jsonl", killed)
    train(make_cfg(syn, killed, resume=True, **kw))
    assert train_losses(killed) == whole


def test_sigterm_leaves_a_loadable_checkpoint(syn, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, str(ROOT / "trainer" / "run.py"), "--shards", *map(str, sorted(syn.glob("train_*"))),
            "--out", str(out), "--max-steps", "100000", "--batch-size", "8", "--log-interval", "1",
            "--val-interval", "0", "--model", "tiny", "--hidden", "32", "--layers", "1", "--no-tensorboard", "--seed", "7"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 60
        while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text().count("\n") >= 3:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.time() < deadline, "the run never logged a step"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM: saved" in err
    ck = ckpt_io.load(ckpt_io.newest(out))
    assert ck["step"] >= 3 and ck["loader"]["next_batch"] == ck["step"]
    assert records(out)[-1] == {"event": "end", "step": ck["step"], "stopped": "signal SIGTERM"}
    # ... and it resumes.
    cfg = make_cfg(syn, out, resume=True, max_steps=100000, layers=1, hidden=32, heads=1, ffn=128)
    with pytest.MonkeyPatch.context() as m:
        _stop_at(m, ck["step"] + 1)
        summary = train(cfg)
    assert summary["first_step"] == ck["step"] and summary["step"] == ck["step"] + 2


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(syn, tmp_path, monkeypatch, capsys):
    real = loop.pretraining_loss
    calls = {"n": 0}

    def poisoned(mlm, nsp, batch, **kw):
        calls["n"] += 1
        loss, parts = real(mlm, nsp, batch, **kw)
        return (loss * float("nan"), parts) if calls["n"] > 5 else (loss, parts)
    monkeypatch.setattr(loop, "pretraining_loss", poisoned)
    cfg = make_cfg(syn, tmp_path / "run", ckpt_interval=2, log_interval=3)
    with pytest.raises(loop.NonFiniteLoss, match=r"loss is nan at step 6; the last good checkpoint is .*step_00000004"):
        train(cfg)
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path / "run")][-1] == "step_00000004.pt"
    calls["n"] = 0
    code = main(["--shards", *cfg.data.shards, "--out", str(tmp_path / "run2"), "--model", "tiny", "--hidden", "32",
                 "--batch-size", "8", "--max-steps", "8", "--warmup-steps", "2", "--quiet", "--no-tensorboard"])
    assert code == 3 and capsys.readouterr().err.startswith("error: loss is nan")


def test_mismatched_shards_are_refused(syn, tmp_path, capsys):
    other = write_synthetic_shards(tmp_path / "other", rows=[64], max_len=48, nsp=True)
    code = main(["--shards", *map(str, sorted(syn.glob("train_*"))), *map(str, other), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "max_len" in err

    # Validation shards of another length.
    with pytest.raises(ShardFormatError, match="max_len"):
        train(make_cfg(syn, tmp_path / "v", val_interval=2, val_shards=tuple(map(str, other))))

    # A checkpoint's vocabulary against shards of another vocabulary.
    train(make_cfg(syn, tmp_path / "run", max_steps=2))
    bigger = write_synthetic_shards(tmp_path / "bigger", rows=[64], vocab_size=80, nsp=True)
    with pytest.raises(ShardFormatError, match="vocab_size=64 but these shards have vocab_size=80"):
        train(make_cfg(tmp_path / "bigger", tmp_path / "run", resume=True))
    assert ckpt_io.newest(tmp_path / "run") == ckpt_io.checkpoint_path(tmp_path / "run", 2)  # left as it was


def test_bad_input_is_one_line_and_exit_2(syn, tmp_path, capsys):
    cases = [
        ["--shards", str(tmp_path / "nope.arrow")],
        ["--shards", str(next(syn.glob("train_*"))), "--lr", "-1"],
        ["--shards", str(next(syn.glob("train_*"))), "--model", "huge"],
        ["--shards", str(next(syn.glob("train_*"))), "--batch-size", "500", "--out", str(tmp_path / "b")],
        ["--max-steps", "3"],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)


def test_existing_run_needs_resume(syn, tmp_path, capsys):
    train(make_cfg(syn, tmp_path / "run", max_steps=2))
    with pytest.raises(ConfigError, match="--resume"):
        train(make_cfg(syn, tmp_path / "run", max_steps=4))
    # --resume where there is no checkpoint yet starts the run (one command for start and restart), saying so
    capsys.readouterr()
    assert train(make_cfg(syn, tmp_path / "new", max_steps=2, resume=True))["step"] == 2
    assert "warning: --resume: no checkpoint in" in capsys.readouterr().err


def test_config_file_sets_flags_and_the_command_line_wins(syn, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(f'shards = ["{syn}/train_*.arrow"]\nlr = 0.5\nmax-steps = 7\nmodel = "mini"\ndecay = "cosine"\n')
    cfg = parse_config(["--config", str(toml), "--lr", "0.25"])
    assert cfg.optim.lr == 0.25 and cfg.loop.max_steps == 7 and cfg.model.preset == "mini" and cfg.optim.decay == "cosine"
    assert len(cfg.data.shards) == 3
    toml.write_text("learning_rate = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'learning_rate'"):
        parse_config(["--config", str(toml)])


def test_evaluate_untrained_and_checkpoint(syn, tmp_path):
    val = sorted(syn.glob("val_*"))
    before = evaluate(val, model="tiny", batch_size=16, examples=1)
    assert before["step"] == 0 and before["val_tokens"] > 0
    assert abs(before["val_loss"] - math.log(64)) < 1.0 and math.isclose(before["val_ppl"], math.exp(before["val_loss"]))
    train(make_cfg(syn, tmp_path / "run", max_steps=150, log_interval=50, batch_size=16, warmup_steps=10,
                   dropout=0.0, hidden=64, ffn=128))
    after = evaluate(val, tmp_path / "run", batch_size=16, examples=1)
    assert after["step"] == 150 and after["val_loss"] < before["val_loss"] - 1.0
    assert after["examples"][0].startswith("example 1:") and "val_nsp_acc" in after


def test_trains_on_pack_shards_with_per_document_attention(token_store, pydocs_shards, tmp_path, capsys, monkeypatch):
    """`pack` shards end to end: the loader carries doc_starts to the model, training and
    validation run and the loss falls; pack and non-pack shards are never trained on together."""
    out = tmp_path / "pack"
    assert run_cli(["shard", "--tokens", token_store, "--out", out, "--max-len", "64", "--seed", "123",
                    "--strategy", "pack", "--examples-per-shard", "256", "--workers", "1"]) == 0
    cfg = make_cfg(out, tmp_path / "run", max_steps=40, batch_size=16, lr=2e-3, warmup_steps=4, log_interval=10,
                   val_interval=40, val_examples=1, hidden=64, heads=2, ffn=256, dropout=0.0)
    summary = train(cfg)
    curve = train_losses(tmp_path / "run")
    assert curve[40] < curve[10] - 0.5, curve
    assert math.isfinite(summary["val_loss"])
    from bertprep.trainer.model import Bert

    seen = []
    real = Bert.forward

    def spy(self, *args):
        seen.append(args[4] is not None)
        return real(self, *args)

    monkeypatch.setattr(Bert, "forward", spy)
    train(make_cfg(out, tmp_path / "spy", max_steps=1))
    monkeypatch.undo()
    assert seen and all(seen)  # every step got the document boundaries
    mixed = [str(p) for p in sorted(out.glob("train_*.arrow"))] + [str(next(pydocs_shards.glob("train_*.arrow")))]
    capsys.readouterr()
    code = main(["--shards", *mixed, "--out", str(tmp_path / "mixed")])
    err = capsys.readouterr().err
    assert code == 2 and "all `pack` shards (with document boundaries) or none" in err and err.count("\n") == 1
    # validation is a stream of its own: pack training shards may be scored on another strategy's masks
    val = [str(p) for p in sorted(pydocs_shards.glob("val_*.arrow"))]
    summary = train(make_cfg(out, tmp_path / "val-split", max_steps=2, val_shards=tuple(val), val_interval=2))
    assert math.isfinite(summary["val_loss"])
