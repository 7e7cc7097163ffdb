"""Pretraining in phases (issue 10) and the trainer's other starts (issue 5), on CPU.

A tiny model trains on 128-token shards, then on 512-token shards from its weights: validation at
512 improves on phase 1's, the step counter, metrics.jsonl and the checkpoint go on across phases,
AdamW and the schedule restart (or carry over with --keep-optimizer), and both lengths hold exactly
the same tokens in each of train/val/test (one --split-seed: the same documents). --resume refuses
shards of another length or seed naming --init-from; position tables too short are refused naming
--max-position; a pre-LN model trains at lr 3e-4 with no warm-up. --init-from-hf starts from a
HuggingFace BertForMaskedLM and refuses one of another vocabulary, tokenizer or length. A run keeps
its tokenizer, so predict works from the run alone.

The "512-token" shards are real 512-token shards of the test corpus (78 examples): a 2-layer,
64-wide model steps through them in well under a second each on one CPU thread.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bertprep.shards.errors import ConfigError
from bertprep.shards.reader import open_shard
from bertprep.trainer import artifacts
from bertprep.trainer import checkpoint as ckpt_io
from bertprep.trainer.config import TrainConfig, train_config
from bertprep.trainer.optim import lr_factor
from bertprep.trainer.run import evaluate, main, parse_config, train
from bertprep.trainer.synthetic import write_synthetic_shards
from conftest import run_cli

SHAPE = {"model": "tiny", "layers": 2, "hidden": 64, "heads": 2, "ffn": 256, "dropout": 0.0}




@pytest.fixture(scope="module")
def lengths(token_store, tmp_path_factory) -> dict[int, Path]:
    """`bertprep shard` of the session token store at 128 and at 512 tokens (each its own folder),
    with the default --split-seed."""
    root = tmp_path_factory.mktemp("lengths")
    for n in (128, 512):
        assert run_cli(["shard", "--tokens", token_store, "--out", root / f"shards-{n}", "--max-len", n, "--seed", "1",
                        "--split", "0.8,0.1,0.1", "--workers", "1"]) == 0
    return {n: root / f"shards-{n}" for n in (128, 512)}


def files(folder: Path, split: str = "train") -> tuple[str, ...]:
    return tuple(str(p) for p in sorted(folder.glob(f"{split}_*.arrow")))


def make_cfg(folder: Path, out: Path, **kw) -> TrainConfig:
    base = dict(shards=files(folder), out=str(out), batch_size=16, lr=2e-3, warmup_steps=6, log_interval=10,
                val_interval=0, val_examples=0, ckpt_interval=1000, seed=3, quiet=True, tensorboard=False, **SHAPE)
    return train_config(**(base | kw))


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def phase1(lengths, tmp_path_factory) -> Path:
    """Phase 1: 30 steps on the 128-token shards (the position table has the default 512 rows)."""
    out = tmp_path_factory.mktemp("phase1") / "run"
    train(make_cfg(lengths[128], out, max_steps=30, val_interval=30))
    return out


def test_phase_2_on_512_token_shards_goes_on_from_phase_1(lengths, phase1, token_store, tmp_path, monkeypatch):
    val512 = files(lengths[512], "val")
    before = evaluate(val512, phase1, batch_size=8)  # phase 1's model reads 512 tokens: its table has 512 rows
    p2 = tmp_path / "phase2"
    summary = train(make_cfg(lengths[512], p2, init_from=str(phase1), max_steps=60, batch_size=8, lr=1e-3,
                             warmup_steps=4, val_interval=30))
    after = evaluate(val512, p2, batch_size=8)
    assert before["step"] == 30 and after["step"] == 60
    assert after["val_loss"] < before["val_loss"] - 0.1, (before["val_loss"], after["val_loss"])

    # The step counter goes on; metrics.jsonl reads as one curve, each record tagged with its phase.
    assert summary["first_step"] == 30 and summary["step"] == 60
    recs = records(p2)
    train_recs = [r for r in recs if "loss" in r]
    assert [r["step"] for r in train_recs] == list(range(10, 61, 10))
    assert {r["phase"] for r in train_recs if r["step"] <= 30} == {"phase1-128"}
    assert {r["phase"] for r in train_recs if r["step"] > 30} == {"phase2-512"}
    assert [r["step"] for r in recs if "val_loss" in r] == [30, 60]
    assert [(r["event"], r["step"]) for r in recs if "event" in r] == [("end", 30), ("phase", 30), ("end", 60)]

    # Weights taken; AdamW, the schedule and the data position restarted with the phase.
    ck = ckpt_io.load(ckpt_io.newest(p2))
    assert ck["step"] == 60 and ck["loader"]["next_batch"] == 30
    assert ck["phase"] == {"index": 2, "name": "phase2-512", "start_step": 30, "schedule_start": 30,
                           "init_from": str(ckpt_io.newest(phase1))}
    assert ck["data"]["max_len"] == 512 and ck["model_config"]["max_len"] == 512
    assert int(ck["optimizer"]["state"][0]["step"]) == 30 and ck["scheduler"]["last_epoch"] == 30
    lr40 = next(r["lr"] for r in train_recs if r["step"] == 40)  # the 10th update of the phase: warm-up, then decay
    assert math.isclose(lr40, 1e-3 * lr_factor(9, warmup=4, max_steps=30, decay="linear", min_ratio=0.0))

    # Both runs keep the shards' tokenizer: predict works from the run alone.
    for run in (phase1, p2):
        assert (run / "tokenizer.json").read_bytes() == (token_store / "tokenizer.json").read_bytes()
        assert (run / "vocab.txt").read_bytes() == (token_store / "vocab.txt").read_bytes()
    monkeypatch.setattr(artifacts, "_store_candidates", lambda shard_paths: iter(()))  # no way to the token store
    assert artifacts.find_tokenizer(ck, ckpt_io.newest(p2)) == p2 / "tokenizer.json"
    assert run_cli(["predict", "--checkpoint", p2, "--top-k", "2", "the [MASK] module ."]) == 0


def _unmasked_token_counts(folder: Path, split: str, vocab_size: int, specials: list[int]) -> np.ndarray:
    """How often each token id occurs in a split's examples, masks undone, specials and padding left out."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for path in files(folder, split):
        s = open_shard(path)
        cols = s.slice(0, s.num_examples)
        ids = cols["input_ids"].astype(np.int64)
        k = cols["num_masked"].astype(np.int64)
        rows = np.repeat(np.arange(len(ids)), k)
        slots = np.concatenate([np.arange(n) for n in k])
        ids[rows, cols["masked_positions"][rows, slots].astype(np.int64)] = cols["masked_ids"][rows, slots]
        real = np.arange(ids.shape[1])[None, :] < cols["length"][:, None].astype(np.int64)
        counts += np.bincount(ids[real], minlength=vocab_size)
    counts[specials] = 0
    return counts


def test_both_lengths_split_the_same_documents(lengths):
    """Phase 2 never trains on phase 1's validation documents: at 128 and 512 tokens every split holds
    the same documents, so exactly the same tokens (segment packing loses none)."""
    manifests = {n: json.loads(next(lengths[n].glob("*.manifest.json")).read_text()) for n in lengths}
    assert manifests[128]["run"]["options"]["split_seed"] == manifests[512]["run"]["options"]["split_seed"] == 0
    meta = manifests[128]["meta"]
    specials = [meta["special_ids"][k] for k in ("pad", "cls", "sep")]
    for split in ("train", "val", "test"):
        assert manifests[128]["splits"][split]["documents"] == manifests[512]["splits"][split]["documents"]
        at128 = _unmasked_token_counts(lengths[128], split, meta["vocab_size"], specials)
        at512 = _unmasked_token_counts(lengths[512], split, meta["vocab_size"], specials)
        assert at128.sum() > 0 and np.array_equal(at128, at512), split


def test_resume_refuses_another_phase_and_names_init_from(lengths, phase1, token_store, tmp_path, capsys):
    other_seed = tmp_path / "seed2"
    assert run_cli(["shard", "--tokens", token_store, "--out", other_seed, "--max-len", "128", "--seed", "2",
                    "--split", "0.8,0.1,0.1", "--workers", "1"]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in phase1.rglob("*"))
    for shards, why in ((files(lengths[512]), "max_len=128 but these shards have max_len=512"),
                        (files(other_seed), "length 128 seed 1, these are pydocs length 128 seed 2")):
        code = main(["--shards", *shards, "--out", str(phase1), "--resume", "--max-steps", "50", "--quiet",
                     "--no-tensorboard"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
        assert why in err and "--init-from RUN" in err, err
    assert sorted(p.name for p in phase1.rglob("*")) == before  # refused before touching the run


def test_keep_optimizer_carries_adamw_and_the_schedule(tmp_path):
    a = write_synthetic_shards(tmp_path / "a", rows=[96], max_len=32)
    b = write_synthetic_shards(tmp_path / "b", rows=[96], max_len=48)
    kw = dict(batch_size=8, lr=1e-3, warmup_steps=4, log_interval=1, val_interval=0, quiet=True, tensorboard=False,
              model="tiny", layers=1, hidden=32, heads=2, ffn=64)
    train(train_config(shards=tuple(map(str, a)), out=str(tmp_path / "p1"), max_steps=10, **kw))
    for keep in (True, False):
        out = tmp_path / f"p2-{keep}"
        train(train_config(shards=tuple(map(str, b)), out=str(out), init_from=str(tmp_path / "p1"), max_steps=20,
                          keep_optimizer=keep, **kw))
        ck = ckpt_io.load(ckpt_io.newest(out))
        lr11 = next(r["lr"] for r in records(out) if r.get("step") == 11 and "loss" in r)
        if keep:  # one schedule over steps 0..20, one AdamW: 20 updates
            assert int(ck["optimizer"]["state"][0]["step"]) == 20 and ck["phase"]["schedule_start"] == 0
            assert math.isclose(lr11, 1e-3 * lr_factor(10, warmup=4, max_steps=20, decay="linear", min_ratio=0.0))
        else:     # warm-up again from step 10
            assert int(ck["optimizer"]["state"][0]["step"]) == 10 and ck["phase"]["schedule_start"] == 10
            assert math.isclose(lr11, 1e-3 / 4)


def test_position_tables_too_short_are_refused(tmp_path, capsys):
    short = write_synthetic_shards(tmp_path / "s", rows=[64], max_len=32)
    long = write_synthetic_shards(tmp_path / "l", rows=[64], max_len=48)
    kw = dict(batch_size=8, max_steps=2, val_interval=0, quiet=True, tensorboard=False, model="tiny", hidden=32)
    with pytest.raises(ConfigError, match="--max-position 16 is shorter than the shards' 32-token examples"):
        train(train_config(shards=tuple(map(str, short)), out=str(tmp_path / "a"), max_position=16, **kw))
    train(train_config(shards=tuple(map(str, short)), out=str(tmp_path / "b"), max_position=32, **kw))
    capsys.readouterr()  # the training run's own lines (a warm-up past --max-steps)
    code = main(["--shards", *map(str, long), "--init-from", str(tmp_path / "b"), "--max-steps", "4", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "the model has 32 positions but these shards hold 48-token examples" in err and "--max-position" in err


def test_pre_ln_trains_at_3e_4_without_warm_up(lengths, tmp_path):
    out = tmp_path / "run"
    cfg = parse_config(["--recipe", "pre-ln", "--shards", *files(lengths[128]), "--model", "tiny", "--hidden", "64",
                        "--heads", "2", "--ffn", "256", "--dropout", "0", "--max-steps", "60", "--batch-size", "16",
                        "--log-interval", "10", "--val-interval", "0", "--out", str(out), "--quiet",
                        "--no-tensorboard"])
    assert (cfg.model.norm, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.decay, cfg.recipe) == ("pre", 3e-4, 0, "linear", "pre-ln")
    train(cfg)
    curve = {r["step"]: r for r in records(out) if "loss" in r}
    assert all(math.isfinite(r["loss"]) for r in curve.values())
    assert math.isclose(curve[10]["lr"], 3e-4 * (1 - 9 / 60))  # the peak from the first step: no warm-up
    assert curve[60]["loss"] < curve[10]["loss"] - 0.3, {s: r["loss"] for s, r in curve.items()}
    written = json.loads((out / "config.json").read_text())  # the effective settings, in the run directory
    assert written["train"]["recipe"] == "pre-ln" and written["train"]["lr"] == 3e-4
    assert written["model"]["norm"] == "pre" and written["model"]["max_len"] == 512 and written["phase"]["index"] == 1


# --- --init-from-hf ----------------------------------------------------------------------------------

def _hf_model(directory: Path, token_store: Path, *, vocab_size: int | None = None, positions: int = 512) -> Path:
    """A random transformers BertForMaskedLM saved with save_pretrained, our tokenizer files beside it."""
    transformers = pytest.importorskip("transformers")
    vocab = json.loads((token_store / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=vocab_size or vocab, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=256, max_position_embeddings=positions)
    transformers.BertForMaskedLM(config).save_pretrained(directory)
    for name in ("tokenizer.json", "vocab.txt"):
        shutil.copy(token_store / name, directory / name)
    return directory


def test_init_from_hf_trains_from_its_weights(lengths, token_store, tmp_path, capsys):
    from safetensors.torch import load_file

    from bertprep.trainer.hf import from_hf

    hf = _hf_model(tmp_path / "hf", token_store)
    out = tmp_path / "run"
    summary = train(make_cfg(lengths[128], out, init_from_hf=str(hf), max_steps=3, batch_size=8, lr=1e-3,
                             warmup_steps=0, log_interval=1))
    assert summary["step"] == 3 and all(math.isfinite(r["loss"]) for r in records(out) if "loss" in r)
    ck = ckpt_io.load(ckpt_io.newest(out))
    theirs = from_hf(load_file(str(hf / "model.safetensors")))
    assert set(ck["model"]) == set(theirs)
    # Three AdamW steps of 1e-3 move a weight by at most ~3e-3; fresh weights would differ by ~0.03.
    drift = max((ck["model"][k] - theirs[k]).abs().max().item() for k in theirs)
    assert 0 < drift < 4e-3, drift
    assert ck["model_config"]["max_len"] == 512 and ck["phase"]["init_from"] == str(hf)
    assert (out / "tokenizer.json").read_bytes() == (token_store / "tokenizer.json").read_bytes()

    # A directory with only vocab.txt: another tokenizer file, the same vocabulary: accepted.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        shutil.copy(hf / name, bare / name)
    capsys.readouterr()
    assert main(["--shards", *files(lengths[128]), "--init-from-hf", str(bare), "--out", str(tmp_path / "r2"),
                 "--max-steps", "1", "--batch-size", "8", "--val-interval", "0", "--no-tensorboard"]) == 0
    assert "its vocabulary and normalization are the same" in capsys.readouterr().err


def test_init_from_hf_refuses_another_vocabulary_tokenizer_or_length(lengths, token_store, tmp_path, capsys):
    bigger = _hf_model(tmp_path / "bigger", token_store, vocab_size=2001)
    short = _hf_model(tmp_path / "short", token_store, positions=64)
    swapped = _hf_model(tmp_path / "swapped", token_store)  # two tokens trade ids: ids would mean other words
    spec = json.loads((swapped / "tokenizer.json").read_text())
    words = spec["model"]["vocab"]
    a, b = "the", "of"
    words[a], words[b] = words[b], words[a]
    (swapped / "tokenizer.json").write_text(json.dumps(spec))
    capsys.readouterr()  # save_pretrained's progress bar
    for directory, why in ((bigger, "vocab_size=2001"), (short, "the model has 64 positions"),
                           (swapped, "the model's tokenizer differs from the one the shards were made with (id")):
        code = main(["--shards", *files(lengths[128]), "--init-from-hf", str(directory), "--out",
                     str(tmp_path / f"run-{directory.name}"), "--max-steps", "2", "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: --init-from-hf"), err
        assert why in err, err
