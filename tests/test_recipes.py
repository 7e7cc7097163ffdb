"""Pretraining recipes (issue 10): the shipped TOML files hold the papers' settings, `--recipe` lies
beneath `--config` and the command line and picks the phase after `--init-from`'s, bad recipes are
one line and exit 2, and `bertprep recipe` prints the whole pretraining (tokenize, shard at 128
and 512 with one --split-seed, train phase 1, train phase 2), whose commands, scaled down, run as
printed on the test corpus; the README shows its real output. The CLI side never imports torch."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bertprep.shards.errors import ConfigError
from bertprep.trainer import checkpoint as ckpt_io
from bertprep.trainer.recipes import available, load_recipe
from bertprep.trainer.run import main as train_main
from bertprep.trainer.run import parse_config
from conftest import WIKI, run_cli

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_recipes_hold_the_papers_settings():
    assert available() == ["bert-base", "bert-mini", "bert-small", "bert-tiny", "modern-base", "modern-tiny", "pre-ln"]
    base = load_recipe("bert-base")
    assert base.train == {"model": "base", "dropout": 0.1, "norm": "post", "max_position": 512, "batch_size": 256,
                          "lr": 1e-4, "min_lr": 0.0, "warmup_steps": 10000, "decay": "linear", "weight_decay": 0.01,
                          "beta1": 0.9, "beta2": 0.999, "eps": 1e-6, "clip": 1.0}
    assert [(p.max_len, p.max_predictions, p.max_steps) for p in base.phases] == [(128, 20, 900_000),
                                                                                  (512, 80, 1_000_000)]
    assert base.data == {"vocab-size": 30522, "lowercase": True, "nsp": True, "mask-prob": 0.15}
    pre = load_recipe("pre-ln")
    assert pre.train == base.train | {"norm": "pre", "lr": 3e-4, "warmup_steps": 0}
    assert pre.phases == base.phases and pre.data == base.data
    for size in ("tiny", "mini", "small"):
        r = load_recipe(f"bert-{size}")
        assert r.train == base.train | {"model": size} and r.phases == base.phases


def test_modern_recipes_hold_modernberts_settings():
    base = load_recipe("modern-base")
    assert base.data == {"vocab-size": 50368, "lowercase": False, "nsp": False, "strategy": "pack"}
    assert {k: base.train[k] for k in ("model", "mask_prob", "lr", "stable", "decay", "beta2", "weight_decay")} == {
        "model": "modern-base", "mask_prob": 0.3, "lr": 8e-4, "stable": 0.9, "decay": "1-sqrt", "beta2": 0.98,
        "weight_decay": 1e-5}
    tiny = load_recipe("modern-tiny")
    assert tiny.train["model"] == "modern-tiny" and tiny.train["mask_prob"] == 0.3 and tiny.data["strategy"] == "pack"
    assert [(p.max_len, p.max_steps) for p in tiny.phases] == [(128, 20_000)]


def test_modern_tiny_commands_run_as_printed(tmp_path, monkeypatch, capsys):
    """modern-tiny sized down: packed shards with one copy (the trainer re-masks), then a modern run at 30%."""
    monkeypatch.chdir(tmp_path)
    assert run_cli(["recipe", "modern-tiny", WIKI, "--steps", "6", "--batch-size", "8", "--vocab-size", "2000"]) == 0
    steps = _steps(capsys.readouterr().out)
    assert "--strategy pack --dupe-factor 1" in steps[1][1]
    for _, command in steps:
        argv = shlex.split(command)
        assert (run_cli(argv[1:]) if argv[0] == "bertprep" else train_main(argv[2:])) == 0, command
    ck = ckpt_io.load(ckpt_io.newest(tmp_path / "runs" / "modern-tiny-128"))
    assert ck["step"] == 6 and ck["model_config"]["arch"] == "modern"
    written = json.loads((tmp_path / "runs" / "modern-tiny-128" / "config.json").read_text())["train"]
    assert written["mask_prob"] == 0.3 and written["decay"] == "1-sqrt"


def test_recipe_lies_beneath_config_and_flags_and_follows_the_phase(tmp_path):
    shards = ["shards-128/train_wiki_128_1_00000.arrow"]  # parsing only: not opened
    cfg = parse_config(["--recipe", "bert-base", "--shards", *shards])
    assert (cfg.recipe, cfg.model.preset, cfg.optim.lr, cfg.optim.warmup_steps, cfg.loop.batch_size, cfg.loop.max_steps,
            cfg.model.max_position, cfg.optim.eps) == ("bert-base", "base", 1e-4, 10000, 256, 900_000, 512, 1e-6)
    toml = tmp_path / "run.toml"
    toml.write_text('lr = 5e-5\nwarmup-steps = 100\n')
    cfg = parse_config(["--recipe", "bert-base", "--config", str(toml), "--warmup-steps", "7", "--shards", *shards])
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.loop.batch_size) == (5e-5, 7, 256)  # file over recipe, flag over file
    toml.write_text('recipe = "pre-ln"\n')  # a recipe named in --config
    assert parse_config(["--config", str(toml), "--shards", *shards]).model.norm == "pre"
    # After --init-from RUN, the phase after RUN's: bert-base's phase 2 ends at step 1M.
    (tmp_path / "p1").mkdir()
    (tmp_path / "p1" / "config.json").write_text(json.dumps({"phase": {"index": 1, "name": "phase1-128"}}))
    cfg = parse_config(["--recipe", "bert-base", "--init-from", str(tmp_path / "p1"), "--shards", *shards])
    assert cfg.loop.max_steps == 1_000_000 and cfg.checkpoint.init_from == str(tmp_path / "p1")


def test_bad_recipes_are_one_line_and_exit_2(tmp_path, capsys):
    bad = {
        "unknown.toml": '[train]\nlearning-rate = 1\n[[phase]]\nmax-len = 128\nmax-steps = 10\n',
        "backwards.toml": '[[phase]]\nmax-len = 128\nmax-steps = 10\n[[phase]]\nmax-len = 512\nmax-steps = 5\n',
        "nophase.toml": '[train]\nlr = 1e-4\n',
        "loop.toml": f'extends = "{tmp_path / "loop.toml"}"\n',
        "notoml.toml": 'lr = = 1\n',
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
    for recipe, why in (("nope", "no such recipe (shipped: bert-base, "), ("unknown.toml", "'learning-rate'"),
                        ("backwards.toml", "must exceed the previous phase's 10"), ("nophase.toml", "at least one"),
                        ("loop.toml", "extends itself"), ("notoml.toml", "not a readable TOML")):
        path = recipe if recipe == "nope" else str(tmp_path / recipe)
        assert train_main(["--recipe", path, "--shards", "x.arrow"]) == 2, recipe
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and why in err, (recipe, err)
    with pytest.raises(ConfigError, match="shards"):  # where the data is never comes from a recipe
        (tmp_path / "where.toml").write_text('[train]\nshards = ["x"]\n[[phase]]\nmax-len = 8\nmax-steps = 1\n')
        load_recipe(str(tmp_path / "where.toml"))


def _steps(output: str) -> list[tuple[str, str]]:
    """(title, command) of each numbered step of `bertprep recipe`'s output."""
    return re.findall(r"^\d+\. (.+)\n   \$ (.+)$", output, flags=re.M)


def test_bertprep_recipe_prints_every_step_sized_for_the_corpus(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    with open(corpus, "wb") as f:
        f.truncate(500_000_000)  # sparse: only its size is read
    assert run_cli(["recipe", "bert-base", corpus, "--gpus", "8", "--tokens", tmp_path / "tokens"]) == 0
    out = capsys.readouterr().out
    assert "about 100,000,000 tokens (estimated from 500.0 MB" in out
    steps = _steps(out)
    assert [t.split(" (")[0].split(":")[0] for t, _ in steps] == [
        "Tokenize", "Shard at 128 tokens for phase 1", "Shard at 512 tokens for phase 2", "Train phase 1",
        "Train phase 2"]
    commands = [c for _, c in steps]
    assert commands[0] == f"bertprep tokenize {corpus} --out {tmp_path / 'tokens'} --vocab-size 30522"
    assert "--max-len 128 --max-predictions 20 --nsp" in commands[1]
    assert "--max-len 512 --max-predictions 80 --nsp" in commands[2]
    assert all("--split-seed 0" in c for c in commands[1:3])  # one split of documents for both lengths
    assert commands[3] == ("torchrun --nproc-per-node 8 trainer/run.py --recipe bert-base --shards shards-128/train_* "
                           "--out runs/bert-base-128 --batch-size 32")
    assert commands[4] == ("torchrun --nproc-per-node 8 trainer/run.py --recipe bert-base "
                           "--init-from runs/bert-base-128 --shards shards-512/train_* --out runs/bert-base-512 "
                           "--batch-size 32")
    assert run_cli(["recipe"]) == 0 and "pre-ln" in capsys.readouterr().out  # the list
    assert run_cli(["recipe", "bert-base"]) == 2 and "name the corpus" in capsys.readouterr().err
    # The command line never imports torch, even for this command.
    code = ("import sys; from bertprep.cli import main\ntry: main(['recipe', 'bert-tiny', sys.argv[1]])\n"
            "except SystemExit: pass\nsys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code, str(corpus)], capture_output=True).returncode == 0


def test_recipe_commands_run_as_printed(tmp_path, monkeypatch, capsys):
    """bert-tiny sized down to 20 steps of 8 examples on the test corpus: every printed command runs."""
    monkeypatch.chdir(tmp_path)
    assert run_cli(["recipe", "bert-tiny", WIKI, "--steps", "20", "--batch-size", "8", "--vocab-size", "2000"]) == 0
    steps = _steps(capsys.readouterr().out)
    assert len(steps) == 5
    for _, command in steps:
        argv = shlex.split(command)
        if argv[0] == "bertprep":
            assert run_cli(argv[1:]) == 0, command
        else:
            assert argv[:2] == ["python", "trainer/run.py"], command
            assert train_main(argv[2:]) == 0, command
    run = tmp_path / "runs" / "bert-tiny-512"
    ck = ckpt_io.load(ckpt_io.newest(run))
    assert ck["step"] == 20 and ck["phase"]["index"] == 2 and ck["phase"]["start_step"] == 18
    assert ck["data"]["max_len"] == 512 and ck["data"]["nsp"]
    shape = {k: ck["model_config"][k] for k in ("layers", "hidden", "max_len")}
    assert shape == {"layers": 2, "hidden": 128, "max_len": 512}
    written = json.loads((run / "config.json").read_text())["train"]
    assert written["recipe"] == "bert-tiny" and written["lr"] == 1e-4 and written["eps"] == 1e-6
    steps_logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
                    if "loss" in json.loads(line)]
    assert steps_logged == [18, 20]  # phase 1's last record, then phase 2's: one curve (log interval 100)


def test_readme_shows_the_real_recipe_output(tmp_path, monkeypatch, capsys):
    """README.md's `bertprep recipe` example is this command's output, verbatim."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^\$ (bertprep recipe bert-base corpus\.txt[^\n]*)\n(.*?)^```", readme, flags=re.M | re.S)
    assert m, "README.md has no `$ bertprep recipe bert-base corpus.txt ...` example"
    monkeypatch.chdir(tmp_path)
    with open("corpus.txt", "wb") as f:
        f.truncate(500_000_000)
    assert run_cli(shlex.split(m.group(1))[1:]) == 0
    assert capsys.readouterr().out.strip() == m.group(2).strip()
