"""Every path a command takes, given the wrong kind of path: a file where a directory is needed, a
directory where a file is needed, a path under a file, a name too long for the file system, and a
missing input. Each is one `error:` line naming that path, exit 2, no traceback, nothing written.

The table is generated: every `click.Path` argument or option of every subcommand, and the path
options listed in OTHER_PATHS, must have a kind in KINDS (a new path option must be classified
here, so it is tested), and each kind names the wrong paths to feed it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import pytest

from bertprep.cli import cli
from bertprep.trainer import run as trainer
from conftest import WIKI, run_cli

LONG = "n" * 300  # longer than NAME_MAX (255) on every common file system
# What each kind of path must refuse.
BAD = {
    "in-file": ("dir", "under-file", "long", "missing"),
    "in-dir": ("file", "under-file", "long", "missing"),
    "in-any": ("under-file", "long", "missing"),  # a file or a directory (a run, a folder of shards)
    "out-dir": ("file", "under-file", "long"),
    "out-file": ("dir", "under-file", "long"),
}
# (command, flag or argument name) -> kind
KINDS = {
    ("tokenize", "corpus"): "in-file", ("tokenize", "--out"): "out-dir", ("tokenize", "--vocab"): "in-file",
    ("tokenize", "--tokenizer"): "in-file",
    ("shard", "--tokens"): "in-dir", ("shard", "--out"): "out-dir",
    ("inspect", "shard_file"): "in-file", ("inspect", "--vocab"): "in-file",
    ("verify", "paths"): "in-any",
    ("finetune", "--checkpoint"): "in-any", ("finetune", "--init-from-hf"): "in-dir",
    ("finetune", "--train"): "in-file", ("finetune", "--val"): "in-file", ("finetune", "--out"): "out-dir",
    ("predict", "--checkpoint"): "in-any", ("predict", "--file"): "in-file",
    ("export", "--checkpoint"): "in-any", ("export", "--hf"): "out-dir",
    ("plot", "runs"): "in-dir", ("plot", "--out"): "out-file",
    ("report", "run"): "in-dir", ("report", "--out"): "out-file", ("report", "--val"): "in-file",
    ("recipe", "corpus"): "in-file",
    ("train", "--shards"): "in-file", ("train", "--val-shards"): "in-file", ("train", "--vocab"): "in-file",
    ("train", "--out"): "out-dir", ("train", "--init-from"): "in-any", ("train", "--init-from-hf"): "in-dir",
    ("train", "--config"): "in-file",
}
# Path options that are not typed click.Path (they also take a run name or a plain string).
OTHER_PATHS = {("finetune", "--checkpoint"), ("finetune", "--init-from-hf"), ("finetune", "--train"), ("finetune", "--val"), ("finetune", "--out"),
               ("predict", "--checkpoint"), ("export", "--checkpoint"), ("plot", "--out"), ("report", "--out"),
               ("report", "--val")}
# Options that exclude each other: testing the first, the base arguments drop the second.
EXCLUSIVE = {("tokenize", "--tokenizer"): "--vocab", ("finetune", "--init-from-hf"): "--checkpoint",
             ("train", "--init-from-hf"): "--init-from"}
# Path options whose value is only printed or looked at if present (bertprep recipe's token store).
NOT_READ = {("recipe", "--tokens"), ("recipe", "name")}


def param_key(command: str, p: click.Parameter) -> tuple[str, str]:
    flag = max(p.opts, key=len) if isinstance(p, click.Option) else p.name
    return command, flag


def test_every_path_parameter_is_classified():
    found = {param_key(name, p) for name, cmd in cli.commands.items() for p in cmd.params
             if isinstance(p.type, click.Path)}
    missing = (found | OTHER_PATHS) - set(KINDS) - NOT_READ
    assert not missing, f"classify these path parameters in KINDS: {sorted(missing)}"
    stale = {k for k in KINDS if k[0] != "train"} - found - OTHER_PATHS
    assert not stale, f"no such parameters any more: {sorted(stale)}"


@pytest.fixture(scope="module")
def world(token_store, tmp_path_factory) -> dict:
    """Good inputs for every command (a token store, shards, a trained run, a labelled file)."""
    root = tmp_path_factory.mktemp("paths")
    shards = root / "shards"
    assert run_cli(["shard", "--tokens", token_store, "--out", shards, "--max-len", "64", "--split", "0.8,0.1,0.1"]) == 0
    run = root / "run"
    assert trainer.main(["--shards", *map(str, sorted(shards.glob("train_*"))), "--out", str(run), "--model", "tiny",
                         "--hidden", "32", "--heads", "2", "--ffn", "64", "--max-steps", "2", "--batch-size", "4",
                         "--val-interval", "0", "--no-tensorboard", "--quiet"]) == 0
    labelled = root / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({"sentence": f"text number {i}", "label": i % 2}) + "\n" for i in range(8)))
    (root / "afile").write_text("not a directory\n")
    (root / "adir").mkdir()
    config = root / "run.toml"
    config.write_text("lr = 0.001\n")
    return {"root": root, "tokens": token_store, "shards": shards, "run": run, "labelled": labelled,
            "shard": sorted(shards.glob("train_*"))[0], "config": config}


def base_args(command: str, w: dict, out: Path) -> dict[str, list]:
    """Good arguments for `command`, keyed by parameter (positional ones by name), writing under `out`."""
    shard_files = [str(p) for p in sorted(w["shards"].glob("train_*"))]
    return {
        "tokenize": {"corpus": [WIKI], "--out": [out / "tok"], "--vocab": [w["tokens"] / "vocab.txt"]},
        "shard": {"--tokens": [w["tokens"]], "--out": [out / "sh"], "--max-len": [64]},
        "inspect": {"shard_file": [w["shard"]], "--vocab": [w["tokens"] / "vocab.txt"]},
        "verify": {"paths": [w["shard"]]},
        "finetune": {"--checkpoint": [w["run"]], "--train": [w["labelled"]], "--val": [w["labelled"]],
                     "--out": [out / "ft"], "--epochs": [1], "--max-len": [32]},
        "predict": {"--checkpoint": [w["run"]], "--file": [w["labelled"]]},
        "export": {"--checkpoint": [w["run"]], "--hf": [out / "hf"]},
        "plot": {"runs": [w["run"]], "--out": [out / "curves.png"]},
        "report": {"run": [w["run"]], "--out": [out / "report.html"], "--val-batches": [1]},
        "recipe": {"name": ["bert-tiny"], "corpus": [WIKI], "--tokens": [out / "tokens"]},
        "train": {"--shards": shard_files, "--out": [out / "train"], "--model": ["tiny"], "--hidden": [32],
                  "--heads": [2], "--ffn": [64], "--max-steps": [1], "--batch-size": [4], "--val-interval": [0],
                  "--no-tensorboard": [], "--quiet": []},
    }[command]


def argv(args: dict[str, list]) -> list[str]:
    positional = [str(v) for k, vs in args.items() if not k.startswith("-") for v in vs]
    options = [x for k, vs in args.items() if k.startswith("-") for x in ([k] + [str(v) for v in vs] if vs else [k])]
    return positional + options


def wrong_path(kind: str, w: dict) -> str:
    root = w["root"]
    return {"file": str(root / "afile"), "dir": str(root / "adir"), "under-file": str(root / "afile" / "x"),
            "long": str(root / LONG), "missing": str(root / "no-such-thing")}[kind]


CASES = [(cmd, flag, bad) for (cmd, flag), kind in KINDS.items() for bad in BAD[kind]]


@pytest.mark.parametrize("command,flag,bad", CASES, ids=[f"{c} {f} {b}" for c, f, b in CASES])
def test_a_wrong_path_is_one_line_and_exit_2(world, tmp_path, capsys, command, flag, bad):
    out = tmp_path / "out"
    out.mkdir()
    args = base_args(command, world, out)
    args.pop(EXCLUSIVE.get((command, flag)), None)
    path = wrong_path(bad, world)
    args[flag] = [path]
    before = sorted(os.listdir(world["root"]))
    code = trainer.main(argv(args)) if command == "train" else run_cli([command, *argv(args)])
    err = capsys.readouterr().err.strip()
    assert code == 2, f"exit {code}: {err[-600:]}"
    assert err.startswith("error: ") and "\n" not in err, err[-600:]
    # the line names the path it refuses (a 300-character name by its start)
    shown = Path(path).name[:40] if bad == "long" else Path(path).name
    assert shown in err, err
    assert sorted(os.listdir(world["root"])) == before  # nothing written beside the inputs
    assert not list(out.iterdir()), f"written: {[p.name for p in out.iterdir()]}"
