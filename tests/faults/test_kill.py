"""Kills and concurrent runs: `bertprep tokenize` and `bertprep shard` killed with SIGKILL at seeded
random moments leave no incomplete file under a final name, leave no process behind, and the
re-run is byte-identical to an uninterrupted run; two `shard` runs into one directory at once:
the second is refused by the lock and neither output is damaged."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from faultkit import (TRAINER, WIKI, assert_no_temp_files, bertprep, data_files, finish, group_alive, kill_group,
                      repeat_file, start)

SHARD_OPTS = ("--max-len", "64", "--seed", "5", "--examples-per-shard", "250", "--workers", "2",
              "--dupe-factor", "2", "--whole-word")
KILLS = 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The test slice of the Python docs eight times over (1.3 MB): sharding it lasts a second or two."""
    return repeat_file(WIKI, tmp_path_factory.mktemp("corpus") / "docs.wiki.tokens", 8)


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    """48 times over (8 MB): the native tokenizer needs about a second for it."""
    return repeat_file(WIKI, tmp_path_factory.mktemp("corpus") / "docs.wiki.tokens", 48)


@pytest.fixture(scope="module")
def tokens_ref(corpus, token_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "tokens"
    r = bertprep("tokenize", corpus, "--out", out, "--vocab", token_store / "vocab.txt")
    assert r.code == 0, r.err
    return out, r.seconds


@pytest.fixture(scope="module")
def shards_ref(tokens_ref, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "shards"
    r = bertprep("shard", "--tokens", tokens_ref[0], "--out", out, *SHARD_OPTS)
    assert r.code == 0, r.err
    return out, r.seconds


def kill_repeatedly(args: list, out, reference: dict, seconds: float, seed: int) -> list[int]:
    """Start `args` KILLS times, SIGKILL the process after a seeded random delay, and check what it
    leaves: every file with a final name is byte-identical to the uninterrupted run's (so complete),
    and the next run is never refused by a lock the killed one held. Returns the killed process groups."""
    rng = random.Random(seed)
    killed = []
    for i in range(KILLS):
        p = start(*args)
        time.sleep(rng.uniform(0.2, 1.1) * seconds)  # from start-up to (rarely) after the end
        os.kill(p.pid, signal.SIGKILL)  # the main process only: its workers must notice by themselves
        r = finish(p, timeout=60, reap=False)
        killed.append(p.pid)
        assert "another bertprep shard run" not in r.err, f"run {i} refused by the lock of a killed run"
        for name, data in data_files(out).items():
            assert name in reference, f"kill {i}: unexpected file {name}"
            assert data == reference[name], f"kill {i} (exit {r.code}): {name} is incomplete or wrong"
    return killed


def assert_nothing_lives_on(groups: list[int]) -> None:
    """No process of a killed run (a pool worker, say) may outlive it for long."""
    deadline = time.monotonic() + 10
    while any(group_alive(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphans = [g for g in groups if group_alive(g)]
    for g in orphans:
        kill_group(g)
    assert not orphans, "worker processes outlived the killed run"


def test_killed_tokenize_leaves_nothing_half_written_and_rerun_is_identical(big_corpus, token_store, tmp_path):
    args = ["tokenize", big_corpus, "--vocab", token_store / "vocab.txt"]
    ref = bertprep(*args, "--out", tmp_path / "ref")
    assert ref.code == 0, ref.err
    out = tmp_path / "tokens"
    killed = kill_repeatedly(args + ["--out", out], out, data_files(tmp_path / "ref"), ref.seconds, seed=7)
    r = bertprep(*args, "--out", out)
    assert r.code == 0, r.err
    assert_nothing_lives_on(killed)
    assert data_files(out) == data_files(tmp_path / "ref")
    assert_no_temp_files(out)


def test_killed_tokenize_while_training_a_vocab(corpus, tmp_path):
    r = bertprep("tokenize", corpus, "--out", tmp_path / "ref", "--vocab-size", "1000")
    assert r.code == 0, r.err
    args = ["tokenize", corpus, "--out", tmp_path / "tokens", "--vocab-size", "1000"]
    kill_repeatedly(args, tmp_path / "tokens", data_files(tmp_path / "ref"), r.seconds, seed=11)
    assert bertprep(*args).code == 0
    assert data_files(tmp_path / "tokens") == data_files(tmp_path / "ref")


def test_killed_shard_leaves_nothing_half_written_and_rerun_is_identical(tokens_ref, shards_ref, tmp_path):
    ref, seconds = shards_ref
    out = tmp_path / "shards"
    args = ["shard", "--tokens", tokens_ref[0], "--out", out, *SHARD_OPTS]
    killed = kill_repeatedly(args, out, data_files(ref), seconds, seed=3)
    r = bertprep(*args)  # at once: a worker of a killed run must not keep the lock
    assert r.code == 0, r.err
    assert_nothing_lives_on(killed)
    assert data_files(out) == data_files(ref)
    assert_no_temp_files(out)
    assert bertprep("verify", out).code == 0


def test_the_parts_of_a_killed_shard_run_are_refused_until_it_is_re_run(tokens_ref, shards_ref, tmp_path):
    """Killed after its first part got its final name and before the manifest: `verify` and the
    trainer refuse that part (the run is unfinished), and a re-run completes it."""
    out = tmp_path / "shards"
    args = ["shard", "--tokens", tokens_ref[0], "--out", out, *SHARD_OPTS]
    p = start(*args)
    deadline = time.monotonic() + 60
    while not (out.is_dir() and any(n.startswith("train_") for n in os.listdir(out))):
        assert p.poll() is None and time.monotonic() < deadline, "the run ended before writing a part"
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGKILL)
    finish(p, timeout=60, reap=False)
    assert_nothing_lives_on([p.pid])
    part = sorted(out.glob("train_*"))[0]
    assert not list(out.glob("*.manifest.json"))
    for r in (bertprep("verify", part), start_trainer(part, tmp_path / "run")):
        assert part.name in r.one_error_line() and "unfinished shard run" in r.one_error_line()
    assert not (tmp_path / "run").exists()
    assert bertprep(*args).code == 0
    assert data_files(out) == data_files(shards_ref[0])


def start_trainer(part, out):
    return finish(start("--shards", part, "--out", out, "--model", "tiny", "--max-steps", "1", command=TRAINER))


def test_second_shard_run_into_the_same_directory_is_refused_by_the_lock(tokens_ref, shards_ref, tmp_path):
    ref = data_files(shards_ref[0])
    out = tmp_path / "shards"
    args = ["shard", "--tokens", tokens_ref[0], "--out", out, *SHARD_OPTS]
    first = start(*args)
    deadline = time.monotonic() + 60
    # The first run writes only while it holds the lock: once a file appears, hold it there.
    while not (out.is_dir() and [p for p in os.listdir(out) if p != ".bertprep.lock"]):
        assert first.poll() is None and time.monotonic() < deadline, "first run ended before writing"
        time.sleep(0.01)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = bertprep(*args)
        other_seed = bertprep(*args, "--seed", "6", "--overwrite")
    finally:
        os.kill(first.pid, signal.SIGCONT)
    for r in (second, other_seed):
        assert "another bertprep shard run is writing here" in r.one_error_line()
    r = finish(first)
    assert r.code == 0, r.err
    assert data_files(out) == ref


def test_two_shard_runs_started_at_once_damage_nothing(tokens_ref, shards_ref, tmp_path):
    out = tmp_path / "shards"
    args = ["shard", "--tokens", tokens_ref[0], "--out", out, *SHARD_OPTS]
    runs = [finish(p) for p in [start(*args), start(*args)]]
    codes = sorted(r.code for r in runs)
    assert codes in ([0, 0], [0, 2]), [r.err for r in runs]  # [0, 0] only if one ended before the other began
    for r in runs:
        if r.code == 2:
            assert "another bertprep shard run is writing here" in r.one_error_line()
    assert data_files(out) == data_files(shards_ref[0])
    assert_no_temp_files(out)
