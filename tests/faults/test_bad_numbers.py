"""Every numeric option of every command, generated from the commands themselves (the click
commands' params for `bertprep`, `options.flags(TrainConfig)` for trainer/run.py), fed NaN, inf, 0,
-1 and 10^12: a value outside the option's declared bounds (NaN and inf always, and to an integer
option anything that is not an integer) is one `error:` line naming the flag and exit 2; a value
inside them is accepted, checked cheaply where the command builds its config (the same
`options.build` / `parse_config` path), not by running the command."""

from __future__ import annotations

import math
from pathlib import Path

import click
import pytest

from bertprep.cli import cli
from bertprep.shards import options
from bertprep.shards.errors import ConfigError
from bertprep.trainer import run as trainer_run
from bertprep.trainer.config import TrainConfig
from conftest import one_line

HUGE = 10**12
INT_VALUES = ("nan", "inf", "0", "-1", str(HUGE))
FLOAT_VALUES = ("nan", "inf", "0", "-1", "1e12")

# What each command needs besides the flag under test to reach the point where it checks its
# flags (the files need not exist: every flag is checked before any file is opened), and the same
# for building its config directly.
ARGS = {"tokenize": ["corpus.txt"], "finetune": ["--train", "t.tsv", "--val", "v.tsv"], "plot": ["run"],
        "report": ["run"], "recipe": ["bert-base", "corpus.txt"], "inspect": ["x.arrow"],
        "predict": ["--checkpoint", "run", "a [MASK] ."]}
BASE = {"tokenize": {"inputs": (Path("corpus.txt"),)}, "finetune": {"train": "t.tsv", "val": "v.tsv"},
        "plot": {"runs": ("run",)}, "report": {"run": "run"}}


def inside(value: str, integer: bool, lo, lo_open: bool, hi, hi_open: bool) -> bool:
    """Whether `value` (as typed) is a valid value of an option with these bounds."""
    if integer:
        try:
            v = int(value)
        except ValueError:
            return False
    else:
        v = float(value)
        if not math.isfinite(v):
            return False
    if lo is not None and (v <= lo if lo_open else v < lo):
        return False
    return not (hi is not None and (v >= hi if hi_open else v > hi))


def derived_bounds(x: options.Flag) -> tuple:
    m = x.meta
    lo, lo_open = (m["above"], True) if m.get("above") is not None else (m.get("at_least"), False)
    hi, hi_open = (m["below"], True) if m.get("below") is not None else (m.get("at_most"), False)
    return lo, lo_open, hi, hi_open


def bertprep_cases():
    for name in sorted(cli.commands):
        command = cli.commands[name]
        derived = {}
        if hasattr(command, "config_class"):
            derived = {x.dest: x for x in options.flags(command.config_class())}
        for p in command.params:
            if not isinstance(p, click.Option) or p.is_flag:
                continue
            x = derived.get(p.name)
            if x is not None and x.type in (int, float) and x.choices is None:
                integer = x.type is int
                bounds = derived_bounds(x)
            elif x is None and isinstance(p.type, (click.types.IntParamType, click.types.FloatParamType)):
                integer = isinstance(p.type, click.types.IntParamType)
                rng = p.type if isinstance(p.type, click.types._NumberRangeBase) else None
                bounds = ((rng.min, rng.min_open, rng.max, rng.max_open) if rng is not None
                          else (None, False, None, False))
            else:
                continue
            flag = max(p.opts, key=len)
            for value in INT_VALUES if integer else FLOAT_VALUES:
                yield name, flag, p, x, value, inside(value, integer, *bounds)


CASES = list(bertprep_cases())


def test_the_walk_finds_the_numeric_options():
    flags = {(c, f) for c, f, *_ in CASES}
    for case in [("shard", "--dupe-factor"), ("shard", "--workers"), ("tokenize", "--chunk-mb"),
                 ("tokenize", "--cluster-timeout"), ("finetune", "--seeds"), ("finetune", "--weight-decay"),
                 ("inspect", "--start"), ("inspect", "-n"), ("predict", "--top-k"), ("recipe", "--vocab-size"),
                 ("report", "--val-batches"), ("plot", "--dpi")]:
        assert case in flags, case


@pytest.mark.parametrize("command,flag,param,x,value,ok", CASES,
                         ids=[f"{c} {f} {v}" for c, f, _, _, v, _ in CASES])
def test_bertprep_numbers(capsys, command, flag, param, x, value, ok):
    if not ok:
        assert flag in one_line(capsys, [command, flag, value, *ARGS.get(command, [])])
        return
    converted = param.type.convert(value, param, None)  # what click hands the command
    if x is not None:  # the config the command builds accepts it
        cls = cli.commands[command].config_class()
        cfg = options.build(cls, BASE.get(command, {}) | {x.dest: converted})
        got = cfg
        for attr in x.path:
            got = getattr(got, attr)
        assert got == (converted if not x.many else tuple(int(v) for v in converted.split(","))), (got, converted)


def trainer_cases():
    for x in options.flags(TrainConfig):
        if x.type in (int, float) and x.choices is None and not x.many:
            for value in INT_VALUES if x.type is int else FLOAT_VALUES:
                yield x, value, inside(value, x.type is int, *derived_bounds(x))


TRAINER = list(trainer_cases())


@pytest.mark.parametrize("x,value,ok", TRAINER, ids=[f"{x.name} {v}" for x, v, _ in TRAINER])
def test_trainer_numbers(capsys, x, value, ok):
    argv = ["--shards", "train.arrow", x.name, value]
    if not ok:
        assert trainer_run.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and x.name in err, err
        return
    cfg = trainer_run.parse_config(argv)
    got = cfg
    for attr in x.path:
        got = getattr(got, attr)
    assert got == x.type(float(value)), (x.name, got)


def test_every_numeric_trainer_flag_is_bounded_below():
    """A count, a size or a rate with no lower bound would take -1."""
    loose = [x.name for x in options.flags(TrainConfig)
             if x.type in (int, float) and x.choices is None and derived_bounds(x)[0] is None]
    assert loose == [], loose


def test_a_bound_is_named_in_the_refusal():
    with pytest.raises(ConfigError, match=r"--dupe-factor must be in 1\.\.1000, got 1000000000000"):
        from bertprep.preprocess.sharding import ShardConfig

        options.build(ShardConfig, {"dupe_factor": HUGE})


def test_a_tuple_is_checked_per_element():
    from bertprep.finetune.tune import FinetuneConfig

    with pytest.raises(ConfigError, match="--seeds must be in 0..9223372036854775807, got -1"):
        options.build(FinetuneConfig, BASE["finetune"] | {"seeds": "1,-1"})


# The cases an exploration found accepted or crashing before the bounds existed: the table above
# derives what to expect from the declared bounds, so it alone cannot notice a bound that is missing.
FOUND = [("tokenize", "--chunk-mb", "inf"), ("shard", "--dupe-factor", str(HUGE)), ("shard", "--workers", str(HUGE)),
         ("inspect", "--start", "-1"), ("inspect", "-n", "-1"), ("finetune", "--seed", "-1"),
         ("finetune", "--weight-decay", "nan"), ("finetune", "--clip", "inf"), ("finetune", "--lr", "1e12"),
         ("finetune", "--epochs", str(HUGE)), ("finetune", "--batch-size", str(HUGE)),
         ("finetune", "--grad-accum", str(HUGE)), ("predict", "--top-k", str(HUGE)), ("recipe", "--batch-size", "0"),
         ("recipe", "--vocab-size", "-1"), ("report", "--val-batches", str(HUGE)), ("report", "--batch-size", str(HUGE)),
         ("tokenize", "--cluster-timeout", "inf"), ("shard", "--cluster-timeout", "inf")]


@pytest.mark.parametrize("command,flag,value", FOUND, ids=[" ".join(c) for c in FOUND])
def test_what_the_exploration_found_is_refused(capsys, command, flag, value):
    assert flag in one_line(capsys, [command, flag, value, *ARGS.get(command, [])])


@pytest.mark.parametrize("flag,value", [("--lr", "1e12"), ("--lr", "inf"), ("--weight-decay", "nan"),
                                        ("--max-steps", str(HUGE)), ("--batch-size", str(HUGE)), ("--seed", "-1"),
                                        ("--dist-timeout", "inf"), ("--prefetch", str(HUGE))])
def test_what_the_trainer_would_have_taken_is_refused(capsys, flag, value):
    assert trainer_run.main(["--shards", "train.arrow", flag, value]) == 2
    assert flag in capsys.readouterr().err
