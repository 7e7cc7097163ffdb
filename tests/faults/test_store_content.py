"""Issue 18 item 8: a token store whose checksums match its manifest but whose content is
inconsistent is refused by `shard` (when it opens the store) with one line naming the file and
`re-run bertprep tokenize`: an ids.bin of odd byte length, an id beyond the vocabulary, sentence or
document offsets out of order, a tokenizer.json or vocab.txt of another size than the manifest says.
Each damaged store is resealed (its manifest's checksums recomputed), as a buggy writer would leave
it, so only the content check can catch it; no shard is written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bertprep.shards.atomic import sha256_file
from conftest import PLAIN, run_cli
from faultkit import data_files


def reseal(store) -> None:
    """Make the manifest's checksums match whatever the files now hold."""
    path = store / "manifest.json"
    m = json.loads(path.read_text())
    m["files"] = {name: sha256_file(store / name) for name in m["files"]}
    m["tokenizer"]["sha256"] = sha256_file(store / "tokenizer.json")
    path.write_text(json.dumps(m))


def edit_array(path, dtype, change) -> None:
    a = np.fromfile(path, dtype=dtype)
    change(a)
    a.tofile(path)


def refused(capsys, store, tmp_path) -> str:
    out = tmp_path / "shards"
    capsys.readouterr()
    code = run_cli(["shard", "--tokens", store, "--out", out, "--max-len", "64", "--seed", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), (code, err)
    assert "Traceback" not in err and "re-run bertprep tokenize" in err, err
    assert data_files(out) == {}
    return err


def vocab_size(store) -> int:
    return json.loads((store / "manifest.json").read_text())["tokenizer"]["vocab_size"]


def odd_ids(store):
    with open(store / "ids.bin", "ab") as f:
        f.write(b"\0")
    return "ids.bin"


def id_beyond_vocab(store):
    v = vocab_size(store)
    edit_array(store / "ids.bin", "<u2", lambda a: a.__setitem__(len(a) // 2, v))
    return "ids.bin"


def swap_middle(a):
    k = len(a) // 2
    a[k], a[k + 1] = a[k + 1], a[k]


def sentences_out_of_order(store):
    edit_array(store / "sentences.bin", "<i8", swap_middle)
    return "sentences.bin"


def sentence_offsets_not_from_zero(store):
    edit_array(store / "sentences.bin", "<i8", lambda a: a.__setitem__(0, 1))
    return "sentences.bin"


def documents_out_of_order(store):
    edit_array(store / "documents.bin", "<i8", swap_middle)
    return "documents.bin"


def manifest_vocab_one_larger(store):
    path = store / "manifest.json"
    m = json.loads(path.read_text())
    m["tokenizer"]["vocab_size"] += 1
    path.write_text(json.dumps(m))
    return "tokenizer.json"


def vocab_txt_of_another_size(store):
    lines = (store / "vocab.txt").read_text().split("\n")
    (store / "vocab.txt").write_text("\n".join(lines[:-10]) + "\n")
    return "vocab.txt"


def vocab_txt_reordered(store):
    lines = (store / "vocab.txt").read_text().split("\n")
    lines[100], lines[101] = lines[101], lines[100]
    (store / "vocab.txt").write_text("\n".join(lines))
    return "vocab.txt"


@pytest.fixture(scope="module")
def small_vocab_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "tokens"
    assert run_cli(["tokenize", PLAIN, "--out", out, "--vocab-size", "600"]) == 0
    return out


DAMAGE = [odd_ids, id_beyond_vocab, sentences_out_of_order, sentence_offsets_not_from_zero, documents_out_of_order,
          manifest_vocab_one_larger, vocab_txt_of_another_size, vocab_txt_reordered]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__ for d in DAMAGE])
def test_an_inconsistent_store_with_matching_checksums_is_refused(damage, token_store_copy, tmp_path, capsys):
    name = damage(token_store_copy)
    reseal(token_store_copy)
    err = refused(capsys, token_store_copy, tmp_path)
    assert str(token_store_copy / name) in err, err


def test_a_tokenizer_of_another_vocab_is_refused(token_store_copy, small_vocab_store, tmp_path, capsys):
    for name in ("tokenizer.json", "vocab.txt"):
        shutil.copyfile(small_vocab_store / name, token_store_copy / name)
    reseal(token_store_copy)
    err = refused(capsys, token_store_copy, tmp_path)
    assert str(token_store_copy / "tokenizer.json") in err, err


def test_the_untouched_store_still_shards(token_store_copy, tmp_path):
    reseal(token_store_copy)
    assert run_cli(["shard", "--tokens", token_store_copy, "--out", tmp_path / "shards", "--max-len", "64"]) == 0
