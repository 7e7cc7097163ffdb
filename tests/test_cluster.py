"""`tokenize` and `shard` on a real Dask cluster (scheduler and worker processes on loopback) write
the same bytes as the local run, for 1 and 2 workers and with a worker killed mid-run (the task is
retried, no temporary file is left, nothing incomplete has a final name); the spans the input is
cut into read exactly as the whole file; a scheduler that does not answer, one without workers, a
worker that cannot see the input, and bad input found by a worker each give one error line; and
without --cluster Dask is never imported."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertprep.preprocess import corpus
from bertprep.shards.atomic import LOCK_NAME
from conftest import PLAIN, WIKI, run_cli

distributed = pytest.importorskip("distributed")

STORE_FILES = ("ids.bin", "sentences.bin", "documents.bin", "tokenizer.json", "vocab.txt", "manifest.json")
SHARD_OPTS = ("--max-len", "64", "--seed", "5", "--examples-per-shard", "300", "--dupe-factor", "3", "--nsp")


def same_files(a: Path, b: Path) -> None:
    """The same final-named files with the same bytes; and no temporary file left in `b`."""
    names = sorted(p.name for p in a.iterdir() if not p.name.startswith("."))
    assert names == sorted(p.name for p in b.iterdir() if not p.name.startswith("."))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert not [p.name for p in b.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    """Every input layout: WikiText, plain text, jsonl, parquet in several row groups, and a
    compressed file (which is one span)."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    words = PLAIN.read_text(encoding="utf-8").split()
    docs = [" ".join(rng.choice(words, rng.integers(5, 200))) + "." for _ in range(300)]
    (d / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs[:150]), encoding="utf-8")
    pq.write_table(pa.table({"text": docs[150:]}), d / "c.parquet", row_group_size=20)
    import gzip

    (d / "w.txt.gz").write_bytes(gzip.compress(PLAIN.read_bytes()[:20000]))
    return [WIKI, PLAIN, d / "c.jsonl", d / "c.parquet", d / "w.txt.gz"]


@pytest.fixture(scope="module")
def dask_cluster():
    """A running scheduler and two worker processes (each under a nanny that restarts it)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=":0", silence_logs=logging.CRITICAL) as cluster:
        yield cluster


def test_spans_read_exactly_as_the_whole_file(inputs, tmp_path, monkeypatch):
    # Small blocks and lines, so that spans start inside blocks and lines are cut across them.
    monkeypatch.setattr(corpus, "BLOCK", 4096)
    monkeypatch.setattr(corpus, "MAX_LINE", 1024)
    rng = np.random.default_rng(1)
    lines = []
    for _ in range(400):
        n = int(rng.choice([3, 40, 300, 2500, 9000]))
        lines.append(("word " * (n // 5)) if rng.random() < 0.8 else "x" * n)
        lines += [""] * int(rng.random() < 0.3) + ["  \r"] * int(rng.random() < 0.05)
    long_lines = tmp_path / "long.txt"
    long_lines.write_bytes("\n".join(lines).encode() + b"\xff\xfe bad\n\nend")

    def paragraphs(path, fmt, spans):
        stats, out, new_doc = corpus.ReadStats(), [], True
        for span in spans:
            for p in corpus.read_corpus(path, fmt, stats, span=span):
                if p is corpus.DOC_BREAK:
                    new_doc = True
                else:
                    out.append((p, new_doc))
                    new_doc = False
        return out, stats

    for path in [*inputs, long_lines]:
        fmt = corpus.detect_format(path)
        whole = paragraphs(path, fmt, [None])
        for target in (700, 5000, 1 << 30):
            spans = corpus.plan_spans(path, fmt, target)
            assert paragraphs(path, fmt, spans) == whole, (path.name, target)
        assert len(corpus.plan_spans(path, fmt, 700)) > (1 if path.suffix != ".gz" else 0), path.name


@pytest.mark.parametrize("workers", [1, 2])
def test_tokenize_on_a_local_cluster_is_byte_identical(inputs, tmp_path, workers, capsys):
    common = ["tokenize", *inputs, "--vocab-size", "500", "--label", "mixed"]
    assert run_cli([*common, "--out", tmp_path / "here"]) == 0
    assert run_cli([*common, "--out", tmp_path / "cluster", "--chunk-mb", "0.01", "--cluster", f"local:{workers}"]) == 0
    assert f"on a local cluster ({workers} worker" in capsys.readouterr().out
    same_files(tmp_path / "here", tmp_path / "cluster")
    assert sorted(p.name for p in (tmp_path / "cluster").iterdir() if p.name != LOCK_NAME) == sorted(STORE_FILES)


@pytest.mark.parametrize("workers", [1, 2])
def test_shard_on_a_local_cluster_is_byte_identical(token_store, tmp_path, workers):
    common = ["shard", "--tokens", token_store, *SHARD_OPTS]
    assert run_cli([*common, "--out", tmp_path / "here"]) == 0
    assert run_cli([*common, "--out", tmp_path / "cluster", "--cluster", f"local:{workers}"]) == 0
    same_files(tmp_path / "here", tmp_path / "cluster")
    assert len(list((tmp_path / "cluster").glob("train_*.arrow"))) > 4
    assert run_cli(["verify", tmp_path / "cluster"]) == 0


def test_msgpack_shards_on_a_running_scheduler(token_store, tmp_path, dask_cluster):
    common = ["shard", "--tokens", token_store, *SHARD_OPTS, "--format", "msgpack", "--whole-word"]
    assert run_cli([*common, "--out", tmp_path / "here"]) == 0
    assert run_cli([*common, "--out", tmp_path / "cluster", "--cluster", dask_cluster.scheduler_address]) == 0
    same_files(tmp_path / "here", tmp_path / "cluster")


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory) -> Path:
    """The test slice 16 times over (2.6 MB, 580k tokens): enough tasks to kill a worker in one."""
    path = tmp_path_factory.mktemp("big") / "docs.wiki.tokens"
    path.write_bytes(WIKI.read_bytes() * 16)
    return path


def _kill_a_busy_worker(address: str, prefix: str, running: threading.Thread) -> bool:
    """SIGKILL the process of a worker while it executes one of our tasks; True when one was hit."""
    with distributed.Client(address, set_as_default=False) as client:
        while running.is_alive():
            busy = client.run(lambda dask_worker: [str(ts.key) for ts in dask_worker.state.executing])
            for worker, keys in busy.items():
                if any(k.startswith(prefix) for k in keys):
                    os.kill(client.run(os.getpid, workers=[worker])[worker], signal.SIGKILL)
                    return True
            time.sleep(0.005)
    return False


@pytest.mark.parametrize("command", ["tokenize", "shard"])
def test_a_worker_killed_mid_run_changes_nothing(command, big_corpus, token_store, tmp_path, dask_cluster):
    vocab = token_store / "vocab.txt"
    if command == "tokenize":
        args = ["tokenize", big_corpus, "--vocab", vocab, "--chunk-mb", "0.2"]
    else:
        tokens = tmp_path / "tokens"
        assert run_cli(["tokenize", big_corpus, "--vocab", vocab, "--out", tokens]) == 0
        args = ["shard", "--tokens", tokens, "--max-len", "64", "--seed", "5", "--examples-per-shard", "500",
                "--dupe-factor", "4", "--whole-word"]
    assert run_cli([*args, "--out", tmp_path / "here"]) == 0
    codes = []
    run = threading.Thread(target=lambda: codes.append(
        run_cli([*args, "--out", tmp_path / "cluster", "--cluster", dask_cluster.scheduler_address])))
    run.start()
    hit = _kill_a_busy_worker(dask_cluster.scheduler_address, f"bertprep-{command}-", run)
    run.join(120)
    assert hit and codes == [0]
    same_files(tmp_path / "here", tmp_path / "cluster")


def test_cluster_problems_are_one_line_and_exit_2(tmp_path, token_store, dask_cluster, capsys):
    vocab = token_store / "vocab.txt"
    fd = os.open(PLAIN, os.O_RDONLY)
    os.dup2(fd, 777)  # /proc/self/fd/777: a path that only this process (the driver) can see
    os.close(fd)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "Fine words here."}\n' * 300 + '{"nope": 1}\n')
    with distributed.LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=":0",
                                  silence_logs=logging.CRITICAL) as empty:
        cases = [
            (["--cluster", "tcp://127.0.0.1:9", "--cluster-timeout", "1"], PLAIN, "no Dask scheduler answered"),
            (["--cluster", empty.scheduler_address, "--cluster-timeout", "1"], PLAIN, "has no workers"),
            (["--cluster", "local:0"], PLAIN, "local:N needs"),
            (["--cluster", dask_cluster.scheduler_address, "--label", "x"], Path("/proc/self/fd/777"),
             "cannot see /proc/self/fd/777"),
            (["--cluster", dask_cluster.scheduler_address, "--chunk-mb", "0.001"], bad, "bad.jsonl:301: no string field"),
        ]
        try:
            for extra, corpus_file, needle in cases:
                out = tmp_path / f"out{len(needle)}"
                capsys.readouterr()
                code = run_cli(["tokenize", corpus_file, "--vocab", vocab, "--out", out, *extra])
                err = capsys.readouterr().err.strip()
                assert code == 2 and len(err.splitlines()) == 1 and needle in err, (extra, err)
                assert not (out / "manifest.json").exists()
                assert not out.exists() or not [p for p in out.iterdir() if p.name.endswith(".tmp")]
        finally:
            os.close(777)
    assert run_cli(["shard", "--tokens", token_store, "--out", tmp_path / "s", "--cluster", "tcp://127.0.0.1:9",
                    "--cluster-timeout", "1"]) == 2


def test_without_dask_installed_the_error_says_how_to_get_it(tmp_path, token_store, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now raises ImportError
    assert run_cli(["tokenize", PLAIN, "--vocab", token_store / "vocab.txt", "--out", tmp_path / "t",
                    "--cluster", "local:1"]) == 2
    assert "pip install -e '.[cluster]'" in capsys.readouterr().err


def test_without_cluster_dask_is_never_imported(tmp_path, token_store):
    code = f"""
import sys
from bertprep.cli import main
for args in (["tokenize", {str(PLAIN)!r}, "--vocab", {str(token_store / 'vocab.txt')!r}, "--out", {str(tmp_path / 't')!r}],
             ["shard", "--tokens", {str(tmp_path / 't')!r}, "--out", {str(tmp_path / 's')!r}, "--workers", "1"]):
    try:
        main(args)
    except SystemExit as e:
        assert not e.code, e.code
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed"))
assert not bad, bad
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_a_worker_with_other_versions_or_another_file_is_named(tmp_path):
    from bertprep.preprocess import cluster

    probe = tmp_path / ".probe.tmp"
    probe.write_text("token")
    same = cluster.versions()
    assert cluster.worker_view({str(PLAIN): PLAIN.stat().st_size}, str(probe), "token", same) == []
    problems = cluster.worker_view({str(PLAIN): 5, str(tmp_path / "gone"): 1}, str(probe), "other",
                                   dict(same, numpy="0.0"))
    assert [p.split(" ")[0] for p in problems] == ["sees", "cannot", "cannot", "runs"]
    assert "numpy" in problems[-1] and "0.0" in problems[-1]
