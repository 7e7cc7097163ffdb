"""Issue 18 item 4: a vocab.txt is a line-number-to-token map, read exactly as HuggingFace reads it
(`tokenizers`' BertWordPieceTokenizer and transformers' BertTokenizerFast, checked here on the same
file): a blank or whitespace-only line keeps its id (later ids do not shift), trailing whitespace is
stripped, only `\\n` ends a line, CRLF files read as LF ones. Both backends give HuggingFace's ids.
A token on two lines (HuggingFace keeps the last and leaves the first id to no token) is refused
with one line naming both lines, and nothing is written."""

from __future__ import annotations

import pytest

from bertprep.shards.tokenstore import open_token_store
from conftest import run_cli
from faultkit import data_files

CORPUS = """The function returns a new list of the values in the dictionary.
Each module can import other modules, and the interpreter caches them.

A class defines attributes and methods; an instance of the class holds its own state.
Exceptions raised inside the loop are handled by the except clause below it.
"""


def lines_of(token_store) -> list[str]:
    return (token_store / "vocab.txt").read_text().split("\n")[:-1]


def blank_line(v):
    return "\n".join(v[:10] + [""] + v[10:]) + "\n"


def whitespace_line(v):
    return "\n".join(v[:10] + [" \t"] + v[10:]) + "\n"


def trailing_whitespace(v):  # every token of the corpus's first words, with spaces after it
    return "\n".join(t + "  " if t in ("the", "function", "returns") else t for t in v) + "\n"


def crlf(v):
    return "\r\n".join(v) + "\r\n"


def no_final_newline(v):
    return "\n".join(v)


def line_separator_inside(v):  # str.splitlines() would cut this line in two
    return "\n".join(v[:10] + ["a\u2028b", "c\x1cd"] + v[10:]) + "\n"


def blank_line_at_the_end(v):
    return "\n".join(v) + "\n\n"


GOOD = [blank_line, whitespace_line, trailing_whitespace, crlf, no_final_newline, line_separator_inside,
        blank_line_at_the_end]


def hf_ids(vocab, text) -> list[int]:
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    a = BertWordPieceTokenizer(str(vocab), lowercase=True).encode(text, add_special_tokens=False).ids
    b = BertTokenizerFast(str(vocab))(text, add_special_tokens=False)["input_ids"]
    assert a == b  # the two HuggingFace readers agree on every file used here
    return a


@pytest.mark.parametrize("backend", ["native", "tokenizers"])
@pytest.mark.parametrize("variant", GOOD, ids=[v.__name__ for v in GOOD])
def test_ids_are_huggingfaces_for_the_same_file(variant, backend, token_store, tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_bytes(variant(lines_of(token_store)).encode())
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    out = tmp_path / "tokens"
    assert run_cli(["tokenize", corpus, "--vocab", vocab, "--out", out, "--backend", backend]) == 0
    store = open_token_store(out)
    assert store.ids.tolist() == hf_ids(vocab, CORPUS)
    assert vocab.read_bytes() == variant(lines_of(token_store)).encode()  # the input is untouched


def duplicate_token(v):
    return "\n".join(v + ["the"]) + "\n"


def duplicate_after_stripping(v):
    return "\n".join(v[:20] + ["the \t"] + v[20:]) + "\n"


def two_blank_lines(v):
    return "\n".join(v[:10] + ["", ""] + v[10:]) + "\n"


BAD = [duplicate_token, duplicate_after_stripping, two_blank_lines]


@pytest.mark.parametrize("variant", BAD, ids=[v.__name__ for v in BAD])
def test_a_token_on_two_lines_is_refused(variant, token_store, tmp_path, capsys):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text(variant(lines_of(token_store)))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    out = tmp_path / "tokens"
    capsys.readouterr()
    code = run_cli(["tokenize", corpus, "--vocab", vocab, "--out", out])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), (code, err)
    assert str(vocab) in err and "remove one of the two lines" in err, err
    assert data_files(out) == {}
