"""The fine-tuned model, its inputs, its predictions and its checkpoint: what `finetune` trains and
evaluates, `predict` and `report` load (`load_classifier`) and run (`run_heads`).

`Classifier` is a pretrained encoder, a pooled vector per example, dropout, then a linear class
head and/or a linear rating head on it. Pooling (`--pooling`, ModernBERT's `classifier_pooling`):

| pooling | BERT (`trainer/model.py`)                        | modern (`trainer/modern.py`)                       |
| ------- | ------------------------------------------------ | -------------------------------------------------- |
| cls     | [CLS]'s final state; the NSP pooler's tanh where pretraining trained one | [CLS]'s final state, then the pretrained MLM head's dense + GELU + norm, as `ModernBertForSequenceClassification` |
| mean    | mean of the real tokens' final states            | the same mean, then that head                       |

Inputs
are `[CLS] a [SEP]` or, for pairs, `[CLS] a [SEP] b [SEP]` with segment ids 0 then 1, made by the
run's own tokenizer. A checkpoint (`best.pt`) is a `torch.save`d dict of tensors and plain values,
loaded with `weights_only=True` and sealed as pretraining checkpoints are (`trainer/checkpoint.py`):

    format, version   "bertprep-classifier", 4 (3 is read: [CLS] pooling, no modern head)
    sha256            of everything else in the file (the seal)
    model             the Classifier's state dict: bert.* (our encoder names), head.* (classes),
                      rate.* (ratings)
    model_config      the encoder's ModelConfig as a dict
    num_classes       K (0: no class head)
    pooling           "cls" or "mean"; pool_head: whether the pooled vector goes through the
                      encoder's pretrained MLM head transform (modern encoders)
    rating            None, or {"column", "mean", "std"}: the head predicts mean + std * z
    pair              whether inputs are sentence pairs
    data              the pretraining data's settings (vocab size, special ids, tokenizer sha256)
    config            the FinetuneConfig as a dict
    seed, epoch, val_*, pretrained   which run and epoch was kept, its validation figures, its source
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tokenizers import Tokenizer

from bertprep.shards.atomic import atomic_write
from bertprep.shards.errors import ShardFormatError
from bertprep.finetune.config import POOLINGS
from bertprep.trainer import checkpoint as ckpt_io
from bertprep.trainer.model import ModelConfig

CLASSIFIER_FORMAT = "bertprep-classifier"
CLASSIFIER_VERSION = 4  # 2: optional rating head, num_classes 0, sentence pairs; 3: sealed; 4: pooling
READ_VERSIONS = (3, 4)  # 3: before pooling was recorded ([CLS], no modern head)


class Classifier(nn.Module):
    """Encoder -> pooled vector -> dropout -> class logits and/or a rating. Keeps the whole
    pretrained encoder (its MLM head too) so the encoder's state dict keeps the names every other
    tool maps. `pool_head` (default: modern encoders) passes the pooled vector through the MLM
    head's transform."""

    def __init__(self, mcfg: ModelConfig, num_classes: int, dropout: float, rating: tuple[float, float] | None = None,
                 pooling: str = "cls", pool_head: bool | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
        self.bert = ckpt_io.new_model(mcfg)
        self.pooling = pooling
        self.pool_head = mcfg.arch == "modern" if pool_head is None else pool_head
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(mcfg.hidden, num_classes) if num_classes else None
        self.rate = nn.Linear(mcfg.hidden, 1) if rating else None
        self.rating_mean, self.rating_std = rating or (0.0, 1.0)  # the training ratings' (kept in the checkpoint)
        for layer in (self.head, self.rate):
            if layer is not None:
                nn.init.normal_(layer.weight, std=mcfg.init_std)
                nn.init.zeros_(layer.bias)

    def heads(self, input_ids, token_type_ids, lengths):
        """Class logits (B, K) and ratings (B,) in the target's units; None for a head it lacks."""
        if self.pooling == "mean":
            h = self.bert.encode(input_ids, token_type_ids, lengths)                  # (B, T, C)
            real = torch.arange(h.size(1), device=h.device)[None, :] < lengths[:, None]  # (B, T)
            h = (h * real[:, :, None].to(h.dtype)).sum(1) / lengths[:, None].to(h.dtype)  # (B, C)
        else:
            cls = torch.zeros_like(lengths)[:, None]                                   # (B, 1)
            h = self.bert.encode(input_ids, token_type_ids, lengths, cls)[:, 0]        # (B, C)
            if self.bert.nsp is not None:  # trained by NSP on [CLS] only
                h = torch.tanh(self.bert.nsp.pooler(h))
        if self.pool_head:
            h = self.bert.head(h)
        h = self.drop(h)
        logits = self.head(h) if self.head is not None else None                       # (B, K)
        rating = self.rating_mean + self.rating_std * self.rate(h)[:, 0] if self.rate is not None else None  # (B,)
        return logits, rating

    forward = heads  # model(...) is model.heads(...): one output shape for every caller


def example_losses(model: Classifier, logits, rating, labels, ratings, weight: float) -> torch.Tensor:
    """Per-example loss (B,): cross-entropy + weight x |rating error| / std of the training ratings
    (the L1 alone when there are no classes)."""
    loss = 0.0
    if logits is not None:
        loss = F.cross_entropy(logits.float(), labels, reduction="none")
    if rating is not None:
        l1 = (rating.float() - ratings).abs() / model.rating_std
        loss = loss + (weight if logits is not None else 1.0) * l1
    return loss


def encoding_tokenizer(tokenizer_json: Path, max_len: int) -> Tokenizer:
    """The run's tokenizer set to add [CLS]/[SEP], truncate to `max_len` (pairs: the longer side
    first), and read special-token text in sentences as plain text (as `bertprep tokenize` does)."""
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.encode_special_tokens = True
    tok.no_padding()
    tok.enable_truncation(max_len)
    return tok


def encode_texts(tok: Tokenizer, texts: list[str], texts_b: list[str] | None = None) -> list[np.ndarray]:
    """Each example as a (2, L) int64 array: token ids, then segment ids (1 on `b [SEP]`)."""
    inputs = texts if texts_b is None else list(zip(texts, texts_b))
    return [np.asarray([e.ids, e.type_ids], dtype=np.int64) for e in tok.encode_batch(inputs, add_special_tokens=True)]


def collate(seqs: list[np.ndarray], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad examples to the longest of the batch: (2, L) arrays of ids and segments, or (L,) ids
    (segment 0)."""
    seqs = [s if s.ndim == 2 else np.stack([s, np.zeros_like(s)]) for s in seqs]
    lengths = np.fromiter((s.shape[1] for s in seqs), dtype=np.int64, count=len(seqs))
    ids = np.full((len(seqs), int(lengths.max())), pad_id, dtype=np.int64)
    segments = np.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : s.shape[1]], segments[i, : s.shape[1]] = s
    return {"input_ids": torch.from_numpy(ids), "token_type_ids": torch.from_numpy(segments),
            "length": torch.from_numpy(lengths)}  # the shards' column name: one batch vocabulary


@torch.no_grad()
def run_heads(model: Classifier, seqs: list[np.ndarray], pad_id: int, batch_size: int,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Class logits (N, K) and ratings (N,) of encoded examples, float32 on the CPU, computed batch by
    batch in eval mode (None for a head the model lacks): what evaluation, predict and report use."""
    was_training = model.training
    model.eval()
    logits, ratings = [], []
    for start in range(0, len(seqs), batch_size):
        batch = {k: v.to(device) for k, v in collate(seqs[start:start + batch_size], pad_id).items()}
        lg, rt = model.heads(batch["input_ids"], batch["token_type_ids"], batch["length"])
        if lg is not None:
            logits.append(lg.float().cpu())
        if rt is not None:
            ratings.append(rt.float().cpu())
    model.train(was_training)
    return (torch.cat(logits) if logits else None), (torch.cat(ratings) if ratings else None)


def save_classifier(path: Path, state: dict, *, model_config: ModelConfig, num_classes: int,
                    rating: dict | None, pair: bool, pooling: str, pool_head: bool, data: dict, config: dict,
                    **extra) -> None:
    """Write a classifier checkpoint atomically: plain values and tensors only."""
    with atomic_write(path) as f:
        torch.save(ckpt_io.seal({"format": CLASSIFIER_FORMAT, "version": CLASSIFIER_VERSION, "model": state,
                                 "model_config": model_config.to_dict(), "num_classes": num_classes, "rating": rating,
                                 "pair": pair, "pooling": pooling, "pool_head": pool_head, "data": data,
                                 "config": config, **extra}), f)


def load_classifier(path: Path, ckpt: dict | None = None) -> tuple[Classifier, dict]:
    """A fine-tuned classifier in eval mode, read without running code (weights_only) and checked:
    format, version, seal, weights that fit the recorded shape. `ckpt`: the file already read."""
    ckpt = ckpt_io.read_torch_file(path) if ckpt is None else ckpt  # refuses pickle payloads, truncated files
    if not isinstance(ckpt, dict) or ckpt.get("format") != CLASSIFIER_FORMAT:
        raise ShardFormatError(f"{path}: not a bertprep classifier checkpoint")
    if ckpt.get("version") not in READ_VERSIONS:
        raise ShardFormatError(f"{path}: classifier version {ckpt.get('version')}, this bertprep reads "
                               f"{' and '.join(map(str, READ_VERSIONS))}; fine-tune again with this bertprep")
    ckpt_io.check_seal(ckpt, path)
    rating = ckpt.get("rating")
    try:
        shape = (ckpt_io.model_config(ckpt, path), int(ckpt["num_classes"]), 0.0,
                 (float(rating["mean"]), float(rating["std"])) if rating else None,
                 *((ckpt["pooling"], bool(ckpt["pool_head"])) if ckpt["version"] >= 4 else ("cls", False)))
        if shape[4] not in POOLINGS:
            raise ValueError(f"pooling {shape[4]!r}")
    except (KeyError, TypeError, ValueError) as e:
        raise ShardFormatError(f"{path}: damaged classifier checkpoint ({e.__class__.__name__}: {e})") from None
    ckpt_io.check_shapes(ckpt.get("model"), ckpt_io.expected_shapes(Classifier, *shape), path)
    model = Classifier(*shape)
    ckpt_io.load_state(model, ckpt["model"], path)
    return model.eval(), ckpt
