"""One definition per flag: a config field carries its flag, and the command lines are derived from it.

A field made with `option(default, help=...)` is a flag: its name is the field's with `-` for `_`
(or `flag=`), its type, default and choices are the field's (choices as `typing.Literal[...]`), its
help is written here once. From a config class, and the configs it is composed of, this module
derives:

| what                       | function            | used by                                  |
|----------------------------|---------------------|------------------------------------------|
| the flat flag table        | `flags(cls)`        | everything below, tests/test_options.py  |
| click options              | `click_params(cls)` | cli.py                                   |
| argparse arguments         | `add_arguments(p, cls)` | trainer/run.py                       |
| a config from flat keys    | `build(cls, values)`| cli.py, run.py (flags and TOML keys), recipes |
| flat keys from a config    | `flat(cfg)`         | the run's recorded config                |
| a Markdown flag table      | `markdown(cls)`     | docs (generated, never copied by hand)   |
| the value check            | `check(cfg)`        | every config's `__post_init__`           |

Flags stay flat (`--lr`, TOML key `lr`) however the config nests (`TrainConfig.optim.lr`): a field
whose type is a dataclass is a component, and its flags are the parent's.

A number's bounds are declared on its field (`option(1, at_least=1, at_most=1000, ...)`) and
`check(cfg)` enforces them with the other per-value rules, in one place: the type (an integer is
not a float or a boolean, as a TOML file can give), the choices of a `Literal`, a finite float
(NaN and infinities are always refused), the bounds (each element of a tuple). Checks that relate
two fields (`--min-lr <= --lr`) stay in the config's `__post_init__`, after `check(self)`.

Why in shards/: it is the bottom of the import graph (beside errors.py), so cli.py, preprocess/ and
trainer/ all derive from the same code without importing torch or each other; click is imported
only by `click_params`, so the trainer's command line does not need it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import sys
import types
import typing
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Literal

from bertprep.shards.errors import ConfigError


def option(default: Any = MISSING, *, help: str, flag: str | None = None, short: str | None = None,
           negative: str | None = None, metavar: str | None = None, sep: str | None = None,
           nargs: str | None = None, default_factory: Any = MISSING, at_least: float | None = None,
           above: float | None = None, at_most: float | None = None, below: float | None = None) -> Any:
    """A dataclass field that is also a command-line flag.

    flag: the flag's name when it is not the field's (`--format` for `fmt`); short: an extra short
    name (`-o`); negative: the off switch of a boolean shown as a pair (`--cased`); metavar: the
    placeholder in help; sep: a tuple given as one separated string (`--seeds 1,2,3`); nargs: a
    tuple given as several words (`--shards a b`, argparse only; in click a tuple is repeatable;
    "repeat": several words, and the flag may be given again to add more: `--mix a --mix b`).
    at_least / above and at_most / below: a number's closed / open bounds, checked by `check`."""
    if at_least is not None and above is not None or at_most is not None and below is not None:
        raise TypeError("give one lower bound (at_least or above) and one upper bound (at_most or below)")
    meta = {"help": help, "flag": flag, "short": short, "negative": negative, "metavar": metavar, "sep": sep,
            "nargs": nargs, "at_least": at_least, "above": above, "at_most": at_most, "below": below}
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"option": meta})


@dataclass(frozen=True)
class Flag:
    """One flag as derived from its field."""

    name: str                    # "--max-len"
    dest: str                    # "max_len": the flat key (keyword, TOML key with '_' or '-')
    path: tuple[str, ...]        # the field's attribute path in the config: ("pack", "max_len")
    type: Any                    # the value's type (of each element for a tuple): int, float, str, bool, Path
    default: Any                 # MISSING when required
    choices: tuple | None        # from a Literal type
    optional: bool               # None is allowed
    many: bool                   # a tuple of values
    help: str
    meta: dict

    @property
    def required(self) -> bool:
        return self.default is MISSING


def _unwrap(hint) -> tuple[Any, bool, bool, tuple | None]:
    """(base type, optional, many, choices) of a field's type hint."""
    optional = many = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0] if len(args) == 1 else hint
    if typing.get_origin(hint) is tuple:
        many, hint = True, typing.get_args(hint)[0]
    choices = None
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        hint = type(choices[0])
    return hint, optional, many, choices


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _component(cls, f: dataclasses.Field):
    hint = _hints(cls)[f.name]
    return hint if dataclasses.is_dataclass(hint) else None


@functools.cache
def flags(cls) -> tuple[Flag, ...]:
    """Every flag of `cls` and of the components it is made of, in field order."""
    out: list[Flag] = []
    for f in dataclasses.fields(cls):
        sub = _component(cls, f)
        if sub is not None:
            out += [dataclasses.replace(x, path=(f.name, *x.path)) for x in flags(sub)]
            continue
        meta = f.metadata.get("option")
        if meta is None:
            continue
        base, optional, many, choices = _unwrap(_hints(cls)[f.name])
        name = meta["flag"] or "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else MISSING)
        out.append(Flag(name=name, dest=name.lstrip("-").replace("-", "_"), path=(f.name,), type=base, default=default,
                        choices=choices, optional=optional, many=many, help=meta["help"], meta=meta))
    seen: dict[str, Flag] = {}
    for x in out:
        if x.dest in seen:  # a bug in the configs, not bad input
            raise TypeError(f"{cls.__name__}: flag {x.name} is defined twice ({seen[x.dest].path} and {x.path})")
        seen[x.dest] = x
    return tuple(out)


def flag_named(cls, dest: str) -> Flag:
    return {x.dest: x for x in flags(cls)}[dest]


SEED_LIMIT = 2**63 - 1  # seeds: torch.manual_seed takes at most 2**64 - 1, JSON readers lose above 2**63
MAX_WORKERS = 4096     # --workers: processes or threads of one machine


def bounds_text(meta: dict, integer: bool) -> str:
    """The declared bounds in words: "in 1..1000", "in [0, 1)", ">= 1", "> 0"."""
    lo, lo_open = (meta["above"], True) if meta.get("above") is not None else (meta.get("at_least"), False)
    hi, hi_open = (meta["below"], True) if meta.get("below") is not None else (meta.get("at_most"), False)
    if lo is not None and hi is not None:
        if integer and not lo_open and not hi_open:
            return f"in {lo}..{hi}"
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return ""


@dataclass(frozen=True)
class _Rule:
    flag: str
    type: Any
    optional: bool
    many: bool
    choices: tuple | None
    meta: dict


@functools.cache
def _rules(cls) -> dict[str, _Rule]:
    """field -> what `check` enforces, for the flag fields of `cls` (not its components: each
    component's own `__post_init__` checks it)."""
    out = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("option")
        if _component(cls, f) is not None:
            continue
        base, optional, many, choices = _unwrap(_hints(cls)[f.name])
        if meta is None and choices is None:
            continue
        meta = meta or {"flag": None}
        out[f.name] = _Rule(meta["flag"] or "--" + f.name.replace("_", "-"), base, optional, many, choices, meta)
    return out


def numpy_bool() -> tuple:
    """numpy's bool type where numpy is already imported (shards/ does not import it for this)."""
    np = sys.modules.get("numpy")
    return (np.bool_,) if np is not None else ()


def check_value(flag: str, value, *, type=float, meta: dict | None = None, choices: tuple | None = None) -> None:
    """One value against its flag's rules (the type, choices, finiteness, bounds); ConfigError
    naming the flag. Also for plain click options and values read from files."""
    meta = meta or {}
    if type is int and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise ConfigError(f"{flag} must be an integer, got {value!r}")
    if type is float and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise ConfigError(f"{flag} must be a number, got {value!r}")
    if type is bool and not isinstance(value, (bool, *numpy_bool())):
        raise ConfigError(f"{flag} must be true or false, got {value!r}")
    if type is str and choices is None and not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{flag} must be text, got {value!r}")
    if type is Path and not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{flag} must be a path, got {value!r}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{flag} must be one of {', '.join(map(str, choices))}, got {value!r}")
    if type not in (int, float):
        return
    if type is float and not math.isfinite(value):
        raise ConfigError(f"{flag} must be a finite number, got {value}")
    lo, hi = meta.get("at_least"), meta.get("at_most")
    above, below = meta.get("above"), meta.get("below")
    if ((lo is not None and not value >= lo) or (above is not None and not value > above)
            or (hi is not None and not value <= hi) or (below is not None and not value < below)):
        raise ConfigError(f"{flag} must be {bounds_text(meta, type is int)}, got {value}")


def check(cfg) -> None:
    """Raise ConfigError naming the flag when a flag field of `cfg` holds a value of the wrong type,
    outside its `Literal` choices, a non-finite float or a number outside its declared bounds
    (each element of a tuple). Every config with flags calls this first in `__post_init__`."""
    for name, rule in _rules(type(cfg)).items():
        value = getattr(cfg, name)
        if value is None and rule.optional:
            continue
        if rule.many:
            if not isinstance(value, (tuple, list)):
                raise ConfigError(f"{rule.flag} must be a list, got {value!r}")
            values = value
        else:
            values = (value,)
        for v in values:
            check_value(rule.flag, v, type=rule.type, meta=rule.meta, choices=rule.choices)


def read_table(cls, table: dict, where: str) -> dict:
    """A settings table read from a file (a TOML `--config`, a recipe's [train]) as flat keys, each
    checked against its flag's type, choices and bounds before anything is built from it: one
    ConfigError naming `where` and the key for an unknown key, a key given in both spellings
    (`max-steps` and `max_steps`) or a value of the wrong type (a float or a boolean where an
    integer is meant, text for a number)."""
    by_dest = {x.dest: x for x in flags(cls)}
    out: dict = {}
    spelled: dict[str, str] = {}
    for key, value in table.items():
        dest = key.replace("-", "_")
        if dest in spelled:
            raise ConfigError(f"{where}: {spelled[dest]!r} and {key!r} are the same setting; give it once")
        spelled[dest] = key
        x = by_dest.get(dest)
        if x is None:
            raise ConfigError(f"{where}: unknown setting {key!r}")
        name = f"{where}: {key}"
        if x.many:
            if isinstance(value, str) and (x.meta["sep"] or x.type in (str, Path)):
                values = [value]  # one glob or one separated string, split later
                if x.meta["sep"] and x.type in (int, float):
                    values = list(_convert(dataclasses.replace(x, name=name), value))
            elif isinstance(value, list):
                values = value
            else:
                raise ConfigError(f"{name} must be a list, got {value!r}")
            for v in values:
                check_value(name, v, type=x.type, meta=x.meta, choices=x.choices)
        else:
            check_value(name, value, type=x.type, meta=x.meta, choices=x.choices)
        out[dest] = value
    return out


def _convert(x: Flag, value):
    """A flag's value as the field wants it: tuples from lists or separated strings, paths as Path."""
    if value is None:
        return None
    if x.many:
        if isinstance(value, str):
            parts = value.split(x.meta["sep"]) if x.meta["sep"] else [value]
        else:
            parts = list(value)
        if x.type in (int, float):
            try:
                parts = [x.type(v) for v in parts]
            except (TypeError, ValueError):
                what = "integers such as 1,2,3" if x.type is int else "numbers"
                raise ConfigError(f"{x.name} takes comma-separated {what}, got {value!r}") from None
        return tuple(Path(v) if x.type is Path else v for v in parts)
    if x.type is Path and isinstance(value, str):
        return Path(value)
    return value


def build(cls, values: dict):
    """`cls` from flat keys: flags by their dest (TOML spelling with '-' works too), and any plain
    field of `cls` or a component by its name. Components are built from their own flags; a key
    nothing takes is a ConfigError."""
    values = {k.replace("-", "_"): v for k, v in values.items()}
    taken: set[str] = set()
    cfg = _build(cls, values, taken)
    unknown = sorted(set(values) - taken)
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}")
    return cfg


def _build(cls, values: dict, taken: set):
    by_path = {x.path: x for x in flags(cls)}
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        sub = _component(cls, f)
        if sub is not None:
            if f.name in values and dataclasses.is_dataclass(values[f.name]):  # a component given whole
                kwargs[f.name] = values[f.name]
                taken.add(f.name)
            else:
                kwargs[f.name] = _build(sub, values, taken)
            continue
        x = by_path.get((f.name,))
        key = x.dest if x is not None else f.name
        if key in values:
            taken.add(key)
            if x is not None and values[key] is None and not x.optional:
                continue  # a flag not given (click and argparse say None): the field's default
            kwargs[f.name] = _convert(x, values[key]) if x is not None else values[key]
    return cls(**kwargs)


def flat(cfg) -> dict:
    """The config as flat flag keys with plain values (lists for tuples, str for paths): what a run
    records, and what `--config` reads back."""
    out = {}
    for x in flags(type(cfg)):
        value = cfg
        for attr in x.path:
            value = getattr(value, attr)
        if isinstance(value, tuple):
            value = [str(v) if isinstance(v, Path) else v for v in value]
        out[x.dest] = str(value) if isinstance(value, Path) else value
    return out


def markdown(cls) -> str:
    """The flags of `cls` as a Markdown table (flag, default, help), for docs generated from the code."""
    bar = "\\|"
    rows = ["| flag | default | what it sets |", "|---|---|---|"]
    for x in flags(cls):
        if x.type is bool:
            default = "on" if x.default else "off"
        else:
            default = "required" if x.required else "" if x.default in (None, ()) else f"`{x.default}`"
        choices = " (" + f" {bar} ".join(map(str, x.choices)) + ")" if x.choices else ""
        names = "`" + "`, `".join(n for n in (x.meta["short"], x.name, x.meta["negative"]) if n) + "`"
        rows.append(f"| {names}{choices} | {default} | {x.help.replace('|', bar)} |")
    return "\n".join(rows) + "\n"


# ---- command lines ------------------------------------------------------------------------------

def click_params(cls, *, skip: tuple[str, ...] = ()) -> list:
    """A click option per flag of `cls` (but the dests in `skip`), in field order."""
    import click

    def param(x: Flag):
        m = x.meta
        kind = {int: click.INT, float: click.FLOAT, Path: click.Path(path_type=Path)}.get(x.type, click.STRING)
        if x.choices is not None:
            kind = click.Choice([str(c) for c in x.choices])
        names = [n for n in (m["short"], x.name) if n]
        kw: dict[str, Any] = dict(help=x.help or None, metavar=m["metavar"], required=x.required)
        if x.type is bool and m["negative"]:
            names = [f"{x.name}/{m['negative']}"]
            kw.update(default=x.default, show_default=True)
        elif x.type is bool:
            kw.update(is_flag=True)
        elif x.many and not m["sep"]:
            kw.update(type=kind, multiple=True)
        elif x.many:  # one separated string, split by `build`
            kw.update(type=click.STRING)
        else:
            kw.update(type=kind)
            if x.default not in (MISSING, None):
                kw.update(default=x.default, show_default=True)
        return click.Option([*names, x.dest], **{k: v for k, v in kw.items() if v is not None})

    return [param(x) for x in flags(cls) if x.dest not in skip]


def _repeat_action():
    import argparse

    class Repeat(argparse.Action):
        """`--mix a --mix b c` -> [a, b, c]; the command line's first use replaces a --config default."""

        def __call__(self, parser, namespace, values, option_string=None):
            before = getattr(namespace, self.dest)
            before = [] if before is self.default or before is None else before  # the default: replaced
            setattr(namespace, self.dest, list(before) + list(values))

    return Repeat


def add_arguments(parser, cls, *, groups: bool = True) -> None:
    """argparse arguments for every flag of `cls`, a group per component (its docstring's first line)."""
    import argparse

    def add(target, x: Flag):
        kw: dict[str, Any] = dict(dest=x.dest, help=x.help)
        if x.type is bool:
            kw.update(action=argparse.BooleanOptionalAction, default=x.default)
        elif x.many and x.meta["nargs"] == "repeat":
            kw.update(nargs="+", action=_repeat_action(), metavar=x.meta["metavar"] or "PATH")
        elif x.many:  # several words; None when not given, so the field's default applies
            kw.update(nargs=x.meta["nargs"] or "*", metavar=x.meta["metavar"] or "PATH")
        elif x.choices is not None:
            kw.update(choices=list(x.choices), default=x.default)
        else:
            kw.update(type=x.type if x.type is not Path else str, default=x.default, metavar=x.meta["metavar"])
        target.add_argument(x.name, **{k: v for k, v in kw.items() if v is not None or k == "default"})

    targets: dict[str, Any] = {}
    for x in flags(cls):
        if not groups or len(x.path) == 1:
            add(parser, x)
            continue
        if x.path[0] not in targets:
            sub = _component(cls, next(f for f in dataclasses.fields(cls) if f.name == x.path[0]))
            targets[x.path[0]] = parser.add_argument_group((sub.__doc__ or x.path[0]).strip().split("\n")[0])
        add(targets[x.path[0]], x)
