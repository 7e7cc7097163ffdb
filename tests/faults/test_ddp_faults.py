"""DDP faults, run as users run them: a real `torchrun --nproc-per-node 2` of trainer/run.py on CPU
(gloo), each under a timeout. A rank killed mid-run (SIGKILL from outside, its pid found by its
RANK) makes torchrun end the whole group within seconds and name that rank as the root cause, and
the last checkpoint still loads; a hung rank (SIGSTOP) makes the other give up after
--dist-timeout; a rank given fewer shard files than the other (a machine with an incomplete copy)
is refused by both ranks with one line instead of training on other data; a bad shard that one
rank's share of the start-up check finds stops both ranks at once."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bertprep.shards.arrow_ipc import ArrowShardWriter
from bertprep.trainer import checkpoint as ckpt_io
from bertprep.trainer.synthetic import synthetic_columns, synthetic_meta, write_synthetic_shards
from faultkit import finish, kill_group, start

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
FLAGS = ["--batch-size", "8", "--model", "tiny", "--hidden", "32", "--heads", "2", "--ffn", "64", "--lr", "3e-3",
         "--warmup-steps", "3", "--log-interval", "1", "--val-interval", "0", "--seed", "3", "--no-tensorboard",
         "--quiet"]
BOUND_S = 60  # a fault must end the whole group within this; hanging until the test's timeout fails


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> Path:
    """One big file and three small ones (3 examples: none for either rank at batch 8)."""
    folder = tmp_path_factory.mktemp("ddp-faults")
    write_synthetic_shards(folder, rows=[400, 3, 9, 40])
    return folder


def torchrun(script: Path, folder: Path, out: Path, *extra):
    args = ["--shards", *sorted(folder.glob("train_*")), "--out", out, *FLAGS, *extra]
    return start(script, *args, command=TORCHRUN)


def workers(p) -> dict[int, int]:
    """{rank: pid} of the workers torchrun started (its children, each in a session of its own)."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            env = Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        ranks = [int(v[5:]) for v in env if v.startswith(b"RANK=")]
        if ppid == p.pid and ranks:
            found[ranks[0]] = int(entry.name)
    assert sorted(found) == [0, 1], f"torchrun's workers: {found}"
    return found


def end(p, pids) -> None:
    """SIGKILL torchrun's group and the workers it started (in sessions of their own), if still there."""
    kill_group(p.pid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_for_step(p, out: Path, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            lines = (out / "metrics.jsonl").read_text().splitlines()
        except FileNotFoundError:
            lines = []
        if any(f'"step": {step},' in line for line in lines):
            return
        assert p.poll() is None, f"torchrun ended (exit {p.returncode}) before step {step}"
        assert time.monotonic() < deadline, f"no step {step} after {timeout}s"
        time.sleep(0.05)


def gone_within(pid: int, seconds: float) -> float:
    """Seconds until `pid` has exited (a zombie counts as exited); fails after `seconds`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return time.monotonic() - t0
        if state == "Z":
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still running {seconds}s after the fault (a hang)")


def test_a_killed_rank_ends_the_group_quickly_naming_it(uneven, tmp_path):
    out = tmp_path / "run"
    p = torchrun(ROOT / "trainer" / "run.py", uneven, out, "--max-steps", 100_000, "--ckpt-interval", 4)
    pids = {}
    try:
        wait_for_step(p, out, 6)
        pids = workers(p)
        os.kill(pids[1], signal.SIGKILL)
        gone_within(pids[0], BOUND_S)
        r = finish(p, timeout=BOUND_S)
    finally:
        end(p, pids.values())
    assert r.code != 0
    assert "Root Cause" in r.err and "rank      : 1" in r.err and "SIGKILL" in r.err, r.err[-3000:]
    ck = ckpt_io.load(ckpt_io.newest(out))  # whatever was running, the newest complete checkpoint loads
    assert ck["step"] >= 4 and len(ck["rng"]["torch"]) == 2


def test_a_hung_rank_makes_the_other_give_up_after_the_collective_timeout(uneven, tmp_path):
    out = tmp_path / "run"
    p = torchrun(ROOT / "trainer" / "run.py", uneven, out, "--max-steps", 100_000, "--ckpt-interval", 1000,
                 "--dist-timeout", 5)
    pids = {}
    try:
        wait_for_step(p, out, 3)
        pids = workers(p)
        os.kill(pids[1], signal.SIGSTOP)
        waited = gone_within(pids[0], BOUND_S)
    finally:
        end(p, pids.values())  # torchrun would SIGKILL the stopped rank after its own 30 s grace
    r = finish(p, timeout=BOUND_S)
    assert 3 < waited < 5 + 30, waited
    assert "Timed out waiting 5000ms" in r.err, r.err[-3000:]


# A torchrun entry point that gives rank 1 only the first training file: a machine whose copy of
# the shards is incomplete (torchrun gives every rank the same arguments, so a wrapper does it).
FEWER_FILES = """
import os, sys
from bertprep.trainer import run

args = sys.argv[1:]
if os.environ["RANK"] == "1":
    start = args.index("--shards") + 1
    end = next(i for i in range(start, len(args)) if args[i].startswith("--"))
    args = args[:start + 1] + args[end:]
sys.exit(run.main(args))
"""


def one_line_per_rank(err: str, expected: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 2 and all(expected in line for line in lines), err[-3000:]
    assert "[rank0]" not in err and "[rank1]" not in err, err[-3000:]  # no worker traceback


def test_a_rank_given_fewer_shard_files_is_refused_by_both(uneven, tmp_path):
    script = tmp_path / "fewer_files.py"
    script.write_text(FEWER_FILES)
    p = torchrun(script, uneven, tmp_path / "run", "--max-steps", 50)
    r = finish(p, timeout=120)
    assert r.code != 0
    one_line_per_rank(r.err, "rank 1 was given 1 shard file(s) of 400 examples, rank 0 4 of 452")


def test_a_bad_shard_in_one_ranks_share_of_the_check_stops_both(tmp_path):
    """The start-up check gives each rank of a machine half of the files: rank 1 finds the id
    outside the vocab in the second file, rank 0 learns of it through one all-reduce."""
    folder = tmp_path / "shards"
    write_synthetic_shards(folder, rows=[64])
    meta = synthetic_meta(max_len=32, vocab_size=64, nsp=False)
    cols = synthetic_columns(np.random.default_rng(1), 64, meta)
    cols["input_ids"][5, 2] = 999
    bad = folder / "train_syn_32_1_00001.arrow"
    w = ArrowShardWriter(bad, meta)
    w.write(cols)
    w.close()
    p = torchrun(ROOT / "trainer" / "run.py", folder, tmp_path / "run", "--max-steps", 50)
    r = finish(p, timeout=120)
    assert r.code != 0
    errors = [line for line in r.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, r.err[-3000:]
    assert any(bad.name in e and "example 5: token id outside the vocab" in e for e in errors), errors
    assert any("another rank refused a shard file" in e for e in errors), errors
    assert not (tmp_path / "run" / "checkpoints").exists()
