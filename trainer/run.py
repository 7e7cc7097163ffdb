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

from bertprep.shards.atomic import path_error  # noqa: E402
from bertprep.shards.errors import BertprepError, ConfigError  # noqa: E402
from bertprep.trainer.config import DECAYS, DEVICES, NORMS, PRECISIONS, PRESETS, SCHEDULES, TrainConfig  # noqa: E402
from bertprep.trainer.evaluation import evaluate  # noqa: E402,F401  (public: for `make demo`)
from bertprep.trainer.loop import NonFiniteLoss, train  # noqa: E402
from bertprep.trainer.recipes import available, load_recipe, phase_index  # noqa: E402

__all__ = ["train", "evaluate", "parse_config", "main"]

# (flag, type or action, help); the dest is the TrainConfig field of the same name.
FLAGS = [
    ("--shards", "paths", "training shard files (globs are expanded, e.g. from --config)"),
    ("--val-shards", "paths", "validation shard files (default: the val_ files beside the training shards)"),
    ("--vocab", str, "vocab.txt for decoded validation examples (default: found beside the shards)"),
    ("--verify-shards", "bool", "before training, check every shard's sha256 against its manifest and every "
                                "example's value ranges (--no-verify-shards: skip, for data already verified)"),
    ("--model", PRESETS, "size preset: layers/hidden of the BERT paper and Google's small BERTs"),
    ("--layers", int, "encoder layers (overrides the preset)"),
    ("--hidden", int, "hidden width (overrides the preset)"),
    ("--heads", int, "attention heads (default: hidden/64 with --hidden, else the preset's)"),
    ("--ffn", int, "feed-forward width (default: 4 x hidden)"),
    ("--dropout", float, "dropout on embeddings, attention and residual branches"),
    ("--norm", NORMS, "post: LayerNorm after each residual (BERT); pre: before (+ final LayerNorm)"),
    ("--max-position", int, "positions in the model's table, the longest shards it will take (default: 512, "
                            "or the shards' length when longer)"),
    ("--max-steps", int, "optimizer steps to train for"),
    ("--max-time", float, "minutes of training (validation and checkpoints excluded) after which the run "
                          "validates, checkpoints and stops (0: no limit)"),
    ("--batch-size", int, "examples per rank per micro-step"),
    ("--grad-accum", int, "micro-steps per optimizer step"),
    ("--seed", int, "seed of the weights, dropout and data order"),
    ("--lr", float, "peak learning rate"),
    ("--min-lr", float, "learning rate at --max-steps"),
    ("--warmup-steps", int, "steps of linear warm-up from 0 to --lr"),
    ("--decay", DECAYS, "decay after warm-up"),
    ("--schedule", SCHEDULES, "steps: the decay ends at --max-steps; time: it ends as the --max-time budget runs "
                              "out (the rate follows the clock, so the run ends annealed whatever its speed)"),
    ("--weight-decay", float, "AdamW weight decay (not on biases and LayerNorm)"),
    ("--beta1", float, "AdamW beta1"),
    ("--beta2", float, "AdamW beta2"),
    ("--eps", float, "AdamW epsilon"),
    ("--clip", float, "gradient-norm clipping (0: off)"),
    ("--precision", PRECISIONS, "auto: bf16 autocast on CUDA, fp32 on CPU"),
    ("--compile", "bool", "torch.compile the model"),
    ("--device", DEVICES, "auto: CUDA when available"),
    ("--dist-timeout", float, "seconds a collective waits for the other ranks before this rank gives up "
                              "(a hung rank; torchrun stops the others at once when one dies)"),
    ("--log-interval", int, "steps between log lines and metrics.jsonl records"),
    ("--val-interval", int, "steps between validations (0: none)"),
    ("--val-minutes", float, "also validate every M minutes of training time (0: off)"),
    ("--val-batches", int, "validation batches per rank"),
    ("--val-examples", int, "decoded validation examples shown per validation"),
    ("--ckpt-interval", int, "steps between checkpoints (one is also written at the end)"),
    ("--max-checkpoints", int, "keep the newest K checkpoints"),
    ("--out", str, "run directory (default: runs/<label>-<model>)"),
    ("--resume", "bool", "continue from the newest checkpoint in --out"),
    ("--init-from", str, "start a new phase from this run (its newest checkpoint, or a checkpoint file): its weights, "
                         "a fresh optimizer, schedule and data position, and the step counter going on"),
    ("--init-from-hf", str, "start from a HuggingFace BERT directory (its tokenizer must be the shards')"),
    ("--keep-optimizer", "bool", "with --init-from: carry AdamW's moments and the schedule instead of restarting them"),
    ("--recipe", str, "a recipe's settings (" + ", ".join(available()) + ", or a .toml file); --config and "
                      "flags override it"),
    ("--overfit-batches", int, "train on the same N batches (a debugging check: the loss should reach ~0)"),
    ("--prefetch", int, "pinned host buffers in the loader's ring"),
    ("--tensorboard", "bool", "write TensorBoard events (when the tensorboard package is installed)"),
    ("--trace-data", "bool", "debugging: write the rows each rank reads to <out>/trace/"),
    ("--quiet", "bool", "no progress lines on stderr"),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="trainer/run.py", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", metavar="FILE.toml", help="set any flag from a TOML file; command-line flags win")
    defaults = TrainConfig.__dataclass_fields__
    for flag, kind, text in FLAGS:
        dest = flag[2:].replace("-", "_")
        default = defaults[dest].default
        if kind == "paths":
            p.add_argument(flag, dest=dest, nargs="+" if dest == "shards" else "*", metavar="PATH", help=text)
        elif kind == "bool":
            p.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif isinstance(kind, (tuple, dict)):
            p.add_argument(flag, dest=dest, choices=list(kind), default=default, help=text)
        else:
            p.add_argument(flag, dest=dest, type=kind, default=default, help=text)
    return p


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


def _config_file(path: str, parser: argparse.ArgumentParser) -> dict:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"--config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path}: not valid TOML ({e})") from None
    known = {a.dest for a in parser._actions}
    values = {}
    for key, value in raw.items():
        dest = key.replace("-", "_")
        if dest not in known or dest in ("config", "help"):
            raise ConfigError(f"--config {path}: unknown setting {key!r}")
        values[dest] = value
    return values


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    from_file = _config_file(first.config, parser) if first.config else {}
    recipe = first.recipe or from_file.get("recipe")
    if recipe:  # beneath --config and the command line; the phase follows --init-from
        settings = load_recipe(recipe).settings(phase_index(first.init_from or from_file.get("init_from")))
        parser.set_defaults(**settings, recipe=recipe)
    parser.set_defaults(**from_file)
    args = vars(parser.parse_args(argv))
    args.pop("config")
    args["shards"] = _expand(args["shards"]) or ()
    args["val_shards"] = _expand(args["val_shards"])
    try:
        return TrainConfig(**args)
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
