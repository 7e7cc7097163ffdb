"""One definition per flag: every command's options, the trainer's command line and the TOML keys
are derived from the config fields (shards/options.py), so they match the fields in name, default
and choices; cli.py writes no option of a config itself; a choice outside its Literal is a
ConfigError naming the flag."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import click
import click.testing
import pytest

from bertprep import cli as cli_module
from bertprep.cli import ConfigCommand, cli
from bertprep.shards import options
from bertprep.shards.errors import ConfigError
from bertprep.trainer.config import TrainConfig, train_config
from bertprep.trainer.run import build_parser, parse_config

ROOT = Path(__file__).resolve().parent.parent
CONFIG_COMMANDS = {"tokenize": "TokenizeConfig", "shard": "ShardConfig", "finetune": "FinetuneConfig",
                   "plot": "PlotConfig", "report": "ReportConfig"}


def _cls(name: str):
    cmd = cli.commands[name]
    assert isinstance(cmd, ConfigCommand), f"bertprep {name}: its options are not derived from its config"
    return cmd.config_class()


@pytest.mark.parametrize("name", sorted(CONFIG_COMMANDS))
def test_command_options_are_the_config_fields(name):
    cls = _cls(name)
    assert cls.__name__ == CONFIG_COMMANDS[name]
    cmd = cli.commands[name]
    params = [p for p in cmd.params if isinstance(p, click.Option)]
    by_name = {n: p for p in params for n in p.opts}
    flags = options.flags(cls)
    assert {n for p in params for n in p.opts} == {n for x in flags for n in (x.name, x.meta["short"]) if n}
    for x in flags:
        p = by_name[x.name]
        assert x.help and p.help == x.help, x.name
        assert p.required == x.required, x.name
        if x.choices is not None:
            assert list(p.type.choices) == list(x.choices), x.name
        if x.type is bool:
            assert p.is_flag and (p.default is True) == x.default and bool(p.secondary_opts) == bool(x.meta["negative"])
        elif not x.many and x.default not in (options.MISSING, None):
            assert p.default == x.default and p.show_default, x.name
    # the declared parameters are the positional arguments only: every option comes from a field
    assert all(isinstance(p, click.Argument) for p in cmd._own), name


REQUIRED = {"tokenize": (["c.txt"], {"inputs": (Path("c.txt"),)}), "shard": ([], {}), "plot": (["r"], {"runs": ("r",)}),
            "report": (["r"], {"run": "r"}),
            "finetune": (["--train", "t.jsonl", "--val", "v.jsonl"], {"train": "t.jsonl", "val": "v.jsonl"})}


@pytest.mark.parametrize("name", sorted(CONFIG_COMMANDS))
def test_a_command_without_options_makes_the_config_of_its_defaults(name):
    args, required = REQUIRED[name]
    ctx = cli.commands[name].make_context(name, list(args))
    values = {k: v for k, v in ctx.params.items() if k not in ("corpus", "runs", "run")}
    cls = _cls(name)
    assert options.build(cls, values | required) == cls(**required)


def test_help_lists_the_derived_defaults():
    runner = click.testing.CliRunner()
    out = runner.invoke(cli, ["shard", "--help"]).output
    for x in options.flags(_cls("shard")):
        assert x.name in out
    assert "[default: 12345]" in out and "[segment|split|pack]" in out


def test_cli_writes_no_option_of_a_config():
    """cli.py declares options only for what no config holds (inspect -n, predict, export, recipe)."""
    declared = []
    for node in ast.walk(ast.parse(Path(cli_module.__file__).read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == "option":
                    names = [a.value for a in dec.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")]
                    declared.append((node.name, names))
    for command, names in declared:
        assert command not in CONFIG_COMMANDS, f"bertprep {command} declares {names} by hand"
    assert declared, "the AST walk found no click options at all"


def test_trainer_command_line_is_the_train_config():
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions}
    flags = options.flags(TrainConfig)
    assert set(actions) == {x.dest for x in flags} | {"help", "config"}
    for x in flags:
        a = actions[x.dest]
        assert a.option_strings[0] == x.name and a.help == x.help and x.help, x.name
        assert a.choices == (list(x.choices) if x.choices else None), x.name
        if x.dest in ("lr", "warmup_steps"):  # not given: the --model preset's (PRESET_RATES), named in --help
            assert str(a.default).startswith("by --model: tiny"), x.name
            continue
        assert a.default == (None if x.many else x.default), x.name
    # flat on the command line, composed inside
    cfg = parse_config(["--shards", "a", "--lr", "3e-4", "--model", "tiny", "--no-verify-shards", "--out", "r"])
    assert (cfg.optim.lr, cfg.model.preset, cfg.data.verify_shards, cfg.checkpoint.out) == (3e-4, "tiny", False, "r")


def test_recorded_config_reads_back_as_a_config_file(tmp_path):
    """A run's config.json `train` table (flat flag keys) is a valid --config file for the same config."""
    cfg = train_config(shards=("x.arrow",), lr=2e-4, decay="cosine", hidden=64, resume=True, val_shards=("v.arrow",))
    recorded = json.loads(json.dumps(cfg.to_dict()))
    toml = tmp_path / "run.toml"
    toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in recorded.items() if v is not None))
    assert parse_config(["--config", str(toml)]) == cfg
    assert options.build(TrainConfig, recorded) == cfg


def test_components_hold_their_flags():
    paths = {x.dest: x.path for x in options.flags(TrainConfig)}
    assert paths["lr"] == ("optim", "lr") and paths["model"] == ("model", "preset")
    assert paths["shards"] == ("data", "shards") and paths["resume"] == ("checkpoint", "resume")
    shard = {x.dest: x.path for x in options.flags(_cls("shard"))}
    assert shard["max_len"] == ("pack", "max_len") and shard["mask_prob"] == ("mask", "mask_prob")
    assert shard["cluster"] == ("cluster", "address")


@pytest.mark.parametrize("cls_name, key, flag", [
    ("train", "decay", "--decay"), ("train", "model", "--model"), ("train", "precision", "--precision"),
    ("shard", "strategy", "--strategy"), ("shard", "format", "--format"),
    ("tokenize", "backend", "--backend"), ("finetune", "task", "--task"), ("finetune", "device", "--device"),
])
def test_a_value_outside_the_choices_names_the_flag(cls_name, key, flag):
    base = {"train": ({"shards": ("x",)}, TrainConfig), "shard": ({}, None), "tokenize": ({"inputs": ("c.txt",)}, None),
            "finetune": ({"train": "t.jsonl", "val": "v.jsonl"}, None)}[cls_name]
    cls = base[1] or _cls(cls_name)
    with pytest.raises(ConfigError, match=f"^{flag} must be one of"):
        options.build(cls, base[0] | {key: "nonsense"})


def test_unknown_keys_are_refused(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text('shards = ["x"]\nlearning_rate = 1\n')
    with pytest.raises(ConfigError, match="unknown setting 'learning_rate'"):
        parse_config(["--config", str(toml)])
    with pytest.raises(ConfigError, match="unknown setting"):
        options.build(TrainConfig, {"shards": ("x",), "nonsense": 1})


def test_the_command_list_imports_no_config_module():
    """Options are derived when a command runs or shows its help, so `bertprep --help` stays instant."""
    code = ("import sys\nfrom bertprep.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('torch', 'bertprep.preprocess.tokenizing', 'bertprep.finetune.tune') if m in sys.modules]\n"
            "sys.exit(1 if heavy else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_markdown_table_lists_every_flag_once():
    table = options.markdown(TrainConfig)
    for x in options.flags(TrainConfig):
        assert table.count(f"| `{x.name}`") == 1, x.name
    assert "| `--lr` | `0.0001` | peak learning rate |" in table
