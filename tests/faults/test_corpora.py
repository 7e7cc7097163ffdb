"""Bad corpora, generated here: empty and blank files, NUL bytes, a 200 MB single line with no
newline (memory stays flat), mixed encodings and invalid UTF-8, Windows line endings, broken
compressed files, a document of one token, a corpus smaller than one example. Each gets what the
README documents (one `error:` line and exit 2, or a counted, reported replacement or skip) and
nothing hangs: every run is a real process with a timeout."""

from __future__ import annotations

import bz2
import gzip
import json

import pytest
import zstandard

from faultkit import PLAIN, WIKI, bertprep

TIMEOUT = 60


@pytest.fixture(scope="module")
def vocab(token_store):
    return token_store / "vocab.txt"


def tokenize(*inputs, out, vocab, extra=()):
    return bertprep("tokenize", *inputs, "--out", out, "--vocab", vocab, *extra, timeout=TIMEOUT)


def store_bytes(out) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in ("ids.bin", "sentences.bin", "documents.bin")}


def counts(out) -> dict:
    return json.loads((out / "manifest.json").read_text())["counts"]


def assert_nothing_complete(out):
    """No store that looks complete, and no temporary file left behind."""
    assert not (out / "manifest.json").exists()
    assert not out.exists() or not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_empty_blank_and_nul_files_are_refused_with_one_line(tmp_path, vocab):
    cases = {
        "empty.txt": (b"", "empty file"),
        "nul.txt": (bytes(1 << 20), "binary"),
        "nul-after-bom.txt": (b"\xef\xbb\xbf" + bytes(4096), "binary"),
    }
    for name, (data, needle) in cases.items():
        (tmp_path / name).write_bytes(data)
        out = tmp_path / f"out-{name}"
        for inputs in ([tmp_path / name], [PLAIN, tmp_path / name]):  # alone, and after a good file
            line = tokenize(*inputs, out=out, vocab=vocab).one_error_line()
            assert name in line and needle in line, line
            assert_nothing_complete(out)


def test_a_blank_corpus_is_refused_and_a_blank_file_among_others_adds_nothing(tmp_path, vocab):
    (tmp_path / "blank.txt").write_bytes(b"\n \n\t\n\r\n" * 1000)
    line = tokenize(tmp_path / "blank.txt", out=tmp_path / "a", vocab=vocab).one_error_line()
    assert "no text" in line
    assert_nothing_complete(tmp_path / "a")
    assert tokenize(PLAIN, tmp_path / "blank.txt", out=tmp_path / "b", vocab=vocab).code == 0
    assert tokenize(PLAIN, out=tmp_path / "c", vocab=vocab).code == 0
    assert store_bytes(tmp_path / "b") == store_bytes(tmp_path / "c")


def test_nul_bytes_past_the_first_block_are_dropped_like_control_characters(tmp_path, vocab):
    text = PLAIN.read_bytes()
    with_nuls = text[:20000] + b"\0\0\0" + text[20000:40000] + b"\0" + text[40000:]
    (tmp_path / "nuls.txt").write_bytes(with_nuls)
    (tmp_path / "clean.txt").write_bytes(text)
    assert tokenize(tmp_path / "nuls.txt", out=tmp_path / "a", vocab=vocab).code == 0
    assert tokenize(tmp_path / "clean.txt", out=tmp_path / "b", vocab=vocab).code == 0
    assert store_bytes(tmp_path / "a") == store_bytes(tmp_path / "b")


def _write_one_line(path, size: int) -> None:
    """`size` bytes of real text (Shakespeare, newlines made spaces) and not one newline, streamed."""
    piece = PLAIN.read_bytes().replace(b"\r", b" ").replace(b"\n", b" ")
    with open(path, "wb") as f:
        written = 0
        while written < size:
            chunk = piece[: size - written]
            f.write(chunk)
            written += len(chunk)


def test_a_200_mb_line_without_newline_is_read_in_flat_memory(tmp_path, vocab):
    """The reader cuts lines over 1 MiB at a space; peak memory must not follow the line's length."""
    peaks = {}
    for size in (20_000_000, 200_000_000):
        corpus = tmp_path / f"line{size}.txt"
        _write_one_line(corpus, size)
        r = tokenize(corpus, out=tmp_path / f"out{size}", vocab=vocab)
        assert r.code == 0, r.err
        c = counts(tmp_path / f"out{size}")
        assert c["bytes_read"] == size and c["documents"] == 1 and c["lines_cut"] >= size // (1 << 20)
        peaks[size] = r.peak_rss
        corpus.unlink()
    small, big = peaks[20_000_000], peaks[200_000_000]
    assert big < 500 << 20, f"peak RSS {big >> 20} MiB for a 200 MB line"
    assert big < small + (64 << 20), f"peak RSS grew from {small >> 20} to {big >> 20} MiB with the line"


def test_mixed_encodings_and_invalid_utf8_are_replaced_and_counted(tmp_path, vocab):
    data = (
        b"\xef\xbb\xbfA UTF-8 line with caf\xc3\xa9 and na\xc3\xafve words.\n"  # BOM, valid accents
        b"A Latin-1 line with caf\xe9 and na\xefve words.\n"                      # 2 invalid bytes
        b"A CP1252 line with \x93smart quotes\x94 and a \x96 dash.\n"               # 3 invalid bytes
        b"Overlong \xc0\xaf slash and a surrogate \xed\xa0\x80 here.\n"            # 2 + 3
        b"\n"
        b"A second document, UTF-16 would hold NULs but this is fine.\n"
        b"It ends in a cut sequence \xe2\x82"                                       # 1, no newline at the end
    )
    (tmp_path / "mixed.txt").write_bytes(data)
    r = tokenize(tmp_path / "mixed.txt", out=tmp_path / "out", vocab=vocab)
    assert r.code == 0, r.err
    expected = data.decode("utf-8", "replace").count("\ufffd")
    assert expected == 11
    c = counts(tmp_path / "out")
    assert c["invalid_utf8"] == expected and c["documents"] == 2
    assert f"{expected} invalid UTF-8 sequences replaced" in r.out


@pytest.mark.parametrize("source", [PLAIN, WIKI], ids=["text", "wikitext"])
def test_windows_line_endings_give_the_same_store(tmp_path, vocab, source):
    lf = source.read_bytes().replace(b"\r\n", b"\n")
    (tmp_path / "lf.txt").write_bytes(lf)
    (tmp_path / "crlf.txt").write_bytes(lf.replace(b"\n", b"\r\n"))
    lines = lf.split(b"\n")  # and a file that mixes both
    (tmp_path / "mixed.txt").write_bytes(b"".join(x + (b"\r\n" if i % 2 else b"\n") for i, x in enumerate(lines)))
    fmt = ["--format", "wikitext" if source == WIKI else "text"]
    stores = []
    for name in ("lf.txt", "crlf.txt", "mixed.txt"):
        assert tokenize(tmp_path / name, out=tmp_path / name.replace(".", "-"), vocab=vocab, extra=fmt).code == 0
        stores.append(store_bytes(tmp_path / name.replace(".", "-")))
    assert stores[0] == stores[1] == stores[2]


@pytest.mark.parametrize("kind", ["gz", "bz2", "zst"])
def test_a_truncated_compressed_file_is_refused_with_one_line(tmp_path, vocab, kind):
    compress = {"gz": gzip.compress, "bz2": bz2.compress, "zst": zstandard.ZstdCompressor().compress}[kind]
    packed = compress(PLAIN.read_bytes() * 4)
    corpus = tmp_path / f"plain.txt.{kind}"
    corpus.write_bytes(packed[: len(packed) // 2])
    line = tokenize(corpus, out=tmp_path / "out", vocab=vocab).one_error_line()
    assert corpus.name in line
    assert_nothing_complete(tmp_path / "out")


def shard(tokens, out, *extra):
    return bertprep("shard", "--tokens", tokens, "--out", out, *extra, timeout=TIMEOUT)


def test_a_document_of_one_token(tmp_path, vocab):
    """One document, one sentence, one token: `segment` makes one example and reports the empty
    splits; `split` windows and NSP pairs need more, which is one error line, not a hang."""
    (tmp_path / "one.txt").write_text("the\n")
    assert tokenize(tmp_path / "one.txt", out=tmp_path / "tok", vocab=vocab).code == 0
    c = counts(tmp_path / "tok")
    assert (c["documents"], c["sentences"], c["tokens"]) == (1, 1, 1)
    r = shard(tmp_path / "tok", tmp_path / "seg")
    assert r.code == 0, r.err
    assert "train 1, val 0, test 0 examples" in r.out
    assert "split 'val' got no examples" in r.err and "split 'test' got no examples" in r.err
    assert bertprep("verify", tmp_path / "seg").code == 0
    for extra in (["--strategy", "split"], ["--nsp"]):
        line = shard(tmp_path / "tok", tmp_path / "other", *extra).one_error_line()
        assert "yields no examples" in line


def test_a_corpus_smaller_than_one_example(tmp_path, vocab):
    """Three short documents, far fewer tokens than --max-len: padded examples, or for `split`
    (whole windows only) one error line; --nsp, --whole-word and --dupe-factor never hang."""
    (tmp_path / "small.txt").write_text("The cat sat.\n\nA dog ran off. It came back.\n\nThe end.\n")
    assert tokenize(tmp_path / "small.txt", out=tmp_path / "tok", vocab=vocab).code == 0
    assert counts(tmp_path / "tok")["documents"] == 3
    outs = []
    for i, extra in enumerate([[], ["--nsp", "--whole-word", "--dupe-factor", "5"], ["--max-len", "512"],
                               ["--split", "0.34,0.33,0.33"]]):
        outs.append(tmp_path / f"s{i}")
        r = shard(tmp_path / "tok", outs[-1], *extra)
        assert r.code == 0, (extra, r.err)
    assert bertprep("verify", *outs).code == 0
    line = shard(tmp_path / "tok", tmp_path / "windows", "--strategy", "split").one_error_line()
    assert "yields no examples" in line
