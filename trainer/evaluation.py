"""Validation: MLM loss, MLM accuracy, perplexity and NSP accuracy over a fixed set of validation
batches, summed over ranks; the model's top-k guesses at masked positions (`top_guesses`: the
decoded examples here, `predict`'s fill-mask and `report`'s sentences); a few decoded examples.

`evaluate(...)` is the stand-alone entry (for `make demo`): the same numbers for a checkpoint or
for an untrained model of a preset shape.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch

from bertprep.shards.errors import ConfigError, InputError
from bertprep.shards.naming import parse_shard_name
from bertprep.shards.reader import open_shards
from bertprep.shards.render import find_vocab, token_text
from bertprep.trainer import checkpoint as ckpt_io
from bertprep.trainer.config import model_shape
from bertprep.trainer.artifacts import load_checkpoint
from bertprep.trainer.dist import Dist, all_reduce_sum, pick_device
from bertprep.trainer.model import ModelConfig, pretraining_loss
from bertprep.trainer.stream import ShardStream, StreamConfig, shard_data

SUMS = ("mlm_loss_sum", "mlm_correct", "mlm_count", "nsp_correct", "nsp_count")


def to_device(cols: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v.astype(np.int64)).to(device) for k, v in cols.items()}


def default_val_shards(train_paths) -> list[Path]:
    """The `val_` files beside the training shards: same folder, label, length and seed."""
    found = set()
    for p in map(Path, train_paths):
        name = parse_shard_name(p)
        if name is None:
            continue
        pattern = f"val_{name.label}_{name.max_len}_{name.seed}_*"
        found.update(q for q in p.parent.glob(pattern) if parse_shard_name(q) is not None)
    return sorted(found)


def val_stream(shards: list, batch_size: int, d: Dist) -> ShardStream | None:
    """Rows in order, split across ranks; the batch shrinks to fit small validation files. None
    when the files hold fewer examples than there are ranks."""
    most = max(s.num_examples for s in shards) // d.world_size
    if most < 1:
        return None
    cfg = StreamConfig(batch_size=min(batch_size, most), seed=0, rank=d.rank, world_size=d.world_size, shuffle=False)
    return ShardStream(shards, cfg)


@torch.no_grad()
def validate(model, stream: ShardStream, d: Dist, *, max_batches: int, autocast) -> dict:
    """Mean MLM loss per masked token, accuracy, perplexity (exp of the loss), NSP accuracy."""
    was_training = model.training
    model.eval()
    n = min(max_batches, stream.steps_per_epoch)
    sums = torch.zeros(len(SUMS), dtype=torch.float64, device=d.device)
    for _, _, cols in stream.batches(0, n):
        batch = to_device(cols, d.device)
        with autocast():
            mlm, nsp = model(batch["input_ids"], batch["token_type_ids"], batch["length"], batch["masked_positions"],
                             batch.get("doc_starts"))
        _, parts = pretraining_loss(mlm, nsp, batch)
        sums += torch.stack([parts.get(k, torch.zeros((), device=d.device)).double() for k in SUMS])
    all_reduce_sum(sums, d)
    model.train(was_training)
    s = dict(zip(SUMS, sums.tolist()))
    loss = s["mlm_loss_sum"] / max(1.0, s["mlm_count"])
    out = {"val_loss": loss, "val_mlm_acc": s["mlm_correct"] / max(1.0, s["mlm_count"]),
           "val_ppl": math.exp(min(loss, 700.0)), "val_tokens": int(s["mlm_count"])}
    if s["nsp_count"]:
        out["val_nsp_acc"] = s["nsp_correct"] / s["nsp_count"]
    return out


# --- decoded examples --------------------------------------------------------------------------

def vocab_for(shard_path, meta: dict, explicit: str | None) -> list[str] | None:
    """Tokens in id order: --vocab, else the token store the shards' manifest names (checked
    against the shards' tokenizer sha256; a named one that is missing or of another size is refused
    there). None when there is none: ids are shown instead."""
    return find_vocab(Path(shard_path), meta, Path(explicit) if explicit else None)


@torch.no_grad()
def top_guesses(model, batch: dict[str, torch.Tensor], k: int, autocast=contextlib.nullcontext):
    """Probabilities and ids (B, P, k) of the model's k best tokens at each `masked_positions`, best first."""
    was_training = model.training
    model.eval()
    with autocast():
        logits, _ = model(batch["input_ids"], batch["token_type_ids"], batch["length"], batch["masked_positions"],
                          batch.get("doc_starts"))
    model.train(was_training)
    probs = logits.float().softmax(-1)                                          # (B, P, V)
    return probs.topk(min(k, probs.size(-1)), dim=-1)


@torch.no_grad()
def decoded_examples(model, stream: ShardStream, device, vocab, count: int, autocast) -> list[str]:
    """The first `count` validation examples with the top-3 predictions at each masked position."""
    if count < 1:
        return []
    cols = stream.batches(0, 1)[0][2]
    batch = to_device({k: v[:count] for k, v in cols.items()}, device)
    probs, top = top_guesses(model, batch, 3, autocast)  # (b, P, 3)
    lines = []
    for b in range(batch["input_ids"].size(0)):
        ids = batch["input_ids"][b, : int(batch["length"][b])].tolist()
        text = " ".join(token_text(vocab, i) for i in ids).replace(" ##", "")
        lines.append(f"example {b + 1}: {text[:300]}{'...' if len(text) > 300 else ''}")
        for s in range(int(batch["num_masked"][b])):
            pos, target = int(batch["masked_positions"][b, s]), int(batch["masked_ids"][b, s])
            guesses = ", ".join(f"{token_text(vocab, int(t))!r} {float(p):.2f}" for t, p in zip(top[b, s], probs[b, s]))
            lines.append(f"  @{pos:<4} {token_text(vocab, target)!r:>16} <- {guesses}")
    return lines


# --- stand-alone ---------------------------------------------------------------------------------

def evaluate(val_shards, checkpoint: str | Path | None = None, *, model: str = "tiny", batch_size: int = 32,
             max_batches: int = 50, seed: int = 0, device: str = "auto", examples: int = 0,
             vocab: str | None = None) -> dict:
    """Validation numbers for `checkpoint` (a file or a run directory: its newest checkpoint), or for
    an untrained `model` preset seeded with `seed` when None. One process; device "auto" takes CUDA
    when there is one. Returns val_loss, val_mlm_acc, val_ppl (val_nsp_acc with NSP), val_tokens,
    step, and `examples` decoded lines."""
    paths = [Path(p) for p in val_shards]
    if not paths:
        raise ConfigError("evaluate: give at least one validation shard")
    shards = open_shards(paths)
    data = shard_data(shards)
    step = 0
    if checkpoint is not None:
        path, ck = load_checkpoint(checkpoint)
        ckpt_io.check_model_fits(ck, data, path)  # shorter shards are fine (a 512-position model on 128)
        net = ckpt_io.build_model(ck, path)
        step = int(ck["step"])
    else:
        torch.manual_seed(seed)
        modern = model.startswith("modern-")
        net = ckpt_io.new_model(ModelConfig(
            vocab_size=data["vocab_size"], max_len=data["max_len"], nsp=data["nsp"] and not modern,
            arch="modern" if modern else "bert", norm="pre" if modern else "post", **model_shape(model)))
    dev = pick_device(device)
    net.to(dev)
    d = Dist(rank=0, local_rank=0, world_size=1, device=dev)
    stream = val_stream(shards, batch_size, d)
    if stream is None:
        raise InputError(f"{paths[0]}: validation shards hold no examples")
    out = validate(net, stream, d, max_batches=max_batches, autocast=contextlib.nullcontext)
    words = vocab_for(shards[0].path, shards[0].meta, vocab)
    out["examples"] = decoded_examples(net, stream, dev, words, examples, contextlib.nullcontext)
    out["step"] = step
    return out
