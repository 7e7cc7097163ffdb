"""Train BERT on bertprep shards: flags -> TrainConfig -> `loop.train`.

    python trainer/run.py --shards shards/train_* --model tiny --max-steps 1000
    torchrun --nproc-per-node 8 trainer/run.py --shards shards/train_* --model base
    python trainer/run.py --config run.toml --lr 2e-4      # command-line flags win over the file
    python trainer/run.py --recipe bert-base --shards shards-128/train_* --out runs/p1       # phase 1
    python trainer/run.py --recipe bert-base --init-from runs/p1 --shards shards-512/train_*  # phase 2

Settings stack: the recipe (`--recipe`, its phase picked by `--init-from`), then `--config`, then
the command line.
Bad input (missing or mismatched shards, bad flags) prints one `error: ...` line and exits 2; a
non-finite loss exits 3 after keeping the last good checkpoint. From Python: `train(cfg)` and
`evaluate(val_shards, checkpoint)`.
"""

from __future__ import annotations

import os
import sys

# `python trainer/run.py` and torchrun put trainer/ first on sys.path, where our module names
# (config, model, ...) could shadow another package's top-level module: use the package path only.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse  # noqa: E402
import glob  # noqa: E402
import tomllib  # noqa: E402

from bertprep.shards import options  # noqa: E402
from bertprep.shards.atomic import path_error  # noqa: E402
from bertprep.shards.errors import BertprepError, ConfigError  # noqa: E402
from bertprep.trainer.config import PRESET_RATES, TrainConfig  # noqa: E402
from bertprep.trainer.evaluation import evaluate  # noqa: E402,F401  (public: for `make demo`)
from bertprep.trainer.loop import NonFiniteLoss, train  # noqa: E402
from bertprep.trainer.recipes import load_recipe, phase_index  # noqa: E402

__all__ = ["train", "evaluate", "parse_config", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise ConfigError(message)


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, but not "(default: None)" nor a second one where the help names it."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The flags of TrainConfig's fields (trainer/config.py), a group per component, and --config."""
    p = _Parser(prog="trainer/run.py", description=__doc__.split("\n\n")[0],
                formatter_class=_Defaults)
    p.add_argument("--config", metavar="FILE.toml", help="set any flag from a TOML file; command-line flags win")
    options.add_arguments(p, TrainConfig)
    for action in p._actions:  # not given (flag, --config or recipe): the --model preset's, see parse_config
        if action.dest in _BY_MODEL:
            action.default = _BY_MODEL[action.dest]
    return p


class _ByModel:
    """The default of --lr and --warmup-steps: the --model preset's (PRESET_RATES), shown in --help."""

    def __init__(self, index: int):
        self.text = "by --model: " + ", ".join(f"{name} {rates[index]:g}" for name, rates in PRESET_RATES.items())

    def __str__(self) -> str:
        return self.text


_BY_MODEL = {"lr": _ByModel(0), "warmup_steps": _ByModel(1)}


def _expand(paths) -> tuple[str, ...] | None:
    if paths is None:
        return None
    out = []
    for p in ([paths] if isinstance(paths, str) else paths):
        hits = sorted(glob.glob(p)) if glob.has_magic(p) else [p]
        if not hits:
            raise ConfigError(f"no shard files match {p!r}")
        out += hits
    return tuple(out)


def _config_file(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"--config {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not a text file (not UTF-8); give a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path}: not valid TOML ({e})") from None
    return options.read_table(TrainConfig, raw, f"--config {path}")


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    from_file = _config_file(first.config) if first.config else {}
    recipe = first.recipe or from_file.get("recipe")
    if recipe:  # beneath --config and the command line; the phase follows --init-from
        settings = load_recipe(recipe).settings(phase_index(first.init_from or from_file.get("init_from")))
        parser.set_defaults(**settings, recipe=recipe)
    parser.set_defaults(**from_file)
    args = vars(parser.parse_args(argv))
    args.pop("config")
    preset = args["model"] if args["model"] in PRESET_RATES else "base"  # an unknown one is refused by the config
    for dest, value in zip(("lr", "warmup_steps"), PRESET_RATES[preset]):
        if isinstance(args[dest], _ByModel):  # given by no flag, --config or recipe: what suits the model's size
            args[dest] = value
    args["shards"] = _expand(args["shards"]) or ()
    args["val_shards"] = _expand(args["val_shards"])
    try:
        return options.build(TrainConfig, args)
    except TypeError as e:  # a TOML value of the wrong type reaches the dataclass
        raise ConfigError(f"--config: {e}") from None


def _error(e: Exception) -> None:
    # One write, so the lines of ranks sharing torchrun's stderr never interleave mid-line
    # (print() writes the text and the newline separately).
    sys.stderr.write(f"error: {e}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
        train(cfg)
    except NonFiniteLoss as e:
        _error(e)
        return 3
    except BertprepError as e:
        _error(e)
        return 2
    except OSError as e:  # a path the user gave that the system refused (too long, under a file, ...)
        if (line := path_error(e)) is None:
            raise
        _error(line)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
