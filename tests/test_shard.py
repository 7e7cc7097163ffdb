"""`bertprep shard` on a real corpus: exact layout, mask statistics, whole words, splits without
leaks, byte-identical re-runs across worker counts, both containers, inspect/verify catching
damage, and one clear line with exit code 2 for each bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bertprep.preprocess import sharding
from bertprep.preprocess.splits import chunk_documents
from bertprep.shards.reader import open_shard
from bertprep.shards.tokenstore import open_token_store
from conftest import run_cli


def shard(token_store, out, *extra, seed=123, max_len=64):
    return run_cli(["shard", "--tokens", token_store, "--out", out, "--max-len", max_len, "--seed", seed, *extra])


def load_split(out, split):
    parts = sorted(p for p in os.listdir(out) if p.startswith(f"{split}_"))
    shards = [open_shard(out / p) for p in parts]
    cols = [s.slice(0, s.num_examples) for s in shards]
    return {k: np.concatenate([c[k] for c in cols]) for k in cols[0]}, shards[0].meta


@pytest.fixture(scope="module")
def nsp_shards(token_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("nsp")
    assert shard(token_store, out, "--nsp", "--split", "0.8,0.1,0.1") == 0
    return out


@pytest.fixture(scope="module")
def wwm_shards(token_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("wwm")
    assert shard(token_store, out, "--whole-word", "--dupe-factor", "2", "--examples-per-shard", "1000") == 0
    return out


def vocab_of(token_store):
    return (token_store / "vocab.txt").read_text().split("\n")


def test_every_example_has_the_exact_layout(nsp_shards, token_store):
    cols, meta = load_split(nsp_shards, "train")
    sp = meta["special_ids"]
    L, n = meta["max_len"], len(cols["length"])
    assert cols["input_ids"].shape == (n, L) and cols["input_ids"].dtype == np.uint16
    length = cols["length"].astype(int)
    pos = np.arange(L)[None, :]
    ids, orig = cols["input_ids"].astype(int), cols["input_ids"].astype(int).copy()
    for r in range(n):  # undo masking to see the true layout
        k = cols["num_masked"][r]
        orig[r, cols["masked_positions"][r, :k]] = cols["masked_ids"][r, :k]
    assert (orig[:, 0] == sp["cls"]).all()
    assert (orig[np.arange(n), length - 1] == sp["sep"]).all()
    assert (ids[pos >= length[:, None]] == sp["pad"]).all()
    seps = (orig == sp["sep"]) & (pos < length[:, None])
    assert (seps.sum(1) == 2).all()  # [CLS] A [SEP] B [SEP]
    first_sep = seps.argmax(1)
    tt = cols["token_type_ids"]
    assert ((tt == 1) == ((pos > first_sep[:, None]) & (pos < length[:, None]))).all()
    assert set(np.unique(cols["nsp_label"])) == {0, 1}
    assert abs(cols["nsp_label"].mean() - 0.5) < 0.08  # balanced
    assert meta["nsp"] is True and meta["split"] == "train"


def test_mask_rate_and_80_10_10_hold_on_a_real_corpus(token_store, tmp_path):
    assert shard(token_store, tmp_path, "--dupe-factor", "8", max_len=128) == 0
    cols, meta = load_split(tmp_path, "train")
    vocab = vocab_of(token_store)
    is_special = np.array([t.startswith("[") and t.endswith("]") for t in vocab[: meta["vocab_size"]]])
    length = cols["length"].astype(int)
    real = length - 2
    k = cols["num_masked"].astype(int)
    assert meta["max_predictions"] == 20  # google's max_predictions_per_seq at 128
    # google's count: round(0.15 x all tokens, [CLS] and [SEP] included)
    expected = np.minimum(meta["max_predictions"], np.maximum(1, np.rint(length * 0.15))).astype(int)
    assert (k == np.minimum(expected, real)).all()
    slots = np.arange(meta["max_predictions"])[None, :] < k[:, None]
    rows = np.repeat(np.arange(len(k)), k)
    p = cols["masked_positions"][slots].astype(int)
    now, was = cols["input_ids"][rows, p].astype(int), cols["masked_ids"][slots].astype(int)
    total = len(p)
    assert total > 30000  # 1% is then over 4 standard errors of the 80% share
    masked, kept = (now == meta["special_ids"]["mask"]).mean(), (now == was).mean()
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(1 - masked - kept - 0.1) < 0.01
    assert not is_special[now[(now != was) & (now != meta["special_ids"]["mask"])]].any()
    manifest = json.loads((tmp_path / "pydocs_128_123.manifest.json").read_text())
    assert abs(manifest["mask_rate"] - 0.15) < 0.01


def test_whole_word_masking_never_splits_a_word(wwm_shards, token_store):
    cols, meta = load_split(wwm_shards, "train")
    cont = np.array([t.startswith("##") for t in vocab_of(token_store)[: meta["vocab_size"]]])
    n, L = cols["input_ids"].shape
    orig = cols["input_ids"].astype(int).copy()
    chosen = np.zeros((n, L), bool)
    for r in range(n):
        k = cols["num_masked"][r]
        orig[r, cols["masked_positions"][r, :k]] = cols["masked_ids"][r, :k]
        chosen[r, cols["masked_positions"][r, :k]] = True
    is_cont = cont[orig] & (np.arange(L)[None, :] > 1)
    # a continuation piece is chosen exactly when the piece before it is
    prev_chosen = np.roll(chosen, 1, axis=1)
    assert ((chosen == prev_chosen) | ~is_cont).all()
    assert is_cont.sum() > 100 and chosen[is_cont].sum() > 20


def test_dupe_factor_adds_differently_masked_copies_and_parts_roll_over(wwm_shards, token_store, tmp_path):
    names = sorted(p for p in os.listdir(wwm_shards) if p.startswith("train_"))
    assert len(names) >= 2 and all(open_shard(wwm_shards / n).num_examples <= 1000 for n in names)
    two, meta = load_split(wwm_shards, "train")
    assert shard(token_store, tmp_path, "--whole-word") == 0
    one, _ = load_split(tmp_path, "train")
    n = len(one["length"])
    for key in one:  # copy 0 is exactly the --dupe-factor 1 run: seeds come from position
        assert np.array_equal(two[key][:n], one[key]), key
    second = {k: v[n:] for k, v in two.items()}
    # copy 1 covers the same text once more (segment packing loses no token) but is drawn anew
    assert (second["length"].astype(int) - 2).sum() == (one["length"].astype(int) - 2).sum()
    assert len(second["length"]) != n or not np.array_equal(second["masked_positions"], one["masked_positions"])


def test_no_document_is_in_two_splits(nsp_shards, token_store):
    manifest = json.loads((nsp_shards / "pydocs_64_123.manifest.json").read_text())
    from bertprep.preprocess.splits import assign_documents

    store = open_token_store(token_store)
    splits = assign_documents(store.num_documents, (0.8, 0.1, 0.1), 0)
    sets = [set(v.tolist()) for v in splits.values()]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sum(map(len, sets)) == store.num_documents
    assert manifest["splits"]["val"]["documents"] == len(sets[1]) > 0
    # and the val examples' tokens come only from val documents
    so, do = store.sent_offsets, store.doc_offsets
    val_tokens = set(np.concatenate([store.ids[so[do[d]]:so[do[d + 1]]] for d in splits["val"]]).tolist())
    cols, meta = load_split(nsp_shards, "val")
    orig = cols["input_ids"].astype(int).copy()
    for r in range(len(orig)):
        k = cols["num_masked"][r]
        orig[r, cols["masked_positions"][r, :k]] = cols["masked_ids"][r, :k]
    a_tokens = orig[(cols["token_type_ids"] == 0) & (orig > 4)]
    assert set(a_tokens.tolist()) <= val_tokens


def test_byte_identical_across_worker_counts_and_seeds_differ(token_store, tmp_path, monkeypatch):
    # The test store (~35k tokens) is smaller than one real chunk (2^18 tokens): with chunks of 1,024
    # tokens the train split is dozens of tasks, so two workers really run tasks side by side and a
    # writer that took results in completion order instead of task order would be caught.
    monkeypatch.setattr(sharding, "CHUNK_TOKENS", 1024)
    store = open_token_store(token_store)
    doc_tokens = np.diff(store.sent_offsets[store.doc_offsets])
    assert len(chunk_documents(np.arange(store.num_documents), doc_tokens, 1024)) >= 20
    for strategy in ("segment", "pack"):
        for workers in ("1", "2"):
            assert shard(token_store, tmp_path / f"{strategy}{workers}", "--workers", workers, "--strategy", strategy,
                         "--examples-per-shard", "700") == 0
        files = sorted(os.listdir(tmp_path / f"{strategy}1"))
        assert files == sorted(os.listdir(tmp_path / f"{strategy}2")) and len(files) > 4
        for f in files:
            assert (tmp_path / f"{strategy}1" / f).read_bytes() == (tmp_path / f"{strategy}2" / f).read_bytes(), f
    (tmp_path / "segment1").rename(tmp_path / "w1")
    assert shard(token_store, tmp_path / "s2", seed=124) == 0
    a, _ = load_split(tmp_path / "w1", "train")
    b, _ = load_split(tmp_path / "s2", "train")
    assert not np.array_equal(a["masked_positions"][:100], b["masked_positions"][:100])
    # ...while the documents of each split stay the same across seeds and lengths
    assert shard(token_store, tmp_path / "l128", max_len=128) == 0
    docs = [json.loads(next(d.glob("*.manifest.json")).read_text())["splits"]["val"]["documents"]
            for d in (tmp_path / "w1", tmp_path / "s2", tmp_path / "l128")]
    assert docs[0] == docs[1] == docs[2] > 0


def test_msgpack_shards_hold_the_same_examples(token_store, tmp_path):
    assert shard(token_store, tmp_path / "a") == 0
    assert shard(token_store, tmp_path / "m", "--format", "msgpack") == 0
    a, _ = load_split(tmp_path / "a", "train")
    m, meta = load_split(tmp_path / "m", "train")
    for key in a:
        assert np.array_equal(a[key], m[key]), key
    assert run_cli(["verify", tmp_path / "m"]) == 0


def test_split_strategy_fills_every_row(token_store, tmp_path):
    assert shard(token_store, tmp_path, "--strategy", "split") == 0
    cols, meta = load_split(tmp_path, "train")
    assert (cols["length"] == 64).all()
    m = json.loads((tmp_path / "pydocs_64_123.manifest.json").read_text())
    assert m["padding_fraction"] == 0


def test_pack_strategy_keeps_every_token_with_almost_no_padding(token_store, tmp_path, capsys):
    assert shard(token_store, tmp_path, "--strategy", "pack", max_len=128) == 0
    assert "(packing efficiency 99." in capsys.readouterr().out
    m = json.loads((tmp_path / "pydocs_128_123.manifest.json").read_text())
    assert m["padding_fraction"] <= 0.01 and m["packing_efficiency"] == pytest.approx(1 - m["padding_fraction"])
    store = open_token_store(token_store)
    cls, sep = store.manifest["tokenizer"]["special_ids"]["cls"], store.manifest["tokenizer"]["special_ids"]["sep"]
    for split in ("train", "val", "test"):
        cols, meta = load_split(tmp_path, split)
        assert meta["strategy"] == "pack" and (cols["length"][:-1] >= 126).all()
        ids = cols["input_ids"].astype(np.int64)
        for r in range(len(ids)):  # undo masking, then read the pieces back in order
            k = cols["num_masked"][r]
            ids[r, cols["masked_positions"][r, :k]] = cols["masked_ids"][r, :k]
        pieces = []
        for row, n, starts, length in zip(ids, cols["num_docs"], cols["doc_starts"], cols["length"]):
            bounds = list(starts[:n]) + [length]
            for a, b in zip(bounds, bounds[1:]):
                assert row[a] == cls and row[b - 1] == sep
                pieces.append(row[a + 1:b - 1])
        docs = np.flatnonzero(np.isin(np.arange(store.num_documents), _split_docs(store, split)))
        expected = np.concatenate([store.ids[store.sent_offsets[store.doc_offsets[d]]:
                                             store.sent_offsets[store.doc_offsets[d + 1]]] for d in docs])
        assert np.array_equal(np.concatenate(pieces), expected), split  # every token once, in order
    assert run_cli(["verify", tmp_path]) == 0


def _split_docs(store, split):
    from bertprep.preprocess.splits import assign_documents, parse_split

    return assign_documents(store.num_documents, parse_split("0.98,0.01,0.01"), 0)[split]


def test_verify_checks_the_document_boundaries(token_store, tmp_path, capsys):
    from bertprep.shards.arrow_ipc import ArrowShardWriter

    assert shard(token_store, tmp_path / "p", "--strategy", "pack") == 0
    src = open_shard(sorted((tmp_path / "p").glob("train_*.arrow"))[0])
    for damage, needle in (("shift", "not starting with [CLS]"), ("count", "num_docs outside"),
                           ("tail", "after num_docs are not zero")):
        cols = src.slice(0, 50)
        row = int(np.flatnonzero(cols["num_docs"] >= 2)[0])
        if damage == "shift":
            cols["doc_starts"][row, 1] += 1
        elif damage == "count":
            cols["num_docs"][row] = 0
        else:
            cols["num_docs"][row] -= 1
        w = ArrowShardWriter(tmp_path / "bad.arrow", src.meta)
        w.write(cols)
        w.close()
        capsys.readouterr()
        assert run_cli(["verify", tmp_path / "bad.arrow"]) == 2
        assert needle in capsys.readouterr().err, damage


def test_inspect_shows_masks_and_targets(nsp_shards, token_store, capsys):
    f = sorted(nsp_shards.glob("train_*.arrow"))[0]
    assert run_cli(["inspect", f, "-n", "2", "--vocab", token_store / "vocab.txt"]) == 0
    out = capsys.readouterr().out
    assert out.count("example ") == 2 and "[MASK]" in out and "targets:" in out and "  B: " in out and "NSP:" in out


def _damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) * 2 // 3]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_verify_and_inspect_catch_a_flipped_byte_and_a_truncated_file(token_store, tmp_path, capsys, how):
    assert shard(token_store, tmp_path) == 0
    assert run_cli(["verify", tmp_path]) == 0
    f = sorted(tmp_path.glob("train_*.arrow"))[0]
    _damage(f, how)
    capsys.readouterr()
    assert run_cli(["verify", tmp_path]) == 2
    err = capsys.readouterr().err
    assert f.name in err and len(err.strip().splitlines()) == 1
    assert run_cli(["verify", f]) == 2
    if how == "truncate":
        assert run_cli(["inspect", f]) == 2
        assert f.name in capsys.readouterr().err


def test_bad_inputs_get_one_line_and_exit_2(token_store, token_store_copy, tmp_path, capsys):
    ids = token_store_copy / "ids.bin"
    data = bytearray(ids.read_bytes())
    data[10] ^= 0xFF
    ids.write_bytes(bytes(data))
    cases = [
        (["--tokens", tmp_path / "nowhere"], "no token store"),
        (["--tokens", token_store_copy], "sha256 mismatch"),
        (["--tokens", token_store, "--max-len", "4"], "--max-len"),
        (["--tokens", token_store, "--max-len", "5000"], "--max-len"),
        (["--tokens", token_store, "--mask-prob", "1.5"], "--mask-prob"),
        (["--tokens", token_store, "--mask-prob", "0"], "--mask-prob"),
        (["--tokens", token_store, "--split", "0.5,0.2,0.2"], "sum to 1"),
        (["--tokens", token_store, "--seed", "-1"], "--seed"),
        (["--tokens", token_store, "--strategy", "pack", "--nsp"], "--nsp does not apply to --strategy pack"),
    ]
    for args, needle in cases:
        capsys.readouterr()
        code = run_cli(["shard", "--out", tmp_path / "o", *args])
        err = capsys.readouterr().err.strip()
        assert code == 2, (args, err)
        assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, (args, err)


def test_other_settings_in_out_are_refused_unless_overwrite(token_store, tmp_path, capsys):
    assert shard(token_store, tmp_path) == 0
    assert shard(token_store, tmp_path) == 0  # the same run again is fine
    capsys.readouterr()
    assert shard(token_store, tmp_path, seed=7) == 2
    assert "other settings" in capsys.readouterr().err
    assert shard(token_store, tmp_path, "--whole-word") == 2
    (tmp_path / "notes.txt").write_text("mine")
    assert shard(token_store, tmp_path, "--overwrite", seed=7) == 0
    names = os.listdir(tmp_path)
    assert not [n for n in names if "_123_" in n or n.endswith("_123.manifest.json")]
    assert "notes.txt" in names  # only files the name grammar accepts are ever removed


def test_interrupted_run_is_finished_by_a_rerun(token_store, tmp_path):
    assert shard(token_store, tmp_path / "ref") == 0
    out = tmp_path / "run"
    assert shard(token_store, out) == 0
    # simulate a run killed after some parts: manifest missing, a temp file left, a part missing
    (out / "pydocs_64_123.manifest.json").unlink()
    sorted(out.glob("val_*.arrow"))[0].unlink()
    (out / ".train_pydocs_64_123_00001.arrow.999.tmp").write_bytes(b"partial")
    assert run_cli(["verify", out]) == 2
    assert shard(token_store, out) == 0
    assert sorted(os.listdir(out)) == sorted(os.listdir(tmp_path / "ref"))
    for f in os.listdir(out):
        if not f.startswith("."):
            assert (out / f).read_bytes() == (tmp_path / "ref" / f).read_bytes(), f
