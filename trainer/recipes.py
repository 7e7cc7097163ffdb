"""Pretraining recipes: a paper's settings as a TOML file in `trainer/recipes/`, applied by
`trainer/run.py --recipe NAME` beneath `--config` and the command line, and laid out as the
commands of a whole pretraining by `bertprep recipe NAME` (`plan`).

A recipe file holds `description` and `reference` strings, optionally `extends = "other-recipe"`
(its tables are merged over the other's), and three tables:

    [data]      tokenize/shard settings: vocab-size, lowercase, nsp, mask-prob, whole-word, short-seq-prob,
                strategy
    [train]     trainer flags every phase shares (flag names, as in --config)
    [[phase]]   one per phase, in order: max-len and max-predictions (the shards it reads), max-steps
                (the step counter at its end: phases continue it) and any trainer flag for it alone

Which phase a run is: the first without --init-from; with `--init-from RUN`, the one after RUN's
(read from RUN/config.json). This module never imports torch: the CLI reads it.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from bertprep.shards import options
from bertprep.shards.errors import ConfigError
from bertprep.shards.schema import default_max_predictions
from bertprep.trainer.config import TrainConfig

RECIPE_DIR = Path(__file__).parent / "recipes"
DATA_KEYS = {"vocab-size", "lowercase", "nsp", "mask-prob", "whole-word", "short-seq-prob", "strategy"}
PHASE_DATA_KEYS = {"max-len", "max-predictions"}
# Flags a recipe may not set: where the data and the run are, and how this run starts.
NOT_IN_RECIPES = {"shards", "val_shards", "vocab", "out", "resume", "init_from", "init_from_hf", "recipe", "quiet",
                  "trace_data", "device"}


@dataclass(frozen=True)
class Phase:
    max_len: int
    max_predictions: int | None
    max_steps: int
    train: dict                 # trainer settings of this phase (flat flag keys, as --config), max_steps included


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    reference: str
    source: Path
    data: dict = field(default_factory=dict)     # flag names with '-', as bertprep tokenize/shard spell them
    train: dict = field(default_factory=dict)    # trainer settings (flat flag keys, as --config)
    phases: tuple[Phase, ...] = ()

    def settings(self, index: int) -> dict:
        """The trainer settings of phase `index` (1-based; past the last phase: the last)."""
        return self.train | self.phases[min(index, len(self.phases)) - 1].train


def available() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def _read(name: str, seen: tuple = ()) -> tuple[dict, Path]:
    path = Path(name) if name.endswith(".toml") else RECIPE_DIR / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"--recipe {name}: no such recipe (shipped: {', '.join(available())}; or a .toml file)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"--recipe {path}: not a readable TOML file ({e})") from None
    parent = raw.pop("extends", None)
    if parent is None:
        return raw, path
    if parent in seen:
        raise ConfigError(f"--recipe {path}: extends itself through {parent!r}")
    base, _ = _read(parent, seen + (parent,))
    merged = base | {k: v for k, v in raw.items() if k not in ("data", "train")}
    for table in ("data", "train"):
        merged[table] = base.get(table, {}) | raw.get(table, {})
    return merged, path


# The [data] settings' types (their bounds are the tokenize/shard configs', checked when run).
DATA_TYPES = {"vocab-size": int, "lowercase": bool, "nsp": bool, "mask-prob": float, "whole-word": bool,
              "short-seq-prob": float, "strategy": str}


def _train_settings(table: dict, where: str) -> dict:
    known = {x.dest for x in options.flags(TrainConfig)}
    for key in table:
        dest = key.replace("-", "_")
        if dest not in known or dest in NOT_IN_RECIPES:
            raise ConfigError(f"{where}: {key!r} is not a trainer setting a recipe may hold")
    return options.read_table(TrainConfig, table, where)


def load_recipe(name: str) -> Recipe:
    """A shipped recipe by name (`bert-base`) or a recipe file by path (`my.toml`), checked."""
    raw, path = _read(name)
    unknown = set(raw) - {"description", "reference", "data", "train", "phase"}
    if unknown:
        raise ConfigError(f"{path}: unknown recipe entries {sorted(unknown)}")
    bad = set(raw.get("data", {})) - DATA_KEYS
    if bad:
        raise ConfigError(f"{path}: unknown [data] settings {sorted(bad)} (known: {', '.join(sorted(DATA_KEYS))})")
    for key, value in raw.get("data", {}).items():
        options.check_value(f"{path}: [data] {key}", value, type=DATA_TYPES[key])
    phases, last = [], 0
    for i, table in enumerate(raw.get("phase", []), 1):
        where = f"{path}: phase {i}"
        if "max-len" not in table or "max-steps" not in table:
            raise ConfigError(f"{where}: needs integer max-len and max-steps")
        for key in ("max-len", "max-steps", "max-predictions"):
            if key in table:
                options.check_value(f"{where}: {key}", table[key], type=int, meta={"at_least": 1})
        if table["max-steps"] <= last:
            raise ConfigError(f"{where}: max-steps {table['max-steps']} must exceed the previous phase's {last}")
        last = table["max-steps"]
        train = _train_settings({k: v for k, v in table.items() if k not in PHASE_DATA_KEYS}, where)
        phases.append(Phase(table["max-len"], table.get("max-predictions"), table["max-steps"], train))
    if not phases:
        raise ConfigError(f"{path}: a recipe needs at least one [[phase]]")
    return Recipe(name=path.stem, description=str(raw.get("description", "")), reference=str(raw.get("reference", "")),
                  source=path, data=dict(raw.get("data", {})),
                  train=_train_settings(raw.get("train", {}), f"{path}: [train]"),
                  phases=tuple(phases))


def phase_index(init_from: str | None) -> int:
    """1 for a run from fresh weights; after --init-from RUN, the phase after RUN's."""
    if not init_from:
        return 1
    path = Path(init_from)
    run = path if path.is_dir() else path.parent.parent if path.parent.name == "checkpoints" else path.parent
    try:
        previous = json.loads((run / "config.json").read_text(encoding="utf-8")).get("phase") or {}
    except (OSError, ValueError):
        previous = {}
    return int(previous.get("index", 1)) + 1


# --- `bertprep recipe`: the commands of a whole pretraining ---------------------------------------

PAPER_EPOCHS = 40       # "approximately 40 epochs over the 3.3 billion word corpus"
TOKENS_PER_BYTE = 0.2   # WordPiece on English text: ~478k tokens from the 2.5 MB demo corpus (0.19)
FILL = 0.91             # share of real tokens in a segment-packed example (bench/README.md: ~9% padding)


@dataclass(frozen=True)
class Step:
    title: str
    command: str


def plan(recipe: Recipe, corpus: list[str], *, data_defaults: dict, tokens: int | None, tokens_exact: bool,
         corpus_bytes: int, gpus: int = 1, steps: int | None = None, batch: int | None = None,
         vocab_size: int | None = None, tokens_dir: str = "tokens") -> tuple[list[str], list[Step]]:
    """(summary lines, steps with their exact commands) for pretraining on `corpus` with `recipe`:
    tokenize, shard at each phase's length (one --split-seed, so every phase keeps the same
    validation documents), then train each phase from the one before. `steps` rescales the
    schedule (phase boundaries and warm-up in proportion); `batch` is the global batch.
    `data_defaults`: the defaults of `bertprep tokenize` and `shard` by flag name ('vocab-size'),
    which the CLI reads from their configs (preprocess/, which trainer/ does not import)."""
    total = recipe.phases[-1].max_steps
    scale = (steps / total) if steps else 1.0
    global_batch = batch or int(recipe.train.get("batch_size", options.flag_named(TrainConfig, "batch_size").default))
    if gpus < 1 or global_batch % gpus:
        raise ConfigError(f"--batch-size {global_batch} must be a multiple of --gpus {gpus}")
    per_gpu = global_batch // gpus
    name, runs, lines = recipe.name, [], []
    ends = [max(1, round(p.max_steps * scale)) for p in recipe.phases]
    for i in range(1, len(ends)):
        if ends[i] <= ends[i - 1]:
            raise ConfigError(f"--steps {steps} is too few for {len(ends)} phases")
    n_tokens = tokens if tokens is not None else int(corpus_bytes * TOKENS_PER_BYTE)
    how = ("counted by tokenize" if tokens_exact
           else f"estimated from {corpus_bytes / 1e6:,.1f} MB at ~{TOKENS_PER_BYTE} tokens/byte")
    lines.append(f"recipe {name}: {recipe.description}")
    if recipe.reference:
        lines.append(f"  after {recipe.reference}")
    lines.append(f"corpus: {' '.join(corpus)}: about {n_tokens:,} tokens ({how})")
    data = data_defaults | recipe.data
    nsp = bool(data["nsp"])
    steps_list = []
    vocab = vocab_size or int(data["vocab-size"])
    tok_cmd = f"bertprep tokenize {' '.join(corpus)} --out {tokens_dir} --vocab-size {vocab}"
    tok_cmd += "" if data["lowercase"] else " --cased"
    steps_list.append(Step("Tokenize (a WordPiece vocabulary trained on the corpus; ids, sentence and document "
                           "boundaries)", tok_cmd))
    start = 0
    for i, (p, end) in enumerate(zip(recipe.phases, ends), 1):
        specials = 3 if nsp else 2
        packed = data.get("strategy") == "pack"  # no padding; a [CLS] and [SEP] per ~1.1 documents a row
        examples = max(1, int(n_tokens * 0.98 / ((p.max_len - specials) * (0.99 if packed else FILL))))
        seen = (end - start) * global_batch
        epochs = seen / examples
        # google-research/bert: dupe_factor 10, masks drawn once per copy; with --mask-prob the trainer
        # masks every epoch afresh, so one copy is enough
        dynamic = recipe.settings(i).get("mask_prob") is not None
        dupe = 1 if dynamic else min(10, max(1, round(epochs)))
        shard_dir = f"shards-{p.max_len}"
        cmd = f"bertprep shard --tokens {tokens_dir} --out {shard_dir} --max-len {p.max_len}"
        if p.max_predictions:
            cmd += f" --max-predictions {p.max_predictions}"
        cmd += (" --nsp" if nsp else "") + (" --whole-word" if data["whole-word"] else "")
        if data.get("strategy", "segment") != data_defaults.get("strategy", "segment"):
            cmd += f" --strategy {data['strategy']}"
        for key in ("mask-prob", "short-seq-prob"):
            if data[key] != data_defaults[key]:
                cmd += f" --{key} {data[key]}"
        cmd += f" --dupe-factor {dupe} --split-seed 0"
        slots = p.max_predictions or default_max_predictions(p.max_len, float(data["mask-prob"]))
        size = examples * dupe * (3 * p.max_len + 4 * slots + 6)  # uint16 ids, uint8 segments, uint16 targets
        steps_list.append(Step(
            f"Shard at {p.max_len} tokens for phase {i} ("
            + ("masked afresh each epoch by the trainer" if dynamic else
               f"{dupe} differently masked cop{'y' if dupe == 1 else 'ies'}") + ", "
            f"about {examples * dupe:,} examples, ~{_bytes(size)}; --split-seed 0 puts the same documents in "
            f"train/val/test at every length)", cmd))
        lines.append(f"phase {i}: steps {start:,} -> {end:,} at {p.max_len} tokens, batch {global_batch}: "
                     f"{seen:,} examples = about {epochs:,.1f} epochs of ~{examples:,} training examples")
        runs.append((p, start, end, shard_dir))
        if i == 1 and epochs > PAPER_EPOCHS:
            fit = round(PAPER_EPOCHS * examples / global_batch * ends[-1] / end)
            lines.append(f"note: that is far more passes than the paper's ~{PAPER_EPOCHS} epochs (of 3.3B words); "
                         f"--steps {fit:,} sizes the schedule to ~{PAPER_EPOCHS} epochs of this corpus")
        start = end
    launcher = "python trainer/run.py" if gpus == 1 else f"torchrun --nproc-per-node {gpus} trainer/run.py"
    lines.append(f"batch: {global_batch} examples per step = {per_gpu} per GPU x {gpus} GPU(s); if {per_gpu} do not "
                 f"fit in a GPU's memory, add --batch-size {max(1, per_gpu // 2)} --grad-accum 2 to the train commands")
    spec = name if recipe.source.parent == RECIPE_DIR else str(recipe.source)  # what --recipe must be given
    previous = None
    for i, (p, begin, end, shard_dir) in enumerate(runs, 1):
        out = f"runs/{name}-{p.max_len}"
        start_from = f" --init-from {previous}" if previous else ""
        cmd = f"{launcher} --recipe {spec}{start_from} --shards {shard_dir}/train_* --out {out}"
        settings = recipe.settings(i)
        if per_gpu != settings.get("batch_size"):
            cmd += f" --batch-size {per_gpu}"
        if end != settings["max_steps"]:
            cmd += f" --max-steps {end}"
        warmup = settings.get("warmup_steps")
        if warmup and scale != 1.0:
            cmd += f" --warmup-steps {round(warmup * scale)}"
        what = "from fresh weights" if previous is None else f"from phase {i - 1}'s weights; the step counter goes on"
        steps_list.append(Step(f"Train phase {i}: steps {begin:,} -> {end:,} on {p.max_len}-token shards, {what}", cmd))
        previous = out
    return lines, steps_list


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n / 1e3:,.0f} kB"
