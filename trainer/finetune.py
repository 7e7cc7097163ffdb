"""`bertprep finetune`: sentence classification (SST-2 and alike) on a pretrained bertprep encoder.

The classifier is the pretrained encoder, the pooler where pretraining had one (tanh over [CLS]),
dropout and a linear layer; every parameter trains. Sentences are tokenized with the checkpoint's
own tokenizer as `[CLS] sentence [SEP]`, truncated to --max-len and padded to the longest in each
batch. Defaults are the BERT paper's fine-tuning recipe. The best epoch (validation accuracy) is
kept as `<out>/best.pt` with the tokenizer beside it, so `predict` and `export` can use the run.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tokenizers import Tokenizer

from bertprep.trainer.labelled import Labelled, read_labelled
from bertprep.shards.atomic import atomic_write
from bertprep.shards.errors import ConfigError, InputError, ShardFormatError
from bertprep.trainer.artifacts import keep_tokenizer
from bertprep.trainer.config import ModelConfig
from bertprep.trainer.interchange import load_encoder, load_pretrained
from bertprep.trainer.metrics import MetricsLog
from bertprep.trainer.model import Bert
from bertprep.trainer.optim import lr_factor, param_groups

CLASSIFIER_FORMAT = "bertprep-classifier"
CLASSIFIER_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    checkpoint: str | None = None       # --checkpoint: pretraining run directory or checkpoint file
    init_from_hf: str | None = None     # --init-from-hf: a HuggingFace BERT directory instead
    train: str                          # --train
    val: str                            # --val
    test: str | None = None             # --test
    text_column: str = "sentence"       # --text-column
    label_column: str = "label"         # --label-column
    out: str = "runs/finetune"          # --out
    epochs: int = 3                     # --epochs
    batch_size: int = 32                # --batch-size
    lr: float = 2e-5                    # --lr
    warmup_ratio: float = 0.1           # --warmup-ratio
    weight_decay: float = 0.01          # --weight-decay
    clip: float = 1.0                   # --clip
    dropout: float = 0.1                # --dropout (classifier and encoder)
    max_len: int = 128                  # --max-len
    seed: int = 0                       # --seed
    from_scratch: bool = False          # --from-scratch: same architecture, random weights
    device: str = "auto"                # --device

    def __post_init__(self):
        for name in ("epochs", "batch_size", "max_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.weight_decay < 0 or self.clip < 0:
            raise ConfigError("--weight-decay and --clip must be >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device must be auto, cpu or cuda, got {self.device!r}")


class Classifier(nn.Module):
    """Encoder -> pooled [CLS] -> dropout -> linear. Keeps the whole pretrained `Bert` (its MLM head
    stays untouched) so the encoder's state dict keeps the names every other tool maps."""

    def __init__(self, mcfg: ModelConfig, num_classes: int, dropout: float):
        super().__init__()
        self.bert = Bert(mcfg)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(mcfg.hidden, num_classes)
        nn.init.normal_(self.head.weight, std=mcfg.init_std)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, token_type_ids, lengths):
        cls = torch.zeros_like(lengths)[:, None]                                       # (B, 1)
        h = self.bert.encode(input_ids, token_type_ids, lengths, cls)[:, 0]            # (B, C)
        if self.bert.nsp is not None:
            h = torch.tanh(self.bert.nsp.pooler(h))
        return self.head(self.drop(h))                                                 # (B, K)


def encoding_tokenizer(tokenizer_json: Path, max_len: int) -> Tokenizer:
    """The run's tokenizer set to add [CLS]/[SEP], truncate to `max_len`, and read special-token
    text in sentences as plain text (as `bertprep tokenize` does)."""
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.encode_special_tokens = True
    tok.no_padding()
    tok.enable_truncation(max_len)
    return tok


def encode_sentences(tok: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    return [np.asarray(e.ids, dtype=np.int64) for e in tok.encode_batch(texts, add_special_tokens=True)]


def collate(seqs: list[np.ndarray], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence of the batch."""
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    ids = np.full((len(seqs), int(lengths.max())), pad_id, dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
    return {"input_ids": torch.from_numpy(ids), "token_type_ids": torch.zeros_like(torch.from_numpy(ids)),
            "lengths": torch.from_numpy(lengths)}


def evaluate_classifier(model: Classifier, seqs, labels, batch_size: int, pad_id: int, device) -> dict:
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(seqs), batch_size):
            batch = {k: v.to(device) for k, v in collate(seqs[start:start + batch_size], pad_id).items()}
            y = torch.from_numpy(labels[start:start + batch_size]).to(device)
            logits = model(batch["input_ids"], batch["token_type_ids"], batch["lengths"])
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += int((logits.argmax(-1) == y).sum())
    n = max(len(seqs), 1)
    return {"loss": loss_sum / n, "acc": correct / n}


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def _read(path: str, cfg: FinetuneConfig) -> Labelled:
    return read_labelled(path, cfg.text_column, cfg.label_column)


def save_classifier(path: Path, model: Classifier, mcfg: ModelConfig, num_classes: int, data: dict,
                    cfg: FinetuneConfig, extra: dict) -> None:
    with atomic_write(path) as f:
        torch.save({"format": CLASSIFIER_FORMAT, "version": CLASSIFIER_VERSION, "model": model.state_dict(),
                    "model_config": mcfg.to_dict(), "num_classes": num_classes, "data": data,
                    "config": asdict(cfg), **extra}, f)


def load_classifier(path: Path) -> tuple[Classifier, dict]:
    """A fine-tuned classifier, loaded without running code (weights_only)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # refused pickle payloads and truncated files are bad input
        raise ShardFormatError(f"{path}: not a loadable checkpoint ({e.__class__.__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CLASSIFIER_FORMAT:
        raise ShardFormatError(f"{path}: not a bertprep classifier checkpoint")
    if ckpt.get("version") != CLASSIFIER_VERSION:
        raise ShardFormatError(f"{path}: classifier version {ckpt.get('version')}, this bertprep reads {CLASSIFIER_VERSION}")
    model = Classifier(ModelConfig(**ckpt["model_config"]), ckpt["num_classes"], 0.0)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, ckpt


def finetune(cfg: FinetuneConfig, echo=print) -> dict:
    """Fine-tune, validating after each epoch; keeps the best epoch; tests it at the end."""
    pre = load_pretrained(cfg.checkpoint, cfg.init_from_hf)
    mcfg = ModelConfig(**{**pre.model_config.to_dict(), "dropout": cfg.dropout})
    if cfg.max_len > mcfg.max_len:
        raise ConfigError(f"--max-len {cfg.max_len} is longer than the model's {mcfg.max_len} positions")
    train, val = _read(cfg.train, cfg), _read(cfg.val, cfg)
    test = _read(cfg.test, cfg) if cfg.test else None
    num_classes = int(max(train.labels.max(), val.labels.max(), test.labels.max() if test else 0)) + 1
    if num_classes < 2:
        raise InputError(f"{cfg.train}: every label is 0; a classifier needs at least two classes")
    tok = encoding_tokenizer(pre.tokenizer, cfg.max_len)
    pad_id = pre.data["special_ids"]["pad"]
    train_seqs, val_seqs = encode_sentences(tok, train.texts), encode_sentences(tok, val.texts)
    test_seqs = encode_sentences(tok, test.texts) if test else None

    torch.manual_seed(cfg.seed)
    device = _device(cfg.device)
    model = Classifier(mcfg, num_classes, cfg.dropout)
    if not cfg.from_scratch:
        load_encoder(pre, model.bert)
    model.to(device)
    steps_per_epoch = math.ceil(len(train_seqs) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_ratio * total))
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, warmup=warmup, max_steps=total, decay="linear", min_ratio=0.0))

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    keep_tokenizer(pre.tokenizer, out)
    (out / "metrics.jsonl").unlink(missing_ok=True)  # this run's records only
    log = MetricsLog(out, enabled=True, tensorboard=False)
    data = pre.data
    echo(f"fine-tuning {'a randomly initialised' if cfg.from_scratch else pre.source} encoder "
         f"({mcfg.layers}x{mcfg.hidden}) on {len(train_seqs):,} sentences, {num_classes} classes, "
         f"{cfg.epochs} epochs of {steps_per_epoch} steps on {device.type}")
    rng = np.random.default_rng(cfg.seed)
    best, step, t0 = None, 0, time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = rng.permutation(len(train_seqs))
        loss_sum = 0.0
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start:start + cfg.batch_size]
            batch = {k: v.to(device) for k, v in collate([train_seqs[i] for i in rows], pad_id).items()}
            y = torch.from_numpy(train.labels[rows]).to(device)
            loss = F.cross_entropy(model(batch["input_ids"], batch["token_type_ids"], batch["lengths"]), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            sched.step()
            step += 1
            loss_sum += loss.item() * len(rows)
            if not math.isfinite(loss.item()):
                raise ConfigError(f"the loss became {loss.item()} at step {step}; lower --lr")
        v = evaluate_classifier(model, val_seqs, val.labels, cfg.batch_size, pad_id, device)
        rec = {"epoch": epoch, "step": step, "loss": loss_sum / len(order), "val_loss": v["loss"], "val_acc": v["acc"]}
        log.write(rec)
        echo(f"epoch {epoch}: train loss {rec['loss']:.4f} | val loss {v['loss']:.4f} | val acc {100 * v['acc']:.2f}%"
             f" | {time.perf_counter() - t0:.0f}s")
        if best is None or v["acc"] > best["val_acc"]:
            best = rec
            save_classifier(out / "best.pt", model, mcfg, num_classes, data, cfg,
                            {"epoch": epoch, "val_acc": v["acc"], "pretrained": pre.source})
    result = {"best_epoch": best["epoch"], "val_acc": best["val_acc"], "out": str(out)}
    if test is not None:
        model, _ = load_classifier(out / "best.pt")
        model.to(device)
        t = evaluate_classifier(model, test_seqs, test.labels, cfg.batch_size, pad_id, device)
        log.write({"epoch": best["epoch"], "step": step, "test_loss": t["loss"], "test_acc": t["acc"]})
        echo(f"test (best epoch {best['epoch']}): loss {t['loss']:.4f} | acc {100 * t['acc']:.2f}%")
        result["test_acc"] = t["acc"]
    log.close()
    return result
