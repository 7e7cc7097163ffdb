"""Issue 18 items 5, 6, 7: what `tokenize` does to its --out.
- It never writes over an input: a --vocab (or --tokenizer) that is --out's own vocab.txt (or
  tokenizer.json) is refused with one line when the run would write other bytes there, and left
  untouched (same inode, same bytes) when it would write the same; a corpus file that is one of
  the store's files is refused.
- --overwrite replaces the old store only once the new one is complete: a run that fails on bad
  input, or is killed mid-run, leaves the old store byte-identical and usable.
- Two runs into one --out: the second is refused by the lock (shared with `shard`) and the first,
  its temporary files untouched, finishes byte-identical to a run alone. Temporary files of a live
  process are never removed as stale."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from bertprep.shards.atomic import remove_stale_temps, temp_name
from bertprep.shards.tokenstore import open_token_store
from faultkit import PLAIN, WIKI, assert_no_temp_files, bertprep, data_files, finish, repeat_file, start


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    """The test slice of the Python docs 48 times over (8 MB): about a second to tokenize."""
    return repeat_file(WIKI, tmp_path_factory.mktemp("corpus") / "docs.wiki.tokens", 48)


def wait_for_temp(out, p, name="ids.bin"):
    """Wait until the run `p` writes its temporary `name` in `out` (it then holds the lock)."""
    deadline = time.monotonic() + 60
    while not (out.is_dir() and any(f.startswith(f".{name}.") and f.endswith(".tmp") for f in os.listdir(out))):
        assert p.poll() is None and time.monotonic() < deadline, "the run ended before writing"
        time.sleep(0.005)


# ---- item 5: never write over an input ---------------------------------------------------------

def test_a_vocab_that_is_outs_own_vocab_txt_with_other_bytes_is_refused(token_store, tmp_path):
    out = tmp_path / "tokens"
    out.mkdir()
    mine = (token_store / "vocab.txt").read_text().replace("\n", "\r\n")  # the same ids, other bytes
    (out / "vocab.txt").write_text(mine, newline="")
    before = data_files(out)
    r = bertprep("tokenize", PLAIN, "--vocab", out / "vocab.txt", "--out", out)
    line = r.one_error_line()
    assert str(out / "vocab.txt") in line and "--vocab" in line, line
    assert data_files(out) == before
    assert_no_temp_files(out)


def test_a_vocab_that_is_outs_own_vocab_txt_with_the_same_bytes_is_left_untouched(token_store, tmp_path):
    out = tmp_path / "tokens"
    out.mkdir()
    vocab = shutil.copyfile(token_store / "vocab.txt", out / "vocab.txt")
    os.utime(vocab, (1_000_000_000, 1_000_000_000))
    before = os.stat(vocab)
    for extra in ([], ["--overwrite"]):  # a first run, then a re-run over its own store
        r = bertprep("tokenize", PLAIN, "--vocab", vocab, "--out", out, *extra)
        assert r.code == 0, r.err
        after = os.stat(vocab)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert vocab.read_bytes() == (token_store / "vocab.txt").read_bytes()
    open_token_store(out)


def test_a_tokenizer_that_is_outs_own_tokenizer_json_is_left_untouched(token_store, tmp_path):
    out = shutil.copytree(token_store, tmp_path / "tokens")
    tok = out / "tokenizer.json"
    before = os.stat(tok)
    r = bertprep("tokenize", PLAIN, "--tokenizer", tok, "--out", out, "--overwrite")
    assert r.code == 0, r.err
    assert os.stat(tok).st_ino == before.st_ino and tok.read_bytes() == (token_store / "tokenizer.json").read_bytes()
    open_token_store(out)


def test_a_corpus_file_that_is_one_of_the_stores_files_is_refused(token_store, tmp_path):
    out = tmp_path / "tokens"
    out.mkdir()
    shutil.copyfile(PLAIN, out / "ids.bin")
    before = data_files(out)
    r = bertprep("tokenize", out / "ids.bin", "--format", "text", "--vocab", token_store / "vocab.txt", "--out", out)
    assert str(out / "ids.bin") in r.one_error_line()
    assert data_files(out) == before


# ---- item 6: --overwrite swaps at the end ------------------------------------------------------

def test_a_failing_overwrite_leaves_the_old_store_intact(token_store, tmp_path):
    out = shutil.copytree(token_store, tmp_path / "tokens")
    before = data_files(out)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "A fine first document."}\n' * 50 + '{"nope": 1}\n')
    r = bertprep("tokenize", bad, "--out", out, "--overwrite", "--vocab-size", "500")  # fails after the vocab
    assert "bad.jsonl:51" in r.one_error_line()
    assert data_files(out) == before
    assert_no_temp_files(out)
    open_token_store(out)


def test_a_killed_overwrite_leaves_the_old_store_intact(token_store, big_corpus, tmp_path):
    out = shutil.copytree(token_store, tmp_path / "tokens")
    before = data_files(out)
    p = start("tokenize", big_corpus, "--out", out, "--overwrite", "--vocab", token_store / "vocab.txt",
              "--workers", "1")
    wait_for_temp(out, p)
    os.kill(p.pid, signal.SIGKILL)
    finish(p, timeout=60)
    assert data_files(out) == before
    open_token_store(out)
    r = bertprep("tokenize", big_corpus, "--out", out, "--overwrite", "--vocab", token_store / "vocab.txt")
    assert r.code == 0, r.err  # the re-run replaces it, and removes what the killed run left
    assert_no_temp_files(out)
    assert open_token_store(out).manifest["run"]["inputs"][0]["path"] == str(big_corpus)


# ---- item 7: one run per --out ------------------------------------------------------------------

def test_a_second_run_into_the_same_out_is_refused_and_the_first_finishes(token_store, big_corpus, tmp_path):
    args = ["tokenize", big_corpus, "--vocab", token_store / "vocab.txt", "--workers", "1"]
    ref = bertprep(*args, "--out", tmp_path / "ref")
    assert ref.code == 0, ref.err
    out = tmp_path / "tokens"
    first = start(*args, "--out", out)
    try:
        wait_for_temp(out, first)
        os.kill(first.pid, signal.SIGSTOP)
        temps = sorted(f for f in os.listdir(out) if f.endswith(".tmp"))
        second = bertprep(*args, "--out", out)
        overwrite = bertprep(*args, "--out", out, "--overwrite", "--label", "other")
        shard = bertprep("shard", "--tokens", tmp_path / "ref", "--out", out)
        assert sorted(f for f in os.listdir(out) if f.endswith(".tmp")) == temps  # nothing of the first removed
    finally:
        os.kill(first.pid, signal.SIGCONT)
    for r in (second, overwrite, shard):
        assert "another bertprep tokenize run is writing here" in r.one_error_line()
    r = finish(first)
    assert r.code == 0, r.err
    assert data_files(out) == data_files(tmp_path / "ref")
    assert_no_temp_files(out)


def test_temporaries_of_a_live_process_are_never_removed_as_stale(tmp_path):
    live = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        mine = tmp_path / f".ids.bin.{live.pid}.tmp"
        theirs = tmp_path / f".ids.bin.{dead.pid}.tmp"
        ours = temp_name(tmp_path / "vocab.txt")  # this process's
        piece = tmp_path / ".piece-0a1b2c-000001-deadbeef.tmp"  # a finished task's piece of a run that is over
        for p in (mine, theirs, ours, piece):
            p.write_bytes(b"x")
        assert remove_stale_temps(tmp_path) == 2
        assert mine.exists() and ours.exists() and not theirs.exists() and not piece.exists()
    finally:
        live.kill()
        live.wait()
