"""`bertprep finetune` runs the fine-tuning checklist: a checkpoint whose weights match nothing is
refused; labels shifted by one class trip the label-balance and initial-loss checks; the worst
errors name real validation rows; a rating head learns a rating from the text, alone or next to
the classes; --seeds reports each run and their mean; sentence pairs are read as
[CLS] a [SEP] b [SEP]; --grad-accum takes the steps a larger batch takes; a loss
that becomes NaN stops the run with the trainer's one line."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from bertprep.finetune import checks, tune
from bertprep.trainer import checkpoint as ckpt_io
from bertprep.finetune.classifier import encode_texts, encoding_tokenizer
from conftest import DATA, run_cli
from test_finetune import pretrained  # noqa: F401 (the shared fixture: one pretraining per session)

ARGS = ["--max-len", "64", "--batch-size", "16"]


def stars(text: str) -> int:
    """A synthetic 1-5 rating the encoder can learn: sentence length in words."""
    return min(5, 1 + len(text.split()) // 6)


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """Shakespeare (0) against Python-docs (1) sentences with a `stars` rating and a `shifted` label
    (1, 2: the broken column); and pairs whose label is the source of the second sentence only."""
    d = tmp_path_factory.mktemp("tasks")
    shakespeare = [s.strip() for s in (DATA / "shakespeare.txt").read_text().splitlines() if 30 < len(s.strip()) < 160]
    docs = [s.strip() for s in (DATA / "pydocs.wiki.tokens").read_text().splitlines()
            if 30 < len(s.strip()) < 160 and not s.startswith(" =")]
    rng = random.Random(0)
    rng.shuffle(shakespeare)
    rng.shuffle(docs)
    rows = [(s, 0) for s in shakespeare[:150]] + [(s, 1) for s in docs[:150]]
    rng.shuffle(rows)
    for name, part in (("train", rows[:200]), ("val", rows[200:250]), ("test", rows[250:])):
        (d / f"{name}.jsonl").write_text("".join(json.dumps({"sentence": s, "label": y, "stars": stars(s),
                                                             "shifted": y + 1}) + "\n" for s, y in part))
    short = [[s for s in shakespeare if len(s) < 100], [s for s in docs if len(s) < 100]]
    pairs = [(rng.choice(short[rng.randrange(2)]), rng.choice(short[y]), y) for y in np.arange(300) % 2]
    for name, part in (("pairs_train", pairs[:240]), ("pairs_val", pairs[240:])):
        (d / f"{name}.jsonl").write_text("".join(json.dumps({"premise": a, "hypothesis": b, "label": int(y)}) + "\n"
                                                 for a, b, y in part))
    return d


def finetune(pretrained, tasks, out, *args, train="train", val="val"):
    return run_cli(["finetune", "--checkpoint", pretrained, "--train", tasks / f"{train}.jsonl", "--val",
                    tasks / f"{val}.jsonl", "--out", out, *ARGS, *map(str, args)])


def test_a_checkpoint_with_no_matching_weights_is_refused(pretrained, tasks, tmp_path, capsys):
    path = sorted((pretrained / "checkpoints").glob("step_*.pt"))[-1]
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"] = {f"_orig_mod.{k}": v for k, v in ckpt["model"].items()}  # saved from a torch.compile'd model
    bad = tmp_path / "compiled" / "checkpoints"
    bad.mkdir(parents=True)
    torch.save(ckpt_io.seal(ckpt), bad / path.name)  # sealed again: a file written that way, not damaged
    capsys.readouterr()
    assert finetune(bad.parent, tasks, tmp_path / "ft") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "none of its 46 tensors match" in err and "'_orig_mod.' prefix" in err
    assert not (tmp_path / "ft").exists()  # refused before anything was written
    # the count itself: names that match but with another shape do not count
    enc = {"embed.tok.weight": (10, 4), "layers.0.attn.q.weight": (4, 4), "mlm.bias": (10,)}
    line = checks.weights_line("x.pt", {"embed.tok.weight": (10, 4), "layers.0.attn.q.weight": (8, 8)}, enc, True)
    assert "1 of 2 tensors loaded from x.pt, identical after loading (1 start fresh)" in line


def test_labels_shifted_by_one_class_fire_the_start_of_run_checks(pretrained, tasks, tmp_path, capsys):
    capsys.readouterr()
    assert finetune(pretrained, tasks, tmp_path / "ok", "--epochs", "1") == 0
    ok = capsys.readouterr()
    assert "check: initial loss" in ok.out and ": ok" in ok.out
    assert "no training example" not in ok.err and "initial loss" not in ok.err
    assert "39 of 39 tensors loaded" in ok.out and "identical after loading" in ok.out
    assert finetune(pretrained, tasks, tmp_path / "shifted", "--epochs", "1", "--label-column", "shifted") == 0
    broken = capsys.readouterr()
    assert "train 0: 0 (0.0%), 1: 99 (49.5%), 2: 101 (50.5%)" in broken.out
    assert "class 0 has no training example" in broken.err and "shifted by one (1-based)?" in broken.err
    loss = [line for line in broken.out.splitlines() if line.startswith("check: initial loss")][0]
    assert "FAR OFF" in loss and float(loss.split()[3]) == pytest.approx(math.log(3), abs=0.02)
    assert "far from ln(2)" in broken.err and "3 outputs but the data uses 2 classes" in broken.err


def test_label_checks_on_plain_numbers():
    assert checks.initial_loss_line(0.70, 4, 2, 2)[1] is None
    assert "far from ln(2)" in checks.initial_loss_line(math.log(3), 4, 3, 2)[1]
    assert "already knows" in checks.initial_loss_line(0.2, 4, 2, 2)[1]
    _, warnings = checks.label_balance(np.arange(30) % 20, np.array([0, 1, 25]), 26)
    assert any("id or a count" in w for w in warnings) and any("label 25 that train never has" in w for w in warnings)
    assert checks.label_balance(np.array([0, 1, 0, 1]), np.array([0, 1]), 2)[1] == []
    y = np.array([0, 0, 0, 1])
    assert "predicting one class" in checks.one_class_warning(1, np.zeros(4, dtype=int), y)
    assert "equals the majority-class rate" in checks.one_class_warning(1, np.array([0, 0, 1, 1]), y)
    assert checks.one_class_warning(1, np.array([0, 0, 0, 1]), y) is None


def test_show_errors_names_real_validation_rows(pretrained, tasks, tmp_path, capsys):
    capsys.readouterr()
    assert finetune(pretrained, tasks, tmp_path / "ft", "--epochs", "1", "--lr", "3e-4", "--show-errors", "5",
                    "--show-batch") == 0
    out = capsys.readouterr().out.splitlines()
    val = lines(tasks / "val.jsonl")
    predictions = lines(tmp_path / "ft" / "predictions.jsonl")
    assert [p["text"] for p in predictions] == [v["sentence"] for v in val]  # every row, in file order
    assert [p["label"] for p in predictions] == [v["label"] for v in val]
    wrong = [p for p in predictions if not p["correct"]]
    assert wrong, "the one-epoch model should get some rows wrong"
    head = out.index(next(line for line in out if line.startswith("worst errors:")))
    shown = out[head + 1:head + 1 + min(5, len(wrong))]
    probs = []
    for line in shown:  # "  row 12: p=0.873 predicted 1, true 0 | text"
        row = int(line.split(":")[0].split()[-1])
        p, pred, true = float(line.split("p=")[1].split()[0]), int(line.split("predicted ")[1].split(",")[0]), \
            int(line.split("true ")[1].split()[0])
        text = line.split(" | ", 1)[1]
        assert val[row - 1]["sentence"] in (text, text[:-3] + val[row - 1]["sentence"][len(text) - 3:])
        assert true == val[row - 1]["label"] != pred
        assert predictions[row - 1]["pred"] == pred and predictions[row - 1]["prob"] == pytest.approx(p, abs=1e-3)
        probs.append(p)
    assert probs == sorted(probs, reverse=True) and max(probs) == pytest.approx(max(w["prob"] for w in wrong), abs=1e-3)
    batch = [line for line in out if line.startswith("  [CLS] ")]
    assert len(batch) == 16 and all(" [SEP]" in b and " -> label " in b for b in batch)
    assert any("[PAD]" in b for b in batch)


def test_a_rating_head_alone_learns_a_rating_from_the_text(pretrained, tasks, tmp_path, capsys):
    out = tmp_path / "rate"
    assert finetune(pretrained, tasks, out, "--task", "regression", "--regression-column", "stars", "--epochs", "6",
                    "--lr", "3e-3", "--dropout", "0") == 0
    records = [r for r in lines(out / "metrics.jsonl") if "val_mae" in r]
    assert len(records) == 6 and all("val_acc" not in r for r in records)
    spread = np.std([v["stars"] for v in lines(tasks / "val.jsonl")])
    assert min(r["val_mae"] for r in records) < 0.6 * spread  # always answering the mean: ~0.8 * spread
    kept = lines(out / "predictions.jsonl")[:3]  # what the kept model said about the first validation rows
    capsys.readouterr()
    assert run_cli(["predict", "--checkpoint", out, "--json", *(r["text"] for r in kept)]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx([r["pred_rating"] for r in kept], abs=1e-4)
    assert run_cli(["predict", "--checkpoint", out, "short one ."]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("  rating: ")


def test_classes_and_a_rating_train_together(pretrained, tasks, tmp_path, capsys):
    out = tmp_path / "both"
    assert finetune(pretrained, tasks, out, "--regression-column", "stars", "--regression-weight", "0.3",
                    "--epochs", "4", "--lr", "3e-3", "--dropout", "0") == 0
    records = [r for r in lines(out / "metrics.jsonl") if "val_loss" in r]
    assert {"epoch", "step", "loss", "val_loss", "val_acc", "val_mae", "seed"} <= set(records[-1])
    train = [v["stars"] for v in lines(tasks / "train.jsonl")]
    baseline = np.mean(np.abs(np.array([v["stars"] for v in lines(tasks / "val.jsonl")]) - np.mean(train)))
    assert max(r["val_acc"] for r in records) >= 0.85 and records[-1]["val_mae"] < 0.9 * baseline
    capsys.readouterr()
    assert run_cli(["predict", "--checkpoint", out, "--json", "Good night, sweet prince."]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert len(result["probs"]) == 2 and isinstance(result["rating"], float)


def test_seeds_report_each_run_and_their_mean(pretrained, tasks, tmp_path, capsys):
    out = tmp_path / "seeds"
    capsys.readouterr()
    assert finetune(pretrained, tasks, out, "--seeds", "1,2", "--epochs", "2", "--lr", "1e-3",
                    "--test", tasks / "test.jsonl") == 0
    printed = capsys.readouterr().out
    records = lines(out / "metrics.jsonl")
    best = {s: max(r["val_acc"] for r in records if r.get("seed") == s and "val_acc" in r) for s in (1, 2)}
    report = next(line for line in printed.splitlines() if line.startswith("seeds: "))
    assert report == f"seeds: 1: val acc {100 * best[1]:.2f}% " + report.split("% ", 1)[1]
    assert f"2: val acc {100 * best[2]:.2f}%" in report
    mean, std = np.mean(list(best.values())), np.std(list(best.values()), ddof=1)
    assert f"val acc over 2 seeds: {100 * mean:.2f}% ± {100 * std:.2f}%" in printed
    assert "test acc over 2 seeds" in printed
    [event] = [r for r in records if r.get("event") == "seeds"]
    assert event["seeds"] == [1, 2] and event["val_acc_mean"] == pytest.approx(mean)
    kept = torch.load(out / "best.pt", weights_only=True)
    assert kept["val_acc"] == max(best.values()) and kept["seed"] == event["best_seed"]


def test_sentence_pairs_run_end_to_end(pretrained, tasks, tmp_path, capsys):
    out = tmp_path / "pairs"
    capsys.readouterr()
    assert finetune(pretrained, tasks, out, "--text-column", "premise", "--text-column-b", "hypothesis",
                    "--epochs", "4", "--lr", "1e-3", "--show-batch", train="pairs_train", val="pairs_val") == 0
    printed = capsys.readouterr().out
    shown = [line for line in printed.splitlines() if line.startswith("  [CLS] ")]
    assert all(line.count("[SEP]") == 2 and "| segments 0x" in line for line in shown)
    # the label is the source of the second sentence: learning it means segment b is read
    assert max(r["val_acc"] for r in lines(out / "metrics.jsonl") if "val_acc" in r) >= 0.75  # chance: 0.5
    tok = encoding_tokenizer(out / "tokenizer.json", 64)
    [ex] = encode_texts(tok, ["thou art"], ["a list ."])
    sep = tok.token_to_id("[SEP]")
    first_sep = list(ex[0]).index(sep)
    assert ex[0][0] == tok.token_to_id("[CLS]") and ex[0][-1] == sep
    assert (ex[1][:first_sep + 1] == 0).all() and (ex[1][first_sep + 1:] == 1).all()
    assert run_cli(["predict", "--checkpoint", out, "--json", "Thou art a villain.\tReturn a new list."]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]) == 2
    assert run_cli(["predict", "--checkpoint", out, "no tab here"]) == 2
    assert "first<TAB>second" in capsys.readouterr().err


def test_grad_accum_takes_the_steps_a_larger_batch_takes(pretrained, tasks, tmp_path):
    common = ["--epochs", "1", "--lr", "1e-3", "--dropout", "0", "--max-len", "64"]
    base = ["finetune", "--checkpoint", pretrained, "--train", tasks / "train.jsonl", "--val", tasks / "val.jsonl"]
    assert run_cli([*base, "--out", tmp_path / "big", "--batch-size", "16", *common]) == 0
    assert run_cli([*base, "--out", tmp_path / "acc", "--batch-size", "8", "--grad-accum", "2", *common]) == 0
    big, acc = (torch.load(tmp_path / d / "best.pt", weights_only=True) for d in ("big", "acc"))
    assert big["model"].keys() == acc["model"].keys()
    for k, v in big["model"].items():
        assert torch.allclose(v, acc["model"][k], atol=1e-4), k
    assert [r["step"] for r in lines(tmp_path / "acc" / "metrics.jsonl")] == [13]


@pytest.mark.parametrize("args, needle", [
    (["--task", "regression"], "--task regression needs --regression-column"),
    (["--seeds", "1,x"], "--seeds takes comma-separated integers"),
    (["--seeds", "1,1"], "--seeds has a seed twice"),
    (["--grad-accum", "0"], "--grad-accum must be in 1..65536, got 0"),
    (["--regression-column", "sentence"], "'sentence' value"),
    (["--text-column-b", "premise"], "no column 'premise'"),
])
def test_bad_flags_get_one_line_and_exit_2(pretrained, tasks, tmp_path, capsys, args, needle):
    capsys.readouterr()
    assert finetune(pretrained, tasks, tmp_path / "x", *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, err


def test_a_loss_that_becomes_nan_stops_fine_tuning_as_it_stops_pretraining(pretrained, tasks, tmp_path, capsys,
                                                                          monkeypatch):
    # --lr is bounded (at most 1), so the divergence is made here: every loss from the first step on is NaN
    real = tune.example_losses
    monkeypatch.setattr(tune, "example_losses", lambda *a, **kw: real(*a, **kw) * float("nan"))
    capsys.readouterr()
    assert finetune(pretrained, tasks, tmp_path / "ft", "--epochs", "2") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error: loss is nan at step" in err and "lower --lr" in err, err
