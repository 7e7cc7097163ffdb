"""Dynamic masking (trainer/remask.py, `--mask-prob`): masks are a pure function of (seed, epoch,
file, row, position), so they repeat for the same key and change with the epoch, whatever the
batch or chunk they are drawn in; each row gets exactly min(P, max(1, rint(length p))) of its
non-special tokens, ascending and unique, 80/10/10 (or all [MASK]) within 1% over >30k choices,
whole words all or nothing; the original ids always come back; the trainer resumes a re-masked
run to exactly the uninterrupted losses, and validation keeps the shards' static masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bertprep.shards.errors import ConfigError
from bertprep.shards.reader import open_shards
from bertprep.trainer.evaluation import evaluate, vocab_for
from bertprep.trainer import remask as remask_module
from bertprep.trainer.prefetch import Prefetcher
from bertprep.trainer.remask import MaskingConfig, Remasker, Vocab, original_ids, remask, row_keys, vocab_from
from bertprep.trainer.run import parse_config, train
from bertprep.trainer.stream import ShardStream, StreamConfig
from bertprep.trainer.synthetic import synthetic_columns, synthetic_meta, write_synthetic_shards
from conftest import train_losses
from test_trainer import _stop_at, make_cfg

META = synthetic_meta(max_len=128, vocab_size=30522, nsp=True)
VOCAB = vocab_from(META, None)  # the five special ids, 0..4


@pytest.fixture(scope="module")
def cols() -> dict[str, np.ndarray]:
    return synthetic_columns(np.random.default_rng(5), 2000, META)


def _remask(cols, *, p=0.3, epoch=0, file=0, rows=None, vocab=VOCAB, **kw):
    rows = np.arange(len(cols["length"])) if rows is None else rows
    return remask(cols, row_keys(11, epoch, file, rows), MaskingConfig(mask_prob=p, **kw), vocab)


def _check_contract(before, after, p, vocab=VOCAB):
    """What every re-masked row must satisfy, against the row it came from."""
    orig = original_ids(before)
    assert (original_ids(after) == orig).all()                        # the original ids always come back
    T = orig.shape[1]
    pos, k = after["masked_positions"].astype(np.int64), after["num_masked"].astype(np.int64)
    P = pos.shape[1]
    assert P == max(1, round(T * p)) and after["masked_ids"].shape == (len(k), P)
    live = np.arange(P) < k[:, None]
    assert (pos[~live] == 0).all() and (after["masked_ids"][~live] == 0).all()
    assert (np.diff(np.where(live, pos, T + np.arange(P)), axis=1) > 0).all()    # ascending, unique
    rows = np.broadcast_to(np.arange(len(k))[:, None], pos.shape)
    assert not vocab.is_special[orig[rows[live], pos[live]]].any()                # specials never chosen
    assert (pos[live] < after["length"][rows[live]]).all()
    assert (after["masked_ids"][live] == orig[rows[live], pos[live]]).all()
    touched = np.zeros(orig.shape, dtype=bool)
    touched[rows[live], pos[live]] = True
    assert (after["input_ids"][~touched] == orig[~touched]).all()                # nothing else changes
    for key in set(before) - {"input_ids", "masked_positions", "masked_ids", "num_masked"}:
        assert after[key] is before[key]


@pytest.mark.parametrize("p", [0.15, 0.3, 0.5])
def test_exact_counts_and_the_column_contract(cols, p):
    out = _remask(cols, p=p)
    _check_contract(cols, out, p)
    orig = original_ids(cols)
    n = ((orig >= 5) & (np.arange(128) < cols["length"][:, None])).sum(1)
    P = max(1, round(128 * p))
    length = cols["length"].astype(np.int64)  # google's count: [CLS] and [SEP] included, as the shards'
    assert (out["num_masked"] == np.minimum(np.minimum(P, np.maximum(1, np.rint(length * p))), n)).all()


@pytest.mark.parametrize("T", [512, 2048])
def test_long_rows_take_the_partition_and_wide_key_paths(T):
    meta = synthetic_meta(max_len=T, vocab_size=30522, nsp=False)
    rows = synthetic_columns(np.random.default_rng(T), 64, meta)
    out = _remask(rows, p=0.2)
    _check_contract(rows, out, 0.2)
    n = ((original_ids(rows) >= 5) & (np.arange(T) < rows["length"][:, None])).sum(1)
    length = rows["length"].astype(np.int64)
    assert (out["num_masked"] == np.minimum(np.minimum(round(T * 0.2), np.maximum(1, np.rint(length * 0.2))), n)).all()


def test_80_10_10_within_one_percent_and_positions_uniform(cols):
    outs = [_remask(cols, epoch=e) for e in range(3)]
    orig = original_ids(cols)
    got = []
    for out in outs:
        live = np.arange(38) < out["num_masked"][:, None].astype(np.int64)
        rows = np.broadcast_to(np.arange(len(live))[:, None], live.shape)[live]
        at = out["masked_positions"][live]
        got.append((out["input_ids"][rows, at], orig[rows, at]))
    new, was = map(np.concatenate, zip(*got))
    assert new.size > 30_000
    masked, kept = (new == 4).mean(), (new == was).mean()  # a random id equal to the original: 1 in 30,517
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(1 - masked - kept - 0.1) < 0.01
    assert not VOCAB.is_special[new[new != 4]].any()
    # every candidate position is about equally likely (no bias towards the start of a row)
    at = np.concatenate([o["masked_positions"][np.arange(38) < o["num_masked"][:, None].astype(np.int64)]
                         for o in outs])
    early, late = (at < 30).sum(), ((at >= 30) & (at < 60)).sum()  # all rows are >= 64 long
    assert abs(early / late - 1) < 0.05


def test_mask_only_makes_every_choice_mask(cols):
    out = _remask(cols, mask_replace="mask-only")
    _check_contract(cols, out, 0.3)
    live = np.arange(38) < out["num_masked"][:, None].astype(np.int64)
    rows = np.broadcast_to(np.arange(len(live))[:, None], live.shape)
    assert (out["input_ids"][rows[live], out["masked_positions"][live]] == 4).all()


def test_same_key_same_mask_new_epoch_new_mask(cols):
    a, b = _remask(cols), _remask(cols)
    assert all((a[k] == b[k]).all() for k in a)
    for other in (_remask(cols, epoch=1), _remask(cols, file=1)):
        assert (other["masked_positions"] != a["masked_positions"]).any(axis=1).mean() > 0.99
    # and from the static columns or from already re-masked ones alike: only the original ids count
    again = _remask(_remask(cols, epoch=5))
    assert all((again[k] == a[k]).all() for k in a)


def test_a_row_masks_alike_in_any_batch(cols):
    whole = _remask(cols)
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(cols["length"]))[:300]
    part = _remask({k: v[pick] for k, v in cols.items()}, rows=pick)
    assert all((part[k] == whole[k][pick]).all() for k in whole)


def _word_vocab() -> tuple[Vocab, np.ndarray]:
    """A vocab where ids 5..999 start words and 1000.. are ## pieces; rows of words of 1-4 pieces."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(5, 1000)] + \
            [f"##p{i}" for i in range(1000, 2000)]
    meta = synthetic_meta(max_len=64, vocab_size=2000, nsp=False) | {"vocab_size": 2000}
    return vocab_from(meta, words), meta


def test_whole_words_are_all_or_nothing():
    vocab, meta = _word_vocab()
    rng = np.random.default_rng(1)
    N, T = 3000, 64
    ids = np.where(rng.random((N, T)) < 0.4, rng.integers(1000, 2000, (N, T)), rng.integers(5, 1000, (N, T)))
    length = rng.integers(20, T + 1, N)
    ids[:, 0] = 2
    ids[np.arange(T) >= length[:, None]] = 0
    ids[np.arange(N), length - 1] = 3
    ids[:, 1] = rng.integers(1000, 2000, N)  # a ## piece right after [CLS] starts its own word
    cols = {"input_ids": ids.astype(np.uint16), "length": length.astype(np.uint16),
            "masked_positions": np.zeros((N, 10), np.uint16), "masked_ids": np.zeros((N, 10), np.uint16),
            "num_masked": np.zeros(N, np.uint16)}
    out = _remask(cols, p=0.25, whole_word=True, vocab=vocab)
    _check_contract(cols, out, 0.25, vocab)
    cont = vocab.is_continuation[ids] & (np.arange(T) > 1) & (np.arange(T) < length[:, None] - 1)
    word = np.cumsum(~cont, axis=1)                                # a word id per position
    chosen = np.zeros((N, T), bool)
    live = np.arange(16) < out["num_masked"][:, None].astype(np.int64)
    rows = np.broadcast_to(np.arange(N)[:, None], live.shape)
    chosen[rows[live], out["masked_positions"][live]] = True
    is_mask = out["input_ids"] == 4
    for r in range(N):
        for w in np.unique(word[r][chosen[r]]):
            here = (word[r] == w) & (np.arange(T) < length[r] - 1) & (np.arange(T) > 0)
            assert chosen[r][here].all()                                # whole word or nothing
            assert is_mask[r][here].all() or not is_mask[r][here].any()  # one 80/10/10 draw per word
    n = ((ids >= 5) & (np.arange(T) < length[:, None])).sum(1)
    k = np.minimum(np.minimum(16, np.maximum(1, np.rint(length.astype(np.int64) * 0.25))), n)
    assert (out["num_masked"] <= k).all() and (out["num_masked"] >= k - 3).all()  # greedy fills up
    assert abs(out["num_masked"].sum() / k.sum() - 1) < 0.02


def _scattered_vocab(V: int) -> Vocab:
    """Specials at 0..4 and at every 97th id: no prefix, so candidates and random ids go through the tables."""
    words = [f"{'##' if i % 3 == 0 else ''}w{i}" for i in range(V)]
    for i in list(range(5)) + list(range(500, V, 97)):
        words[i] = f"[S{i}]"
    return vocab_from({"vocab_size": V, "special_ids": {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}}, words)


@pytest.mark.skipif(remask_module._loader is None, reason="the C kernel is not built (pip install -e .)")
@pytest.mark.parametrize("T,V,p,kw", [
    (128, 30522, 0.3, {}), (128, 30522, 0.15, {"mask_replace": "mask-only"}), (128, 30522, 0.5, {"whole_word": True}),
    (64, 2000, 0.25, {"whole_word": True}), (512, 70000, 0.2, {}), (2048, 30522, 0.2, {"whole_word": True}),
    (128, 70000, 0.3, {"whole_word": True}), (33, 5, 0.3, {}),
])
def test_the_c_kernel_is_the_numpy_definition(T, V, p, kw):
    """Every column equal, array for array, to remask.py's numpy definition: uint16 and uint32 ids,
    rows of 33 to 2048 tokens (the 32- and 64-bit key paths), a vocab of specials only (k = 0),
    80/10/10, mask-only and whole words, specials as a prefix and scattered (the table paths)."""
    rng = np.random.default_rng(T + V)
    rows = synthetic_columns(rng, 600, synthetic_meta(max_len=T, vocab_size=max(V, 2000), nsp=False))
    meta = synthetic_meta(max_len=T, vocab_size=max(V, 2000), nsp=False) | {"vocab_size": V}
    if V < 1000:  # nothing but specials to choose from
        rows["input_ids"] = rng.integers(0, V, rows["input_ids"].shape).astype(rows["input_ids"].dtype)
        rows["num_masked"][:] = 0
    for vocab in (vocab_from(meta, [f"{'##' if i % 3 == 0 else ''}w{i}" if i >= 5 else f"[S{i}]" for i in range(V)]),
                  _scattered_vocab(V) if V > 600 else None):
        if vocab is None:
            continue
        keys = row_keys(3, 1, 2, rng.integers(0, 10**6, 600))
        cfg = MaskingConfig(mask_prob=p, **kw)
        fast, slow = remask(rows, keys, cfg, vocab), remask(rows, keys, cfg, vocab, native=False)
        for k in slow:
            assert fast[k].dtype == slow[k].dtype and (fast[k] == slow[k]).all(), k


def test_flags_and_their_refusals(tmp_path):
    cfg = parse_config(["--shards", "x.arrow", "--mask-prob", "0.3", "--mask-replace", "mask-only", "--whole-word"])
    assert cfg.masking == MaskingConfig(mask_prob=0.3, mask_replace="mask-only", whole_word=True)
    assert parse_config(["--shards", "x.arrow"]).masking.mask_prob is None  # default: the shards' static masks
    for bad, match in ((["--mask-prob", "1.5"], r"--mask-prob must be in \(0, 1\), got 1.5"),
                       (["--mask-prob", "0"], "--mask-prob must be in"),
                       (["--whole-word"], "give --mask-prob too"),
                       (["--mask-replace", "mask-only"], "give --mask-prob too")):
        with pytest.raises(ConfigError, match=match):
            parse_config(["--shards", "x.arrow", *bad])
    toml = tmp_path / "run.toml"
    toml.write_text('shards = ["x.arrow"]\nmask-prob = 0.2\nmask-replace = "mask-only"\n')
    assert parse_config(["--config", str(toml)]).masking.mask_prob == 0.2


# --- through the loader and the trainer ------------------------------------------------------------

@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("syn")
    write_synthetic_shards(folder, rows=[120, 90, 70], nsp=True)
    write_synthetic_shards(folder, rows=[64], nsp=True, split="val")
    return folder


def _feed(syn, start, count, *, chunk_rows=8192, batch=8):
    shards = open_shards(sorted(syn.glob("train_*.arrow")))
    stream = ShardStream(shards, StreamConfig(batch_size=batch, seed=3))
    masker = Remasker(MaskingConfig(mask_prob=0.3), vocab_from(shards[0].meta, None), seed=3)
    with Prefetcher(stream, torch.device("cpu"), start=start, chunk_rows=chunk_rows, remask=masker) as feed:
        return [feed.next() for _ in range(count)], stream, masker


def test_the_prefetcher_remasks_alike_from_any_start_and_chunk(syn):
    whole, stream, masker = _feed(syn, 0, 80)                       # 34 batches an epoch: crosses two
    assert whole[0]["masked_positions"].shape == (8, 10)            # round(32 x 0.3) slots, not the shards' 5
    assert all(b["num_masked"].max() <= 10 for b in whole)
    later, _, _ = _feed(syn, 30, 50, chunk_rows=24)                  # resumed at batch 30, 3 batches a chunk
    for a, b in zip(whole[30:], later):
        assert all(torch.equal(a[k], b[k]) for k in a)
    # batch i is its rows re-masked with key (seed, epoch, file, row)
    for i in (0, 33, 34, 79):
        (f, rows, cols), = stream.batches(i, 1)
        epoch = int(stream.locate([i])[0][0])
        ref = masker(cols, epoch, f, rows)
        assert all(np.array_equal(whole[i][k].numpy(), ref[k]) for k in ref)


def test_resume_reproduces_the_uninterrupted_remasked_run(syn, tmp_path, monkeypatch):
    kw = dict(max_steps=12, grad_accum=4, dropout=0.1, ckpt_interval=4, max_checkpoints=10, mask_prob=0.3)
    train(make_cfg(syn, tmp_path / "whole", **kw))                 # 48 batches: into the second epoch
    whole = train_losses(tmp_path / "whole")
    with monkeypatch.context() as m:
        _stop_at(m, 18)
        assert train(make_cfg(syn, tmp_path / "split", **kw))["step"] == 5
    assert train(make_cfg(syn, tmp_path / "split", resume=True, **kw))["first_step"] == 5
    assert train_losses(tmp_path / "split") == whole
    static = dict(kw)
    del static["mask_prob"]
    train(make_cfg(syn, tmp_path / "static", **static))
    assert train_losses(tmp_path / "static") != whole              # the flag does change what is trained on
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert config["train"]["mask_prob"] == 0.3 and config["train"]["mask_replace"] == "80/10/10"


def test_validation_keeps_the_static_masks(syn, tmp_path):
    out = tmp_path / "run"
    train(make_cfg(syn, out, max_steps=4, mask_prob=0.5, val_interval=4, val_batches=5, ckpt_interval=4))
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = next(r for r in logged if "val_loss" in r)
    static = evaluate(sorted(syn.glob("val_*")), out, batch_size=8, max_batches=5)  # the shards' own masks
    assert val["val_loss"] == pytest.approx(static["val_loss"], rel=1e-6)
    assert val["val_tokens"] == static["val_tokens"]


def test_whole_word_needs_a_vocab(syn, tmp_path):
    with pytest.raises(ConfigError, match="--whole-word: no vocab.txt found"):
        train(make_cfg(syn, tmp_path / "run", max_steps=1, mask_prob=0.3, whole_word=True))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_whole_word_on_real_shards_finds_the_vocab(token_store, tmp_path):
    """Real shards: the vocab comes through the manifest's token store, and ## pieces stay with their word."""
    from bertprep.cli import main as bertprep

    out = tmp_path / "shards"
    try:
        bertprep(["shard", "--tokens", str(token_store), "--out", str(out), "--max-len", "64", "--seed", "123",
                  "--examples-per-shard", "256", "--workers", "1"])
    except SystemExit as e:
        assert not e.code
    shards = open_shards(sorted(out.glob("train_*.arrow")))
    words = vocab_for(shards[0].path, shards[0].meta, None)
    vocab = vocab_from(shards[0].meta, words)
    assert vocab.is_continuation is not None and vocab.is_continuation.sum() > 100
    cols = shards[0].take(np.arange(shards[0].num_examples))
    res = _remask(cols, p=0.4, whole_word=True, vocab=vocab)
    _check_contract(cols, res, 0.4, vocab)
    orig = original_ids(cols)
    chosen = np.zeros(orig.shape, bool)
    live = np.arange(res["masked_positions"].shape[1]) < res["num_masked"][:, None].astype(np.int64)
    rows = np.broadcast_to(np.arange(len(live))[:, None], live.shape)
    chosen[rows[live], res["masked_positions"][live]] = True
    follows = vocab.is_continuation[orig[:, 1:]] & ~vocab.is_special[orig[:, :-1]]
    assert follows.any() and (chosen[:, 1:][follows] == chosen[:, :-1][follows]).all()
    summary = train(make_cfg(out, tmp_path / "run", max_steps=2, mask_prob=0.4, whole_word=True))
    assert summary["step"] == 2
