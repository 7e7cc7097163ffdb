"""Environment faults: a full disk (a small tmpfs the test mounts and fills) and a read-only output
directory (a tmpfs remounted read-only). `tokenize` and `shard` stop with one `error:` line naming
the output and the cause, leave nothing incomplete (no temporary files, no manifest), and the next
run after space is freed or the mount made writable succeeds with byte-identical output. Skipped,
with the reason, where the machine cannot mount a file system."""

from __future__ import annotations

import pytest

from faultkit import WIKI, assert_no_temp_files, bertprep, data_files, remount, repeat_file, tmpfs

DISK = "6m"
FILLER = (6 << 20) - (200 << 10)  # leaves 200 KiB: less than any run here writes (240-690 KiB)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return repeat_file(WIKI, tmp_path_factory.mktemp("env") / "docs.wiki.tokens", 4)


@pytest.fixture(scope="module")
def reference(corpus, token_store, tmp_path_factory):
    """Token store and shards of the corpus, written on a normal disk."""
    root = tmp_path_factory.mktemp("env-ref")
    r = bertprep("tokenize", corpus, "--out", root / "tokens", "--vocab", token_store / "vocab.txt")
    assert r.code == 0, r.err
    for fmt in ("arrow", "msgpack"):
        r = bertprep("shard", "--tokens", root / "tokens", "--out", root / fmt, "--format", fmt,
                     "--examples-per-shard", "500")
        assert r.code == 0, r.err
    return root


def commands(corpus, token_store, reference, out):
    return {
        "tokenize": ["tokenize", corpus, "--out", out, "--vocab", token_store / "vocab.txt"],
        "arrow": ["shard", "--tokens", reference / "tokens", "--out", out, "--examples-per-shard", "500"],
        "msgpack": ["shard", "--tokens", reference / "tokens", "--out", out, "--examples-per-shard", "500",
                    "--format", "msgpack"],
    }


def assert_nothing_incomplete(out) -> None:
    assert_no_temp_files(out)
    assert not [p for p in out.iterdir() if p.name.endswith("manifest.json")]


@pytest.mark.parametrize("what", ["tokenize", "arrow", "msgpack"])
def test_a_full_disk_is_one_line_and_the_run_after_freeing_space_succeeds(corpus, token_store, reference,
                                                                          tmp_path, what):
    with tmpfs(tmp_path / "disk", DISK) as disk:
        filler = disk / "filler"
        filler.write_bytes(bytes(FILLER))
        out = disk / "out"
        args = commands(corpus, token_store, reference, out)[what]
        line = bertprep(*args).one_error_line()
        assert str(out) in line and "no space left" in line, line
        assert_nothing_incomplete(out)
        filler.unlink()
        r = bertprep(*args)
        assert r.code == 0, r.err
        ref = reference / ("tokens" if what == "tokenize" else what)
        assert data_files(out) == data_files(ref)
        assert_no_temp_files(out)


@pytest.mark.parametrize("what", ["tokenize", "arrow"])
@pytest.mark.parametrize("exists", [True, False], ids=["out-exists", "out-missing"])
def test_a_read_only_output_directory_is_one_line_and_damages_nothing(corpus, token_store, reference, tmp_path,
                                                                      what, exists):
    with tmpfs(tmp_path / "disk", "16m") as disk:
        out = disk / "out"
        args = commands(corpus, token_store, reference, out)[what]
        if exists:  # a complete earlier run is there: a refused run must leave it as it was
            assert bertprep(*args).code == 0
        before = data_files(out) if exists else {}
        remount(disk, "ro")
        try:
            for extra in ([], ["--overwrite"]):
                line = bertprep(*args, *extra).one_error_line()
                assert str(out) in line and ("read-only" in line or "not writable" in line), line
            assert (data_files(out) if exists else {}) == before
        finally:
            remount(disk, "rw")
        r = bertprep(*args)
        assert r.code == 0, r.err
        ref = reference / ("tokens" if what == "tokenize" else what)
        assert data_files(out) == data_files(ref)
