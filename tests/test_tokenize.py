"""`bertprep tokenize`: every input kind, WikiText rules, vocab training and loading, byte-identical
re-runs, and one clear line with exit code 2 for each bad input."""

from __future__ import annotations

import bz2
import gzip
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from tokenizers import Tokenizer

from bertprep.shards.tokenstore import open_token_store
from conftest import PLAIN, WIKI, run_cli

FILES = ("ids.bin", "sentences.bin", "documents.bin", "tokenizer.json", "vocab.txt", "manifest.json")


def tokenize(tmp_path, *inputs, extra=(), out="tok"):
    code = run_cli(["tokenize", *inputs, "--out", tmp_path / out, "--vocab-size", "500", *extra])
    return code, tmp_path / out


def documents(store):
    """The store's documents as lists of sentences of ids."""
    ids, so, do = store.ids, store.sent_offsets, store.doc_offsets
    return [[ids[so[s]:so[s + 1]].tolist() for s in range(do[d], do[d + 1])] for d in range(len(do) - 1)]


def test_wikitext_documents_start_at_titles_and_drop_subheadings(token_store):
    store = open_token_store(token_store)
    text = WIKI.read_text(encoding="utf-8")
    titles = [line for line in text.splitlines() if line.startswith(" = ") and not line.startswith(" = = ")]
    assert store.num_documents == len(titles)
    tok = Tokenizer.from_file(str(token_store / "tokenizer.json"))
    decoded = tok.decode(store.ids[: store.sent_offsets[store.doc_offsets[1]]].tolist())
    assert "these documents are generated from" in decoded
    assert "contributors to the python documentation" not in decoded  # a sub-heading of doc 0
    whole = tok.decode(store.ids[:200000].tolist())
    assert "@-@" not in whole and "@ - @" not in whole
    m = store.manifest
    assert m["label"] == "pydocs" and m["counts"]["documents"] == len(titles)
    assert m["counts"]["tokens"] == len(store.ids) and m["id_dtype"] == "uint16"


def test_plain_text_blank_lines_separate_documents_and_sentences_are_split(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("The cat sat. It was happy!\nA second paragraph here.\n\nNew document starts. Right?\n")
    code, out = tokenize(tmp_path, corpus)
    assert code == 0
    store = open_token_store(out)
    docs = documents(store)
    assert [len(d) for d in docs] == [3, 2]
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.decode(docs[0][0]) == "the cat sat."
    assert tok.decode(docs[1][1]) == "right?"


@pytest.mark.parametrize("kind", ["gz", "bz2", "zst"])
def test_compressed_inputs_give_the_same_tokens(tmp_path, kind):
    raw = PLAIN.read_bytes()
    path = tmp_path / f"shakespeare.txt.{kind}"
    path.write_bytes({"gz": gzip.compress, "bz2": bz2.compress,
                      "zst": zstandard.ZstdCompressor().compress}[kind](raw))
    assert tokenize(tmp_path, PLAIN, out="plain")[0] == 0
    assert tokenize(tmp_path, path, out="packed")[0] == 0
    assert (tmp_path / "plain" / "ids.bin").read_bytes() == (tmp_path / "packed" / "ids.bin").read_bytes()


def test_jsonl_and_parquet_inputs_one_document_per_record(tmp_path):
    texts = ["First doc. It has two sentences.", "Second doc.\nWith a second paragraph.", "Third."]
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)) + "\n")
    pqf = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": texts}), pqf)
    for path, out in ((jl, "j"), (pqf, "p")):
        code, d = tokenize(tmp_path, path, extra=["--label", "c"], out=out)
        assert code == 0
        assert [len(doc) for doc in documents(open_token_store(d))] == [2, 2, 1]
    assert (tmp_path / "j" / "ids.bin").read_bytes() == (tmp_path / "p" / "ids.bin").read_bytes()


def test_several_inputs_never_share_a_document(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("Alpha one. Alpha two.\n")
    b.write_text("Beta one.\n")
    code, out = tokenize(tmp_path, a, b)
    assert code == 0
    assert [len(d) for d in documents(open_token_store(out))] == [2, 1]


def test_rerun_is_byte_identical_including_the_trained_vocab(tmp_path):
    assert tokenize(tmp_path, WIKI, out="one")[0] == 0
    assert tokenize(tmp_path, WIKI, out="two")[0] == 0
    for name in FILES:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    # and re-running into the same directory replaces it with the same bytes
    before = (tmp_path / "one" / "ids.bin").read_bytes()
    assert tokenize(tmp_path, WIKI, out="one")[0] == 0
    assert (tmp_path / "one" / "ids.bin").read_bytes() == before


def test_given_vocab_and_tokenizer_json_are_used_as_is(tmp_path, token_store):
    code, out = tokenize(tmp_path, PLAIN, extra=["--vocab", token_store / "vocab.txt"], out="v")
    assert code == 0
    assert (out / "vocab.txt").read_text() == (token_store / "vocab.txt").read_text()
    code, out2 = tokenize(tmp_path, PLAIN, extra=["--tokenizer", token_store / "tokenizer.json"], out="t")
    assert code == 0
    assert (out2 / "ids.bin").read_bytes() == (out / "ids.bin").read_bytes()
    m = json.loads((out / "manifest.json").read_text())
    assert m["tokenizer"]["source"] == "vocab.txt" and m["tokenizer"]["vocab_size"] == 2000


def test_trained_vocab_has_bert_specials_first_and_cased_keeps_case(tmp_path):
    code, out = tokenize(tmp_path, PLAIN, extra=["--cased"])
    assert code == 0
    vocab = (out / "vocab.txt").read_text().splitlines()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(vocab) == 500
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.encode("KING").tokens[1] != tok.encode("king").tokens[1]


def test_invalid_utf8_is_replaced_and_counted_and_crlf_is_handled(tmp_path):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(b"Good line here.\r\nBad \xff\xfe bytes here.\r\n\r\nNext doc.\r\n")
    code, out = tokenize(tmp_path, corpus)
    assert code == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["invalid_utf8"] == 2 and m["counts"]["documents"] == 2
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert "\r" not in tok.decode(open_token_store(out).ids.tolist())


def _bad(tmp_path, capsys, args):
    code = run_cli(["tokenize", *args])
    err = capsys.readouterr().err.strip()
    return code, err


def test_bad_inputs_get_one_line_and_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n")
    binary = tmp_path / "x.bin"
    binary.write_bytes(b"\x7fELF\x00\x00\x01" * 100)
    novocab = tmp_path / "vocab.txt"
    novocab.write_text("hello\nworld\n")
    cases = [
        ([tmp_path / "missing.txt"], "no such file"),
        ([tmp_path], "is a directory"),
        ([empty], "empty file"),
        ([blank, "--out", tmp_path / "o1"], "no text"),
        ([binary], "binary"),
        ([PLAIN, "--vocab", novocab, "--out", tmp_path / "o2"], "lacks the special tokens"),
    ]
    for args, needle in cases:
        code, err = _bad(tmp_path, capsys, args)
        assert code == 2, (args, err)
        assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "o1" / "manifest.json").exists()
    assert not (tmp_path / "o2" / "manifest.json").exists()


def test_output_of_a_different_run_is_refused_unless_overwrite(tmp_path, capsys):
    assert tokenize(tmp_path, PLAIN)[0] == 0
    code = run_cli(["tokenize", WIKI, "--out", tmp_path / "tok", "--vocab-size", "500"])
    err = capsys.readouterr().err
    assert code == 2 and "different run" in err and "--overwrite" in err
    assert tokenize(tmp_path, WIKI, extra=["--overwrite"])[0] == 0
    assert json.loads((tmp_path / "tok" / "manifest.json").read_text())["label"] == "pydocs"


def test_failed_overwrite_leaves_the_old_store_as_it_was(tmp_path, capsys):
    assert tokenize(tmp_path, PLAIN)[0] == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "tok").iterdir() if not p.name.startswith(".")}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine."}\n{"nope": 1}\n')
    code = run_cli(["tokenize", bad, "--out", tmp_path / "tok", "--overwrite", "--vocab-size", "500"])
    assert code == 2 and "bad.jsonl:2" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "tok").iterdir() if not p.name.startswith(".")} == before
    assert not [p for p in os.listdir(tmp_path / "tok") if p.endswith(".tmp")]
    open_token_store(tmp_path / "tok")


def test_checksums_in_manifest_are_checked_on_open(token_store_copy):
    from bertprep.shards.errors import ChecksumError

    ids = token_store_copy / "ids.bin"
    data = bytearray(ids.read_bytes())
    data[100] ^= 0xFF
    ids.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="ids.bin: sha256 mismatch"):
        open_token_store(token_store_copy)


def test_uint32_ids_when_the_vocab_exceeds_uint16():
    from bertprep.shards.schema import id_dtype

    assert id_dtype(30522) == np.uint16 and id_dtype(65536) == np.uint16 and id_dtype(65537) == np.uint32


def test_lone_surrogates_in_jsonl_are_replaced_and_counted(tmp_path):
    corpus = tmp_path / "s.jsonl"
    corpus.write_text('{"text": "ok \\ud800 here. Second one."}\n{"text": "fine."}\n')
    code, out = tokenize(tmp_path, corpus)
    assert code == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["invalid_utf8"] == 1 and m["counts"]["documents"] == 2
