"""`bertprep finetune`'s flags: `FinetuneConfig`, its fields with their defaults, bounds and help.

Apart from `finetune/tune.py` (which runs it) and torch-free, so `bertprep finetune --help` answers
without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from bertprep.shards.errors import ConfigError
from bertprep.shards.options import SEED_LIMIT, check, option

Pooling = Literal["cls", "mean"]
POOLINGS = get_args(Pooling)  # what `Classifier` and a checkpoint's `pooling` may be


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """`bertprep finetune`: defaults are the BERT paper's fine-tuning recipe."""

    checkpoint: str | None = option(None, help="Pretraining run directory (its newest checkpoint) or checkpoint file.")
    init_from_hf: str | None = option(None, metavar="PATH", help=(
        "Start from a HuggingFace BERT directory (weights and tokenizer) instead of --checkpoint."))
    train: str = option(help="Labelled training set: .parquet (SST-2 layout), .tsv, .csv or .jsonl.")
    val: str = option(help="Labelled validation set, evaluated after each epoch.")
    test: str | None = option(None, help="Labelled test set, evaluated once with each seed's best epoch.")
    text_column: str = option("sentence", help="Column of the text (the first sentence of a pair).")
    text_column_b: str | None = option(None, help=(
        "Second sentence of a pair: inputs become [CLS] a [SEP] b [SEP] (entailment-style tasks)."))
    label_column: str = option("label", help="Integer labels 0..K-1.")
    task: Literal["classification", "regression"] = option("classification", help=(
        "regression: only a rating head on --regression-column, no classes."))
    regression_column: str | None = option(None, help=(
        "A number per row (e.g. a star rating) learnt by a rating head on the same [CLS] output, reported as MAE; "
        "with --task classification, next to the classes."))
    regression_weight: float = option(0.02, above=0, help=(
        "Weight of the rating's L1 loss (in standard deviations of the training ratings) next to cross-entropy."))
    out: str = option("runs/finetune", help="Run directory: best.pt, metrics.jsonl, predictions.jsonl, tokenizer.")
    epochs: int = option(3, at_least=1, at_most=1000, help="Passes over the training set.")
    batch_size: int = option(32, at_least=1, at_most=1 << 16, help="Examples per batch.")
    grad_accum: int = option(1, at_least=1, at_most=1 << 16, help=(
        "Batches summed into one optimizer step (an effective batch of batch-size x N in less memory)."))
    lr: float = option(2e-5, above=0, at_most=1.0, help="Peak learning rate of AdamW.")
    warmup_ratio: float = option(0.1, at_least=0, below=1,
                                 help="Share of steps of linear warm-up; then linear decay to 0.")
    weight_decay: float = option(0.01, at_least=0, at_most=1.0, help="AdamW decay (not on biases and LayerNorm).")
    clip: float = option(1.0, at_least=0, help="Gradient-norm clipping (0: off).")
    dropout: float = option(0.1, at_least=0, below=1, help="Dropout of the classifier and the encoder.")
    pooling: Pooling = option("cls", help=(
        "The vector the heads read: cls, [CLS]'s final state (BERT's choice; through the NSP pooler where pretraining "
        "had NSP); mean, the mean of the real tokens' final states. A modern encoder's pooled vector then goes "
        "through its pretrained MLM head transform, as in ModernBertForSequenceClassification, whose "
        "classifier_pooling this is. Try both: on bench/README.md's four-topic task mean suits the modern "
        "encoder, cls the BERT recipe."))
    max_len: int = option(128, at_least=3, at_most=1 << 16, help="Tokens per example, [CLS]/[SEP] included.")
    seed: int = option(0, at_least=0, at_most=SEED_LIMIT, help="Seed of the head's weights, dropout and data order.")
    seeds: tuple[int, ...] = option((), sep=",", at_least=0, at_most=SEED_LIMIT, help=(
        "Comma-separated seeds, e.g. 1,2,3: one fine-tune per seed, each accuracy and mean ± std reported, the best "
        "epoch of all kept (replaces --seed)."))
    from_scratch: bool = option(False, help="Same architecture with random weights (the baseline to compare with).")
    show_batch: bool = option(False, help=(
        "Print the first training batch decoded ([CLS] text [SEP] [PAD]...) with its labels."))
    show_errors: int = option(0, metavar="N", at_least=0, help="Print the N validation rows the kept model gets most "
                              "confidently wrong.")
    device: Literal["auto", "cpu", "cuda"] = option("auto", help="auto: CUDA when available.")

    def __post_init__(self):
        # Bounds on the fields (shards/options.py): 1000 epochs is far past where fine-tuning
        # overfits; the AdamW rate and decay are shares of the weights moved per step (<= 1).
        check(self)
        if self.task == "regression" and not self.regression_column:
            raise ConfigError("--task regression needs --regression-column (the column of numbers to learn)")
        if self.seeds and self.seed != 0:  # 0: the field's default (the command also refuses --seed 0)
            raise ConfigError("give --seed N (one fine-tune) or --seeds N,M,... (one per seed), not both")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds has a seed twice: {','.join(map(str, self.seeds))}")

    @property
    def classify(self) -> bool:
        return self.task == "classification"

    @property
    def seed_list(self) -> tuple[int, ...]:
        return self.seeds or (self.seed,)
