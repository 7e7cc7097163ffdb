"""The trainer's configuration: `TrainConfig`, composed of one frozen, keyword-only config per component.

| part         | class              | defined in          | what it sets                                   |
|--------------|--------------------|---------------------|------------------------------------------------|
| `data`       | `DataConfig`       | trainer/stream.py   | the shards or mixture, order, global batch, ring |
| `masking`    | `MaskingConfig`    | trainer/remask.py   | dynamic masking: rate, replacement, whole words |
| `model`      | `ShapeConfig`      | here                | a size preset and overrides, dropout, norm     |
| `loop`       | `LoopConfig`       | here                | steps, time, batch, precision, device, cadence |
| `optim`      | `OptimConfig`      | trainer/optim.py    | AdamW and the learning-rate schedule           |
| `checkpoint` | `CheckpointConfig` | here                | the run directory, resume, --init-from phases  |

Every field that is a flag says so with `option(default, help=...)` (shards/options.py): the
trainer's command line (trainer/run.py), `--config` TOML keys and recipe keys are derived from
the fields, and stay flat: `--lr` and `lr = 1e-4` set `cfg.optim.lr`. `train_config(lr=...)`
builds one from flat keys, as the command line does.

`ModelConfig`, the network's exact shape (vocab size, length and special ids come from the
shards, never from flags), is in trainer/model.py. `ShapeConfig`, `LoopConfig` and
`CheckpointConfig` are here, not beside model.py, loop.py and checkpoint.py, because those import
torch and this module must not: `bertprep recipe` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bertprep.shards import options
from bertprep.shards.errors import ConfigError
from bertprep.shards.options import check, option
from bertprep.trainer.optim import OptimConfig
from bertprep.trainer.remask import MaskingConfig
from bertprep.trainer.stream import DataConfig

# name -> (layers, hidden, heads, ffn): the BERT paper's base/large and Google's small BERTs.
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (2, 128, 2, 512),
    "mini": (4, 256, 4, 1024),
    "small": (4, 512, 8, 2048),
    "medium": (8, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
    # ModernBERT (--arch modern): ffn is the GeGLU width F (Wi: C -> 2F). base and large are
    # ModernBERT's own shapes; tiny and mini are as wide as BERT's, with a global layer and its two
    # local ones (one ModernBERT period) or two periods.
    "modern-tiny": (3, 128, 2, 256),
    "modern-mini": (6, 256, 4, 512),
    "modern-base": (22, 768, 12, 1152),
    "modern-large": (28, 1024, 16, 2624),
}
# name -> (peak --lr, --warmup-steps) that trainer/run.py gives a preset when neither a flag, a
# --config file nor a recipe sets them. base and large: the BERT paper's 1e-4 with 10,000 warm-up
# steps (for 1M steps). Smaller models take larger rates (roughly in inverse proportion to the
# width, 128 -> 768 being 6x) and are trained in short runs, where a 10,000-step warm-up never
# ends: measured on tiny, 10 minutes on a CPU reach held-out MLM accuracy 0.149 with 1e-3 and 100
# warm-up steps against 0.056 with base's 1e-4 and 10,000. A warm-up of ~1% of a short run's steps.
PRESET_RATES: dict[str, tuple[float, int]] = {
    "tiny": (1e-3, 100),
    "mini": (5e-4, 300),
    "small": (3e-4, 1000),
    "medium": (2e-4, 3000),
    "base": (1e-4, 10_000),
    "large": (1e-4, 10_000),
    # ModernBERT's peak rates (8e-4 base, 5e-4 large); the small ones as BERT's small presets.
    "modern-tiny": (1e-3, 100),
    "modern-mini": (8e-4, 300),
    "modern-base": (8e-4, 10_000),
    "modern-large": (5e-4, 10_000),
}
Preset = Literal[tuple(PRESETS)]
Norm = Literal["post", "pre"]
Arch = Literal["bert", "modern"]
MINUTES_PER_YEAR = 365 * 24 * 60  # --max-time and --val-minutes: a year is longer than any run


def model_shape(preset: str, layers=None, hidden=None, heads=None, ffn=None) -> dict:
    """Layers/hidden/heads/ffn of a preset, with any explicit flag taking precedence."""
    if preset not in PRESETS:
        raise ConfigError(f"--model must be one of {', '.join(PRESETS)}, got {preset!r}")
    base = dict(zip(("layers", "hidden", "heads", "ffn"), PRESETS[preset]))
    if hidden is not None and heads is None:  # keep 64-wide heads when only --hidden is given
        base["heads"] = max(1, hidden // 64)
    if hidden is not None and ffn is None:  # BERT's 4x; ModernBERT's GeGLU 1.5x (1152 at 768)
        base["ffn"] = hidden * 3 // 2 if preset.startswith("modern-") else 4 * hidden
    given = dict(layers=layers, hidden=hidden, heads=heads, ffn=ffn)
    return base | {k: v for k, v in given.items() if v is not None}


@dataclass(frozen=True, kw_only=True)
class ShapeConfig:
    """model: the encoder's size and form (trainer/phases.py turns it into a ModelConfig)"""

    preset: Preset = option("base", flag="--model", help="size preset: layers/hidden of the BERT paper and "
                            "Google's small BERTs; modern-*: ModernBERT's shapes (and --arch modern)")
    arch: Arch | None = option(None, help=(
        "bert: BERT-2018 (learned positions, GELU, post-norm by default); modern: ModernBERT (pre-norm, no "
        "biases, GeGLU, rotary positions, local/global attention, no NSP head) [default: modern for a modern-* "
        "--model, else bert]"))
    layers: int | None = option(None, at_least=1, at_most=1024, help="encoder layers (overrides the preset)")
    hidden: int | None = option(None, at_least=1, at_most=65536, help="hidden width (overrides the preset)")
    heads: int | None = option(None, at_least=1, at_most=1024,
                               help="attention heads (default: hidden/64 with --hidden, else the preset's)")
    ffn: int | None = option(None, at_least=1, at_most=1 << 20, help="feed-forward width (default: 4 x hidden)")
    dropout: float | None = option(None, at_least=0, below=1, help=(
        "dropout on embeddings, attention and residual branches [default: 0.1 for bert, 0 for modern]"))
    norm: Norm = option("post", help="post: LayerNorm after each residual (BERT); pre: before (+ final LayerNorm); "
                        "--arch modern is always pre")
    window: int = option(128, at_least=2, at_most=1 << 16, help=(
        "--arch modern: the local layers attend over |i - j| <= window / 2 tokens (ModernBERT: 128)"))
    global_every: int = option(3, at_least=1, at_most=1024, help=(
        "--arch modern: layers 0, k, 2k, ... attend over the whole sequence, the others locally (ModernBERT: 3)"))
    positions: Literal["rope", "learned"] = option("rope", help=(
        "--arch modern: rotary positions (ModernBERT), or BERT's learned table (an ablation; not exportable)"))
    mlp: Literal["geglu", "gelu"] = option("geglu", help=(
        "--arch modern: GeGLU feed-forward (ModernBERT), or BERT's GELU (an ablation; not exportable)"))
    max_position: int | None = option(None, at_least=1, at_most=1 << 16, help=(
        "positions in the model's table, the longest shards it will take (default: 512, or the shards' length "
        "when longer)"))

    def __post_init__(self):
        # The exact shape is checked by ModelConfig, once the shards' length and vocab are known;
        # the bounds here are far beyond BERT-Large (24 x 1024, 16 heads, ffn 4096) and keep a
        # typo from allocating what no device holds. Positions are uint16 in the shards: 65536.
        check(self)

    def shape(self) -> dict:
        return model_shape(self.preset, self.layers, self.hidden, self.heads, self.ffn)

    @property
    def architecture(self) -> str:
        return self.arch or ("modern" if self.preset.startswith("modern-") else "bert")

    @property
    def dropout_rate(self) -> float:
        if self.dropout is not None:
            return self.dropout
        return 0.0 if self.architecture == "modern" else 0.1


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """loop: how long, how big, on what, and how often to log and validate (trainer/loop.py)"""

    max_steps: int = option(1_000_000, at_least=1, at_most=10**9, help="optimizer steps to train for")
    max_time: float = option(0.0, at_least=0, at_most=MINUTES_PER_YEAR, help=(
        "minutes of training (validation and checkpoints excluded) after which the run validates, checkpoints and "
        "stops (0: no limit)"))
    batch_size: int = option(32, at_least=1, at_most=1 << 16, help="examples per rank per micro-step")
    grad_accum: int = option(1, at_least=1, at_most=1 << 16, help="micro-steps per optimizer step")
    seed: int = option(1234, at_least=0, at_most=options.SEED_LIMIT, help="seed of the weights, dropout and data order")
    precision: Literal["auto", "fp32", "bf16"] = option("auto", help="auto: bf16 autocast on CUDA, fp32 on CPU")
    compile: bool = option(False, help="torch.compile the model")
    device: Literal["auto", "cpu", "cuda"] = option("auto", help="auto: CUDA when available")
    dist_timeout: float = option(600.0, above=0, at_most=7 * 24 * 3600, help=(
        "seconds a collective waits for the other ranks before this rank gives up (a hung rank; torchrun stops "
        "the others at once when one dies)"))
    log_interval: int = option(100, at_least=1, help="steps between log lines and metrics.jsonl records")
    val_interval: int = option(1000, at_least=0, help="steps between validations (0: none)")
    val_minutes: float = option(0.0, at_least=0, at_most=MINUTES_PER_YEAR,
                                help="also validate every M minutes of training time (0: off)")
    val_batches: int = option(50, at_least=1, at_most=1 << 20, help="validation batches per rank")
    val_examples: int = option(3, at_least=0, at_most=1000, help="decoded validation examples shown per validation")
    overfit_batches: int = option(0, at_least=0, help="train on the same N batches (a debugging check: the loss should "
                                  "reach ~0)")
    tensorboard: bool = option(True, help="write TensorBoard events (when the tensorboard package is installed)")
    quiet: bool = option(False, help="no progress lines on stderr")

    def __post_init__(self):
        # Bounds on the fields: 10^9 steps is a thousand times BERT's pretraining; a batch of
        # 65536 examples per rank and micro-step (or as many micro-steps) is beyond any device.
        check(self)


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """checkpoint: where the run is kept and where its weights start (trainer/checkpoint.py, phases.py)"""

    ckpt_interval: int = option(1000, at_least=1, help="steps between checkpoints (one is also written at the end)")
    max_checkpoints: int = option(3, at_least=1, help="keep the newest K checkpoints")
    out: str | None = option(None, help="run directory (default: runs/<label>-<model>)")
    resume: bool = option(False, help="continue from the newest checkpoint in --out")
    init_from: str | None = option(None, help=(
        "start a new phase from this run (its newest checkpoint, or a checkpoint file): its weights, a fresh "
        "optimizer, schedule and data position, and the step counter going on"))
    init_from_hf: str | None = option(None, help="start from a HuggingFace BERT directory (its tokenizer must be "
                                      "the shards')")
    keep_optimizer: bool = option(False, help="with --init-from: carry AdamW's moments and the schedule instead "
                                  "of restarting them")

    def __post_init__(self):
        check(self)
        if self.init_from and self.init_from_hf:
            raise ConfigError("give --init-from (a bertprep run) or --init-from-hf (a HuggingFace directory), not both")
        if self.keep_optimizer and not self.init_from:
            raise ConfigError("--keep-optimizer carries the optimizer of --init-from RUN; give --init-from")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything `trainer/run.py` accepts, by component."""

    data: DataConfig = field(default_factory=DataConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    model: ShapeConfig = field(default_factory=ShapeConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    recipe: str | None = option(None, help="a recipe's settings (a name `bertprep recipe` lists, or a .toml "
                                "file); --config and flags override it")

    def __post_init__(self):
        check(self)
        if self.data.global_batch_size is not None and self.loop.grad_accum != 1:
            raise ConfigError("--grad-accum is derived from --global-batch-size; give one of them, not both")
        if self.optim.schedule == "time" and not self.loop.max_time:
            raise ConfigError("--schedule time decays the learning rate over the --max-time budget; give --max-time")

    def to_dict(self) -> dict:
        """Flat flag keys and plain types (lists, not tuples), so a checkpoint loads with
        weights_only=True and a run's config.json `train` table reads back as a --config file."""
        return options.flat(self)


def train_config(**flags) -> TrainConfig:
    """A TrainConfig from flat flag keys (`lr=1e-4`, `shards=(...)`), as the command line sets them."""
    return options.build(TrainConfig, flags)
