"""The trainer's configuration: one frozen, keyword-only dataclass per component, checked on creation.

`ModelConfig` is the encoder's shape (vocab size, length and special ids come from the shards'
metadata, never from flags); `TrainConfig` is everything `trainer/run.py` accepts, one field per
flag. Every `__post_init__` raises `ConfigError` naming the flag, so a bad value is one clear line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bertprep.shards.errors import ConfigError

# name -> (layers, hidden, heads, ffn): the BERT paper's base/large and Google's small BERTs.
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (2, 128, 2, 512),
    "mini": (4, 256, 4, 1024),
    "small": (4, 512, 8, 2048),
    "medium": (8, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}
NORMS = ("post", "pre")
DECAYS = ("linear", "cosine")
SCHEDULES = ("steps", "time")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    vocab_size: int
    max_len: int                 # positions in the table (--max-position); shards up to this length fit
    layers: int = 2
    hidden: int = 128
    heads: int = 2
    ffn: int = 512
    dropout: float = 0.1         # embeddings, attention probabilities, residual branches
    norm: str = "post"           # "post" (BERT) or "pre" (+ a final LayerNorm; no HF counterpart)
    nsp: bool = False            # build the pooler and the next-sentence head
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02

    def __post_init__(self):
        for name in ("vocab_size", "max_len", "layers", "hidden", "heads", "ffn"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ConfigError(f"--hidden ({self.hidden}) must be a multiple of --heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.norm not in NORMS:
            raise ConfigError(f"--norm must be one of {', '.join(NORMS)}, got {self.norm!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def model_shape(preset: str, layers=None, hidden=None, heads=None, ffn=None) -> dict:
    """Layers/hidden/heads/ffn of a preset, with any explicit flag taking precedence."""
    if preset not in PRESETS:
        raise ConfigError(f"--model must be one of {', '.join(PRESETS)}, got {preset!r}")
    base = dict(zip(("layers", "hidden", "heads", "ffn"), PRESETS[preset]))
    if hidden is not None and heads is None:  # keep 64-wide heads when only --hidden is given
        base["heads"] = max(1, hidden // 64)
    if hidden is not None and ffn is None:
        base["ffn"] = 4 * hidden
    given = dict(layers=layers, hidden=hidden, heads=heads, ffn=ffn)
    return base | {k: v for k, v in given.items() if v is not None}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    # data
    shards: tuple[str, ...] = ()             # --shards: training shard files
    val_shards: tuple[str, ...] | None = None  # --val-shards; None: the val_ files beside the train shards
    vocab: str | None = None                 # --vocab: vocab.txt for decoded examples (default: found beside the shards)
    verify_shards: bool = True               # --verify-shards: checksums and value ranges before training
    # model
    model: str = "base"                      # --model preset
    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    ffn: int | None = None
    dropout: float = 0.1
    norm: str = "post"
    max_position: int | None = None          # --max-position: position table size; None: 512, or the shards' length if longer
    # where the weights start (default: fresh); see trainer/phases.py
    init_from: str | None = None             # --init-from RUN: a new phase from a finished run's weights
    init_from_hf: str | None = None          # --init-from-hf DIR: a HuggingFace BERT directory's weights
    keep_optimizer: bool = False             # --keep-optimizer: with --init-from, carry AdamW's moments and the schedule
    recipe: str | None = None                # --recipe: recorded here; run.py applies its settings beneath the flags
    # optimisation (defaults: the BERT paper's pretraining)
    max_steps: int = 1_000_000
    max_time: float = 0.0                    # --max-time minutes of training (validation excluded); 0: none
    batch_size: int = 32                     # per rank, per micro-step
    grad_accum: int = 1
    seed: int = 1234
    lr: float = 1e-4
    min_lr: float = 0.0
    warmup_steps: int = 10_000
    decay: str = "linear"
    schedule: str = "steps"                  # --schedule: the decay ends at --max-steps, or (time) at --max-time
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-6
    clip: float = 1.0                        # 0 turns clipping off
    precision: str = "auto"                  # auto: bf16 on CUDA, fp32 on CPU
    compile: bool = False
    device: str = "auto"
    dist_timeout: float = 600.0              # --dist-timeout: seconds a collective waits for the other ranks
    # cadence and output
    log_interval: int = 100
    val_interval: int = 1000                 # 0: no validation during training
    val_minutes: float = 0.0                 # >0: also validate every M minutes of training time
    val_batches: int = 50                    # batches per rank per validation
    val_examples: int = 3                    # decoded examples printed per validation
    ckpt_interval: int = 1000
    max_checkpoints: int = 3
    out: str | None = None                   # run directory; default runs/<label>-<model>
    resume: bool = False
    overfit_batches: int = 0                 # >0: train on the same N batches forever
    prefetch: int = 4                        # pinned host buffers in the ring
    tensorboard: bool = True
    trace_data: bool = False                 # debugging: write the rows each rank reads to out/trace/
    quiet: bool = False

    def __post_init__(self):
        if not self.shards:
            raise ConfigError("--shards: give at least one training shard file")
        model_shape(self.model, self.layers, self.hidden, self.heads, self.ffn)
        positive = ("max_steps", "batch_size", "grad_accum", "log_interval", "ckpt_interval",
                    "max_checkpoints", "prefetch", "val_batches")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "val_interval", "overfit_batches", "val_examples"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("max_time", "val_minutes"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if not 0 < self.dist_timeout < float("inf"):
            raise ConfigError(f"--dist-timeout must be a number of seconds > 0, got {self.dist_timeout}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"--min-lr must be in [0, --lr={self.lr}], got {self.min_lr}")
        if self.weight_decay < 0 or self.clip < 0 or self.eps <= 0:
            raise ConfigError("--weight-decay and --clip must be >= 0 and --eps > 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"--beta1/--beta2 must be in [0, 1), got {self.beta1}/{self.beta2}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.max_position is not None and self.max_position < 1:
            raise ConfigError(f"--max-position must be >= 1, got {self.max_position}")
        if self.init_from and self.init_from_hf:
            raise ConfigError("give --init-from (a bertprep run) or --init-from-hf (a HuggingFace directory), not both")
        if self.keep_optimizer and not self.init_from:
            raise ConfigError("--keep-optimizer carries the optimizer of --init-from RUN; give --init-from")
        if self.schedule == "time" and not self.max_time:
            raise ConfigError("--schedule time decays the learning rate over the --max-time budget; give --max-time")
        for name, value, allowed in (("decay", self.decay, DECAYS), ("schedule", self.schedule, SCHEDULES),
                                     ("norm", self.norm, NORMS),
                                     ("precision", self.precision, PRECISIONS), ("device", self.device, DEVICES)):
            if value not in allowed:
                raise ConfigError(f"--{name} must be one of {', '.join(allowed)}, got {value!r}")

    def shape(self) -> dict:
        return model_shape(self.model, self.layers, self.hidden, self.heads, self.ffn)

    def to_dict(self) -> dict:
        """Plain types only (lists, not tuples), so a checkpoint loads with weights_only=True."""
        d = dataclasses.asdict(self)
        d["shards"] = list(self.shards)
        d["val_shards"] = None if self.val_shards is None else list(self.val_shards)
        return d
