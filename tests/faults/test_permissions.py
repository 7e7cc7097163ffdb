"""Permission denied: an unreadable corpus, token store or shard, and an output directory the user may
not write, are one `error:` line naming the path, exit 2, with nothing written and nothing of the
user's changed. Tests run as root here, and root reads and writes everything: each command runs
without the capabilities that let root ignore file modes (setpriv drops CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH from its bounding set), so file modes apply as they do to any user. Skipped,
with the reason, where setpriv is missing or cannot drop them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from faultkit import BERTPREP, TRAINER, WIKI, data_files, finish, start

DROP = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.fixture(scope="module")
def unprivileged():
    if os.geteuid() != 0:
        return []  # file modes already apply to this user
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv(1) is missing: cannot run a command without root's file-mode override")
    probe = subprocess.run([*DROP, sys.executable, "-c", "pass"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop root's file-mode capabilities here ({probe.stderr.strip()})")
    return DROP


def run(prefix, command, *args):
    return finish(start(*args, command=prefix + command))


@pytest.fixture
def world(token_store, tmp_path):
    """A private copy of the token store, its shards, and an unwritable directory."""
    tokens = shutil.copytree(token_store, tmp_path / "tokens")
    r = finish(start("shard", "--tokens", tokens, "--out", tmp_path / "shards", "--max-len", "64"))
    assert r.code == 0, r.err
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    yield {"tokens": tokens, "shards": tmp_path / "shards", "locked": locked}
    locked.chmod(0o755)


def unreadable(path):
    path.chmod(0o000)
    return path


def test_an_unreadable_corpus(unprivileged, world, tmp_path):
    corpus = unreadable(shutil.copy(WIKI, tmp_path / "corpus.txt"))
    line = run(unprivileged, BERTPREP, "tokenize", corpus, "--out", tmp_path / "t",
               "--vocab", world["tokens"] / "vocab.txt").one_error_line()
    assert "corpus.txt" in line and ("ermission denied" in line or "not readable" in line), line
    assert not (tmp_path / "t").exists()


def test_an_unreadable_token_store(unprivileged, world, tmp_path):
    unreadable(world["tokens"] / "ids.bin")
    line = run(unprivileged, BERTPREP, "shard", "--tokens", world["tokens"], "--out", tmp_path / "s").one_error_line()
    assert "ids.bin" in line and "ermission denied" in line, line
    assert not data_files(tmp_path / "s")


def test_an_unreadable_shard(unprivileged, world):
    shard = unreadable(sorted(world["shards"].glob("train_*"))[0])
    for args in (["verify", shard], ["inspect", shard]):
        line = run(unprivileged, BERTPREP, *args).one_error_line()
        assert shard.name in line and ("ermission denied" in line or "not readable" in line), line


@pytest.mark.parametrize("what", ["tokenize", "shard", "train"])
def test_an_output_directory_the_user_may_not_write(unprivileged, world, what):
    out = world["locked"] / "out"
    args = {"tokenize": (BERTPREP, "tokenize", WIKI, "--out", out, "--vocab", world["tokens"] / "vocab.txt"),
            "shard": (BERTPREP, "shard", "--tokens", world["tokens"], "--out", out),
            "train": (TRAINER, "--shards", *sorted(world["shards"].glob("train_*")), "--out", out, "--model", "tiny",
                      "--max-steps", "1", "--no-tensorboard")}[what]
    line = run(unprivileged, *args).one_error_line()
    assert "locked" in line and ("ermission denied" in line or "not writable" in line), line
    assert not out.exists()
