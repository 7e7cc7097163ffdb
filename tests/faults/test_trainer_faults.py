"""Trainer faults: the trainer killed with SIGKILL between checkpoints resumes from the last complete
one and reproduces the uninterrupted run's losses exactly; killed while a checkpoint is being
written, the previous checkpoint loads, `--resume` continues from it, the partial file never has a
final name and the next run removes it. Damaged data (a flipped byte in a training or validation
shard, a truncated shard, a shard of another vocab or length, a manifest that does not list a file
or lists a missing one, an id outside the vocab in a shard without a manifest) and a checkpoint
cut short are refused with one line naming the file and the problem, before a single step is
trained (`--no-verify-shards` skips the data check); a checkpoint by `--resume`, `--init-from`,
`predict`, `export` and `finetune` alike. A pickle checkpoint carrying a payload (and a HuggingFace
pytorch_model.bin carrying one, through `--init-from-hf`) is refused everywhere a checkpoint is
read, and the payload never runs. One flipped bit inside a checkpoint's tensors (pretraining or
fine-tuned) and a checkpoint whose weights disagree with its recorded shape (or a HuggingFace
directory whose weights disagree with its config.json) are refused by every reader in one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from bertprep.shards.arrow_ipc import ArrowShardWriter
from bertprep.shards.atomic import sha256_file
from bertprep.shards.reader import open_shard
from bertprep.trainer import checkpoint as ckpt_io
from bertprep.trainer import run as trainer
from bertprep.trainer.synthetic import synthetic_columns, synthetic_meta
from conftest import PLAIN, run_cli, train_losses
from faultkit import TRAINER, finish, start

MANIFEST = "pydocs_64_1.manifest.json"
# A 32-wide model at a constant learning rate after warm-up (--min-lr = --lr), so a run's losses do
# not depend on --max-steps: a run killed on its way to 100,000 steps is compared with one of 24.
FLAGS = ["--model", "tiny", "--hidden", "32", "--heads", "2", "--ffn", "64", "--batch-size", "8", "--lr", "3e-3",
         "--min-lr", "3e-3", "--warmup-steps", "2", "--log-interval", "1", "--val-interval", "0", "--seed", "7",
         "--no-tensorboard", "--quiet"]


def make_shards(tokens, out, max_len=64):
    assert run_cli(["shard", "--tokens", tokens, "--out", out, "--max-len", max_len, "--seed", "1",
                    "--examples-per-shard", "150", "--split", "0.8,0.1,0.1"]) == 0
    return out


@pytest.fixture(scope="module")
def built(token_store, tmp_path_factory):
    """Our shard run (3 train files and a val file with a manifest), a run at another length, and a
    run of another vocab whose files carry exactly our names (Shakespeare labelled 'pydocs')."""
    root = tmp_path_factory.mktemp("trainer-faults")
    other_tokens = root / "other_tokens"
    assert run_cli(["tokenize", PLAIN, "--out", other_tokens, "--vocab-size", "600", "--label", "pydocs"]) == 0
    return {"good": make_shards(token_store, root / "good"), "length": make_shards(token_store, root / "length", 32),
            "vocab": make_shards(other_tokens, root / "vocab")}


@pytest.fixture
def shards(built, tmp_path) -> Path:
    """A private copy of the good run, for tests that damage it."""
    return shutil.copytree(built["good"], tmp_path / "shards")


def train_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("train_*"))




def train_args(folder: Path, out: Path, *extra) -> list[str]:
    return ["--shards", *map(str, train_files(folder)), "--out", str(out), *FLAGS, *map(str, extra)]


def refused(capsys, entry, args) -> str:
    """Run an entry point in-process; assert exit 2, exactly one `error:` line on stderr and no
    warning (torch's loaders warn on some hostile files); return the line."""
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = entry([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), (code, err)
    assert not caught, [str(w.message)[:200] for w in caught]
    return err


def trainer_refuses(capsys, folder: Path, out: Path, *extra) -> str:
    err = refused(capsys, trainer.main, train_args(folder, out, "--max-steps", 4, *extra))
    trained = out / "metrics.jsonl"
    assert not (trained.exists() and train_losses(out)), "trained on bad data"
    assert not ckpt_io.list_checkpoints(out)
    return err


# --- kills ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(built, tmp_path_factory) -> dict[int, float]:
    """The uninterrupted run: 24 steps, a checkpoint every 8."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert trainer.main(train_args(built["good"], out, "--max-steps", 24, "--ckpt-interval", 8)) == 0
    return train_losses(out)


def wait_for(condition, proc, timeout=60.0, what="") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the trainer ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout}s"
        time.sleep(0.005)


def steps_logged(out: Path) -> int:
    try:
        text = (out / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line).get("step", 0) for line in text.splitlines()[:-1]]  # the last line may be torn
    return max(steps, default=0)


def test_sigkill_between_checkpoints_resumes_to_the_uninterrupted_losses(built, reference, tmp_path):
    out = tmp_path / "run"
    p = start(*train_args(built["good"], out, "--max-steps", 100_000, "--ckpt-interval", 8), command=TRAINER)
    wait_for(lambda: steps_logged(out) >= 11, p, what="step 11")
    os.kill(p.pid, signal.SIGKILL)
    finish(p, timeout=30)
    last = ckpt_io.newest(out)
    done = steps_logged(out)
    assert last is not None and done > int(last.stem[5:]), "the kill did not land between checkpoints"
    assert trainer.main(train_args(built["good"], out, "--max-steps", 24, "--ckpt-interval", 8, "--resume")) == 0
    assert train_losses(out) == reference  # the killed steps are dropped, the rest reproduced exactly


SLOW_SAVE = r"""
import io, sys, time
import torch
from bertprep.trainer import run
marker, real_save = sys.argv[1], torch.save

def slow_save(obj, f, *args, **kwargs):
    # Half of the bytes, then a pause long enough for the test to kill the process mid-write.
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    if obj["step"] == 8:
        open(marker, "w").close()
        time.sleep(600)
    f.write(data[len(data) // 2:])

torch.save = slow_save
sys.exit(run.main(sys.argv[2:]))
"""


def test_sigkill_while_a_checkpoint_is_written_keeps_the_previous_one(built, reference, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "writing"
    p = start("-c", SLOW_SAVE, marker, *train_args(built["good"], out, "--max-steps", 24, "--ckpt-interval", 4),
              command=[sys.executable])
    wait_for(marker.exists, p, what="the write of checkpoint 8")
    os.kill(p.pid, signal.SIGKILL)
    finish(p, timeout=30)
    folder = ckpt_io.checkpoint_dir(out)
    partial = [f.name for f in folder.iterdir() if f.name not in ("step_00000004.pt",)]
    assert [f.name for f in ckpt_io.list_checkpoints(out)] == ["step_00000004.pt"]
    assert len(partial) == 1 and partial[0].startswith(".step_00000008.pt.") and partial[0].endswith(".tmp"), partial
    assert ckpt_io.load(folder / "step_00000004.pt")["step"] == 4
    (out / ".config.json.99999.tmp").write_text("{")  # as a kill while config.json was written leaves it
    summary = trainer.train(trainer.parse_config(train_args(built["good"], out, "--max-steps", 24,
                                                            "--ckpt-interval", 4, "--resume")))
    assert summary["first_step"] == 4 and summary["step"] == 24
    assert train_losses(out) == reference
    for d in (out, folder):
        assert not [f for f in d.iterdir() if f.name.endswith(".tmp")], f"temporary files left in {d}"


# --- damaged data --------------------------------------------------------------------------------

def flip_byte(f: Path, where: float = 0.5) -> None:
    data = bytearray(f.read_bytes())
    data[int(len(data) * where)] ^= 0x04
    f.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_training_shard_is_named(shards, tmp_path, capsys):
    f = train_files(shards)[1]
    flip_byte(f)
    s = open_shard(f)  # invisible to Arrow: the file opens and reads
    s.slice(0, s.num_examples)
    err = trainer_refuses(capsys, shards, tmp_path / "run")
    assert f.name in err and "sha256 mismatch" in err, err


def test_a_flipped_byte_in_a_validation_shard_is_named(shards, tmp_path, capsys):
    f = sorted(shards.glob("val_*"))[0]
    flip_byte(f)
    err = trainer_refuses(capsys, shards, tmp_path / "run", "--val-interval", 2)
    assert f.name in err and "sha256 mismatch" in err, err


def test_a_truncated_shard_is_named(shards, tmp_path, capsys):
    f = train_files(shards)[0]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    err = trainer_refuses(capsys, shards, tmp_path / "run")
    assert f.name in err and ("truncated" in err or "sha256 mismatch" in err or "unreadable" in err), err


@pytest.mark.parametrize("other", ["length", "vocab"])
@pytest.mark.parametrize("manifest_agrees", [False, True])
def test_a_shard_of_another_run_under_our_name_is_refused(built, shards, tmp_path, capsys, other, manifest_agrees):
    """The first training file swapped for another run's file of the same name; with the manifest
    entry edited to match its bytes, its settings still disagree with the manifest's."""
    f = train_files(shards)[0]
    shutil.copyfile(train_files(built[other])[0], f)
    if manifest_agrees:
        m = json.loads((shards / MANIFEST).read_text())
        entry = next(e for e in m["files"] if e["name"] == f.name)
        entry["sha256"], entry["examples"] = sha256_file(f), open_shard(f).num_examples
        (shards / MANIFEST).write_text(json.dumps(m))
    err = trainer_refuses(capsys, shards, tmp_path / "run")
    setting = "max_len" if other == "length" else "vocab_size"
    assert f.name in err and (setting in err or "sha256 mismatch" in err), err


def test_all_shards_of_another_vocab_do_not_resume_a_checkpoint(built, tmp_path, capsys):
    out = tmp_path / "run"
    assert trainer.main(train_args(built["good"], out, "--max-steps", 2)) == 0
    err = refused(capsys, trainer.main, train_args(built["vocab"], out, "--max-steps", 4, "--resume"))
    assert "step_00000002.pt" in err and "vocab_size" in err, err


def test_a_file_the_manifest_does_not_list_is_refused(shards, tmp_path, capsys):
    stray = shards / train_files(shards)[0].name.replace("_00000", "_00042")
    shutil.copyfile(train_files(shards)[0], stray)
    err = trainer_refuses(capsys, shards, tmp_path / "run")
    assert stray.name in err and "not listed" in err, err


def test_a_listed_file_that_is_missing_is_refused(shards, tmp_path, capsys):
    gone = train_files(shards)[1]
    gone.unlink()
    err = trainer_refuses(capsys, shards, tmp_path / "run")
    assert gone.name in err and "missing" in err, err


def test_no_verify_shards_skips_the_check(shards, tmp_path):
    """--no-verify-shards is for data already verified: a run that lost a file trains on the rest."""
    train_files(shards)[1].unlink()
    assert trainer.main(train_args(shards, tmp_path / "run", "--max-steps", 2, "--no-verify-shards")) == 0


def test_an_id_outside_the_vocab_in_a_shard_without_manifest_is_refused(tmp_path, capsys):
    """No manifest to compare with: the trainer still checks every example's value ranges, so a
    bad id is one line instead of an IndexError deep in the embedding."""
    folder = tmp_path / "syn"
    folder.mkdir()
    meta = synthetic_meta(max_len=32, vocab_size=64, nsp=False)
    cols = synthetic_columns(np.random.default_rng(0), 64, meta)
    cols["input_ids"][37, 3] = 60_000
    f = folder / "train_syn_32_1_00000.arrow"
    w = ArrowShardWriter(f, meta)
    w.write(cols)
    w.close()
    err = trainer_refuses(capsys, folder, tmp_path / "run")
    assert f.name in err and "example 37" in err and "outside the vocab" in err, err


# --- damaged and hostile checkpoints -------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(built, tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert trainer.main(train_args(built["good"], out, "--max-steps", 4, "--ckpt-interval", 2)) == 0
    return out


def readers(built: dict, run: Path, ckpt: Path, tmp_path: Path) -> dict:
    """Every command that reads a pretraining checkpoint, pointed at `ckpt` (or its run directory)."""
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps({"sentence": s, "label": i % 2}) + "\n"
                            for i, s in enumerate(["a fine day .", "the list is sorted ."] * 4)))
    finetune = ["finetune", "--train", data, "--val", data, "--out", tmp_path / "ft", "--epochs", "1"]
    return {
        "train --resume": (trainer.main, train_args(built["good"], run, "--max-steps", 12, "--resume")),
        "train --init-from": (trainer.main, train_args(built["good"], tmp_path / "phase2", "--max-steps", 12,
                                                       "--init-from", ckpt)),
        "predict (file)": (run_cli, ["predict", "--checkpoint", ckpt, "the [MASK] function ."]),
        "predict (run)": (run_cli, ["predict", "--checkpoint", run, "the [MASK] function ."]),
        "export": (run_cli, ["export", "--checkpoint", ckpt, "--hf", tmp_path / "hf"]),
        "finetune": (run_cli, [*finetune, "--checkpoint", ckpt]),
    }


def test_a_checkpoint_cut_short_is_named_by_every_reader(built, trained, tmp_path, capsys):
    run = shutil.copytree(trained, tmp_path / "run")
    last = ckpt_io.newest(run)
    last.write_bytes(last.read_bytes()[: last.stat().st_size * 2 // 3])
    for name, (entry, args) in readers(built, run, last, tmp_path).items():
        err = refused(capsys, entry, args)
        assert last.name in err and "truncated" in err, (name, err)


class OpensAFile:
    """Unpickling this calls open(path, "w"): the file appearing is proof a reader ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_checkpoint_with_a_payload_is_refused_and_never_runs(built, trained, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    run = shutil.copytree(trained, tmp_path / "run")
    evil = ckpt_io.checkpoint_path(run, 10)
    real = ckpt_io.load(ckpt_io.newest(run))
    torch.save(dict(real, step=10, model=OpensAFile(marker)), evil)  # a checkpoint in every other respect
    hf = tmp_path / "hf-evil"  # a HuggingFace directory whose pytorch_model.bin carries the payload
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_act": "gelu"}))
    torch.save({"bert.embeddings.word_embeddings.weight": OpensAFile(marker)}, hf / "pytorch_model.bin")
    entries = readers(built, run, evil, tmp_path) | {
        "train --init-from-hf": (trainer.main, train_args(built["good"], tmp_path / "from-hf", "--max-steps", 2,
                                                          "--init-from-hf", hf)),
        "finetune --init-from-hf": (run_cli, ["finetune", "--init-from-hf", hf, "--train", tmp_path / "labelled.jsonl",
                                              "--val", tmp_path / "labelled.jsonl", "--out", tmp_path / "ft2"]),
    }
    for name, (entry, args) in entries.items():
        err = refused(capsys, entry, args)
        where = "pytorch_model.bin" if "hf" in name else evil.name
        assert where in err and "refused" in err and "io.open" in err, (name, err)
    assert not marker.exists(), "a checkpoint's pickle payload ran"


def flip_inside(path: Path, tensor: torch.Tensor) -> None:
    """Flip one bit in the middle of `tensor`'s bytes where the file stores them (zip entries are
    stored uncompressed): damage the weights-only reader cannot see."""
    raw, blob = path.read_bytes(), tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    at = raw.find(blob)
    assert at > 0 and raw.find(blob, at + 1) < 0, "the tensor's bytes are not found once in the file"
    at += len(blob) // 2
    path.write_bytes(raw[:at] + bytes([raw[at] ^ 0x10]) + raw[at + 1:])


def test_a_flipped_bit_inside_a_checkpoint_is_refused_by_every_reader(built, trained, tmp_path, capsys):
    """Issue 18 item 1: the seal (a sha256 of the content) catches what the zip container cannot."""
    run = shutil.copytree(trained, tmp_path / "run")
    last = ckpt_io.newest(run)
    moment = next(iter(ckpt_io.load(last)["optimizer"]["state"].values()))["exp_avg"]
    flip_inside(last, moment)
    for name, (entry, args) in readers(built, run, last, tmp_path).items():
        err = refused(capsys, entry, args)
        assert last.name in err and "sha256 mismatch" in err, (name, err)
    assert not (tmp_path / "hf").exists() and not (tmp_path / "ft").exists()  # refused before writing


def test_a_checkpoint_whose_weights_disagree_with_its_shape_is_refused_by_every_reader(built, trained, tmp_path,
                                                                                      capsys):
    """Issue 18 item 2: one loader checks the tensors against the recorded shape, for every reader
    (export used to write a HuggingFace directory whose config.json and weights disagree)."""
    run = shutil.copytree(trained, tmp_path / "run")
    last = ckpt_io.newest(run)
    ck = ckpt_io.load(last)
    ck["model_config"]["ffn"] *= 2  # a file whose record lies about its weights, sealed as written
    torch.save(ckpt_io.seal(ck), last)
    for name, (entry, args) in readers(built, run, last, tmp_path).items():
        err = refused(capsys, entry, args)
        assert last.name in err and "disagree with the recorded model shape" in err, (name, err)
    assert not (tmp_path / "hf").exists()


def test_a_huggingface_directory_whose_weights_disagree_with_its_config_is_refused(trained, tmp_path, capsys):
    hf = tmp_path / "hf"
    assert run_cli(["export", "--checkpoint", trained, "--hf", hf]) == 0
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps(config | {"intermediate_size": 2 * config["intermediate_size"]}))
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps({"sentence": s, "label": i % 2}) + "\n" for i, s in enumerate(["a b", "c d"] * 4)))
    err = refused(capsys, run_cli, ["finetune", "--init-from-hf", hf, "--train", data, "--val", data,
                                    "--out", tmp_path / "ft", "--epochs", "1"])
    assert str(hf) in err and "disagree with the recorded model shape" in err, err


def test_a_flipped_bit_inside_a_finetuned_checkpoint_is_refused(built, trained, tmp_path, capsys):
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps({"sentence": s, "label": i % 2}) + "\n"
                            for i, s in enumerate(["a fine day .", "the list is sorted ."] * 4)))
    ft = tmp_path / "ft"
    assert run_cli(["finetune", "--checkpoint", trained, "--train", data, "--val", data, "--out", ft,
                    "--epochs", "1", "--max-len", "32"]) == 0
    best = ft / "best.pt"
    flip_inside(best, torch.load(best, weights_only=True)["model"]["head.weight"])
    for args in (["predict", "--checkpoint", ft, "a fine day ."], ["report", ft, "-o", tmp_path / "r.html"]):
        err = refused(capsys, run_cli, args)
        assert "best.pt" in err and "sha256 mismatch" in err, (args, err)
