"""After pretraining: fine-tuning learns a real labelled task and its checkpoint reloads to the same
predictions; fill-mask ranks the right token first on an overfit sentence; export to and import
from HuggingFace give identical logits both ways, with and without NSP; bad input is one line."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from bertprep.shards.reader import open_shard
from bertprep.trainer.config import train_config
from bertprep.finetune.classifier import collate, encoding_tokenizer, load_classifier
from bertprep.trainer.interchange import load_pretrained
from bertprep.trainer.loop import train
from bertprep.trainer.model import Bert
from conftest import DATA, run_cli


def pretrain(shards, out, steps, **kw):
    # A position table of the shards' length (not the default 512): the initial weights these tests
    # were tuned with (the table's size shifts the random draws of every weight after it).
    kw.setdefault("max_position", open_shard(sorted(shards)[0]).meta["max_len"])
    cfg = train_config(shards=tuple(map(str, shards)), model="tiny", layers=2, hidden=64, heads=2, ffn=256,
                      max_steps=steps, batch_size=32, lr=kw.pop("lr", 1e-3), warmup_steps=10, dropout=0.0,
                      val_interval=0, log_interval=max(steps // 2, 1), ckpt_interval=steps, out=str(out),
                      tensorboard=False, quiet=True, **kw)
    train(cfg)
    return out


_SESSION: dict = {}  # built once per session, also for tests/test_finetune_checks.py, which imports the fixture


@pytest.fixture(scope="module")
def pretrained(token_store, tmp_path_factory):
    """A tiny encoder pretrained briefly on the Python-docs slice (with NSP, so it has a pooler)."""
    if "pretrained" not in _SESSION:
        root = tmp_path_factory.mktemp("pre")
        assert run_cli(["shard", "--tokens", token_store, "--out", root / "shards", "--max-len", "64", "--nsp",
                        "--seed", "1"]) == 0
        _SESSION["pretrained"] = pretrain(sorted((root / "shards").glob("train_*")), root / "run", 150)
    return _SESSION["pretrained"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Sentences from Shakespeare (0) and the Python docs (1): a real two-class task."""
    d = tmp_path_factory.mktemp("labelled")
    shakespeare = [s.strip() for s in (DATA / "shakespeare.txt").read_text().splitlines() if 30 < len(s.strip()) < 160]
    docs = [s.strip() for s in (DATA / "pydocs.wiki.tokens").read_text().splitlines()
            if 30 < len(s.strip()) < 160 and not s.startswith(" =")]
    rng = random.Random(0)
    rng.shuffle(shakespeare)
    rng.shuffle(docs)
    rows = [(s, 0) for s in shakespeare[:150]] + [(s, 1) for s in docs[:150]]
    rng.shuffle(rows)
    for name, part in (("train", rows[:200]), ("val", rows[200:250]), ("test", rows[250:])):
        (d / f"{name}.jsonl").write_text("".join(json.dumps({"sentence": s, "label": y}) + "\n" for s, y in part))
    return d


def test_finetuning_learns_and_the_checkpoint_predicts_identically(pretrained, labelled, tmp_path, capsys):
    out = tmp_path / "ft"
    code = run_cli(["finetune", "--checkpoint", pretrained, "--train", labelled / "train.jsonl", "--val",
                    labelled / "val.jsonl", "--test", labelled / "test.jsonl", "--out", out, "--epochs", "3",
                    "--lr", "1e-3", "--batch-size", "16", "--max-len", "64"])
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"epoch", "step", "loss", "val_loss", "val_acc"} <= set(records[0])
    assert records[-1]["test_acc"] >= 0.8  # chance is 0.5
    # the saved best model reloads and predicts what the CLI prints
    model, ckpt = load_classifier(out / "best.pt")
    tok = encoding_tokenizer(out / "tokenizer.json", 64)
    sentences = ["Thou art a villain, and I will have thy life.", "The function returns a list of strings."]
    batch = collate([np.asarray(e.ids) for e in tok.encode_batch(sentences)], ckpt["data"]["special_ids"]["pad"])
    with torch.no_grad():
        probs = model(batch["input_ids"], batch["token_type_ids"], batch["length"])[0].softmax(-1)
    capsys.readouterr()
    assert run_cli(["predict", "--checkpoint", out, "--json", *sentences]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert np.allclose(printed, probs.numpy(), atol=1e-5)
    assert [int(np.argmax(p)) for p in printed] == [0, 1]


def test_from_scratch_trains_the_same_architecture(pretrained, labelled, tmp_path):
    # At a learning rate too small to move anything, the weights a run keeps are the ones it started
    # from: the pretrained ones without --from-scratch, unrelated random ones with it. ("The weights
    # changed" would not tell them apart: any fine-tuning changes them.)
    pre = load_pretrained(pretrained).state["embed.tok.weight"].float().flatten()
    kept = {}
    for name, extra in (("scratch", ["--from-scratch"]), ("loaded", [])):
        out = tmp_path / name
        assert run_cli(["finetune", "--checkpoint", pretrained, "--train", labelled / "train.jsonl", "--val",
                        labelled / "val.jsonl", "--out", out, "--epochs", "1", "--max-len", "64", "--lr", "1e-12",
                        *extra]) == 0
        state = torch.load(out / "best.pt", weights_only=True)["model"]
        assert state["bert.embed.tok.weight"].shape == load_pretrained(pretrained).state["embed.tok.weight"].shape
        kept[name] = state["bert.embed.tok.weight"].float().flatten()
    assert torch.corrcoef(torch.stack([kept["loaded"], pre]))[0, 1] > 0.999
    assert abs(torch.corrcoef(torch.stack([kept["scratch"], pre]))[0, 1]) < 0.1


def test_fill_mask_ranks_the_right_token_first_on_an_overfit_sentence(tmp_path, capsys):
    corpus = tmp_path / "paris.txt"
    corpus.write_text("the capital of france is paris .\n\n" * 300)
    assert run_cli(["tokenize", corpus, "--out", tmp_path / "tok", "--vocab-size", "128"]) == 0
    assert run_cli(["shard", "--tokens", tmp_path / "tok", "--out", tmp_path / "sh", "--max-len", "16",
                    "--dupe-factor", "4", "--split", "0.98,0.01,0.01"]) == 0
    run = pretrain(sorted((tmp_path / "sh").glob("train_*")), tmp_path / "run", 250, lr=3e-3)
    capsys.readouterr()
    assert run_cli(["predict", "--checkpoint", run, "--json", "--top-k", "3", "the capital of france is [MASK] .",
                    "the [MASK] of france is paris ."]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result[0][0][0]["token"] == "paris" and result[1][0][0]["token"] == "capital"
    assert result[0][0][0]["prob"] > 0.5 and len(result[0][0]) == 3
    assert run_cli(["predict", "--checkpoint", run, "paris is [MASK] [MASK] ."]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[1:]] == ["  [MASK] 1", "  [MASK] 2"]
    assert lines[1].split(": ")[1].startswith("of ") and lines[2].split(": ")[1].startswith("france ")


def _hf_logits(model, ids, lengths):
    att = (torch.arange(ids.size(1))[None] < lengths[:, None]).long()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=att, token_type_ids=torch.zeros_like(ids))
    return out.logits if hasattr(out, "logits") else out.prediction_logits, att.bool()


@pytest.mark.parametrize("nsp", [False, True], ids=["mlm", "nsp"])
def test_export_then_transformers_load_gives_identical_logits(token_store, tmp_path, nsp):
    transformers = pytest.importorskip("transformers")
    args = ["--nsp"] if nsp else []
    assert run_cli(["shard", "--tokens", token_store, "--out", tmp_path / "sh", "--max-len", "32", *args]) == 0
    run = pretrain(sorted((tmp_path / "sh").glob("train_*")), tmp_path / "run", 5)
    assert run_cli(["export", "--checkpoint", run, "--hf", tmp_path / "hf"]) == 0
    cls = transformers.BertForPreTraining if nsp else transformers.BertForMaskedLM
    hf, info = cls.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    hf.eval()
    pre = load_pretrained(run)
    ours = Bert(pre.model_config)
    ours.load_state_dict(pre.state)
    ours.eval()
    ids = torch.randint(5, pre.model_config.vocab_size, (3, 32))
    lengths = torch.tensor([32, 20, 7])
    theirs, real = _hf_logits(hf, ids, lengths)
    with torch.no_grad():
        mine, _ = ours(ids, torch.zeros_like(ids), lengths)
    assert (theirs - mine)[real].abs().max() < 1e-4
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.convert_tokens_to_ids("[MASK]") == pre.data["special_ids"]["mask"]


@pytest.mark.parametrize("nsp", [False, True], ids=["mlm", "nsp"])
def test_a_random_transformers_bert_imports_with_identical_logits(token_store, tmp_path, nsp):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=2000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=128, max_position_embeddings=48)
    torch.manual_seed(0)
    hf = (transformers.BertForPreTraining if nsp else transformers.BertForMaskedLM)(config)
    hf.eval()
    hf.save_pretrained(tmp_path / "hf")
    for name in ("tokenizer.json", "vocab.txt"):
        (tmp_path / "hf" / name).write_bytes((token_store / name).read_bytes())
    pre = load_pretrained(hf_dir=tmp_path / "hf")
    assert pre.model_config.nsp == nsp
    ours = Bert(pre.model_config)
    ours.load_state_dict(pre.state)
    ours.eval()
    ids = torch.randint(5, 2000, (2, 48))
    lengths = torch.tensor([48, 11])
    theirs, real = _hf_logits(hf, ids, lengths)
    with torch.no_grad():
        mine, nsp_logits = ours(ids, torch.zeros_like(ids), lengths)
    assert (theirs - mine)[real].abs().max() < 1e-4
    if nsp:
        att = real.long()
        with torch.no_grad():
            seq = hf(input_ids=ids, attention_mask=att, token_type_ids=torch.zeros_like(ids)).seq_relationship_logits
        assert (seq - nsp_logits).abs().max() < 1e-4


def test_bad_input_gets_one_line_and_exit_2(pretrained, labelled, tmp_path, capsys):
    bad_labels = tmp_path / "bad.jsonl"
    bad_labels.write_text(json.dumps({"sentence": "fine", "label": "positive"}) + "\n")
    no_column = tmp_path / "nocol.jsonl"
    no_column.write_text(json.dumps({"text": "fine", "label": 1}) + "\n")
    train = labelled / "train.jsonl"
    cases = [
        (["finetune", "--checkpoint", tmp_path / "nowhere", "--train", train, "--val", train], "no such checkpoint"),
        (["finetune", "--checkpoint", pretrained, "--train", bad_labels, "--val", train, "--max-len", "64"],
         "not an integer"),
        (["finetune", "--checkpoint", pretrained, "--train", no_column, "--val", train, "--max-len", "64"],
         "no column 'sentence'"),
        (["finetune", "--checkpoint", pretrained, "--train", train, "--val", train, "--max-len", "5000"],
         "longer than the model's"),
        (["predict", "--checkpoint", pretrained, "a sentence without a mask"], "no [MASK]"),
        (["predict", "--checkpoint", tmp_path / "nowhere", "a [MASK]"], "no such checkpoint"),
        (["export", "--checkpoint", tmp_path / "nowhere", "--hf", tmp_path / "x"], "no such checkpoint"),
    ]
    for args, needle in cases:
        capsys.readouterr()
        code = run_cli(args)
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, (args, err)
