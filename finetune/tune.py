"""`bertprep finetune`: sentence (and sentence-pair) classification, a rating head, or both, on a
pretrained bertprep encoder, with the checklist practitioners run by hand.

The model is the pretrained encoder, a pooled vector per example (--pooling: [CLS] or the mean of
the tokens; see `finetune/classifier.py`), dropout, then a linear class head and/or a linear rating
head on the same vector; every parameter trains. Sentences are tokenized with the checkpoint's own tokenizer as `[CLS] a [SEP]`
(pairs: `[CLS] a [SEP] b [SEP]`, segment ids 0 then 1), truncated to --max-len (the longer
sentence first) and padded to the longest in each batch. Defaults are the BERT paper's recipe.

Losses: cross-entropy for classes; for ratings, L1 measured in standard deviations of the training
ratings (the head predicts `mean + std * z`, so it starts at the mean whatever the scale), weighted
by --regression-weight next to cross-entropy, alone with weight 1. The best epoch (validation
accuracy, or MAE without classes) over all --seeds is kept as `<out>/best.pt` with the tokenizer
beside it; `<out>/predictions.jsonl` holds its validation predictions.

The update is the pretraining trainer's: AdamW over BERT's weight-decay groups, warm-up then linear
decay, gradient clipping (`trainer/optim.py`), the device and bf16 autocast on CUDA
(`trainer/dist.py`), and the NaN/inf stop (`trainer/loop.py`). What is fine-tuning's own lives
here: epochs over labelled rows, a validation per epoch, the keeper of the best epoch over seeds.
The model, its inputs and its checkpoint live in `finetune/classifier.py`; the checks are worded
in `finetune/checks.py`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from bertprep.shards.atomic import atomic_write
from bertprep.shards.errors import ConfigError, InputError
from bertprep.finetune import checks
from bertprep.finetune.config import FinetuneConfig
from bertprep.finetune.classifier import (Classifier, collate, encode_texts, encoding_tokenizer, example_losses,
                                         run_heads, save_classifier)
from bertprep.finetune.labelled import Labelled, read_labelled
from bertprep.finetune.predict import labelled_predictions
from bertprep.trainer.artifacts import keep_tokenizer, token_list
from bertprep.trainer.model import ModelConfig
from bertprep.trainer.dist import autocast_for, pick_device
from bertprep.trainer.interchange import Pretrained, load_encoder, load_pretrained
from bertprep.trainer.loop import check_finite
from bertprep.trainer.metrics import MetricsLog
from bertprep.trainer.optim import adamw, optimizer_step, step_schedule

BETAS, EPS = (0.9, 0.999), 1e-6  # the BERT paper's AdamW, as pretraining's defaults


@dataclass
class Prepared:
    """Everything every seed shares: the pretrained encoder, the encoded sets, the heads' shape."""

    pre: Pretrained
    mcfg: ModelConfig
    tok: Tokenizer
    pad_id: int
    num_classes: int                     # 0: no class head
    rating: tuple[float, float] | None   # training ratings' mean and std: a rating head
    sets: dict[str, Labelled]            # train, val (, test)
    seqs: dict[str, list[np.ndarray]]
    device: torch.device
    autocast: object                     # a context factory: bf16 on CUDA, none on the CPU


def _targets(data: Labelled, rows, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    y = torch.from_numpy(data.labels[rows]).to(device) if data.labels is not None else None
    r = torch.from_numpy(data.ratings[rows]).float().to(device) if data.ratings is not None else None
    return y, r


@torch.no_grad()
def evaluate(model: Classifier, p: Prepared, split: str, cfg: FinetuneConfig, rows: np.ndarray | None = None) -> dict:
    """loss (, acc, probs) (, mae, ratings) over a set (or some of its rows), in eval mode."""
    data, seqs = p.sets[split], p.seqs[split]
    rows = np.arange(len(seqs)) if rows is None else rows
    with p.autocast():
        logits, rating = run_heads(model, [seqs[i] for i in rows], p.pad_id, cfg.batch_size, p.device)
    y, r = _targets(data, rows, "cpu")
    n = max(len(rows), 1)
    out = {"loss": example_losses(model, logits, rating, y, r, cfg.regression_weight).double().sum().item() / n}
    if logits is not None:
        out["ce"] = F.cross_entropy(logits, y, reduction="sum").item() / n
        out["probs"] = logits.softmax(-1).numpy()
        out["acc"] = float((out["probs"].argmax(-1) == data.labels[rows]).mean())
    if rating is not None:
        out["ratings"] = rating.numpy()
        out["mae"] = float(np.abs(out["ratings"] - data.ratings[rows]).mean())
    return out


def prepare(cfg: FinetuneConfig) -> Prepared:
    pre = load_pretrained(cfg.checkpoint, cfg.init_from_hf)
    mcfg = dataclasses.replace(pre.model_config, dropout=cfg.dropout)
    if cfg.max_len > mcfg.max_len:
        raise ConfigError(f"--max-len {cfg.max_len} is longer than the model's {mcfg.max_len} positions")
    files = {"train": cfg.train, "val": cfg.val, **({"test": cfg.test} if cfg.test else {})}
    sets = {k: read_labelled(f, cfg.text_column, cfg.label_column if cfg.classify else None,
                             text_column_b=cfg.text_column_b, rating_column=cfg.regression_column)
            for k, f in files.items()}
    num_classes = 0
    if cfg.classify:
        num_classes = int(max(s.labels.max() for s in sets.values())) + 1
        if num_classes < 2:
            raise InputError(f"{cfg.train}: every label is 0; a classifier needs at least two classes")
    rating = None
    if cfg.regression_column:
        r = sets["train"].ratings
        if r.std() == 0:
            raise InputError(f"{cfg.train}: every {cfg.regression_column!r} is {r[0]:g}; nothing to learn")
        rating = (float(r.mean()), float(r.std()))
    tok = encoding_tokenizer(pre.tokenizer, cfg.max_len)
    seqs = {k: encode_texts(tok, s.texts, s.texts_b) for k, s in sets.items()}
    device = pick_device(cfg.device)
    return Prepared(pre, mcfg, tok, pre.data["special_ids"]["pad"], num_classes, rating, sets, seqs,
                    device, autocast_for("auto", device))


def _order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)  # from position, never from history


def _new_model(cfg: FinetuneConfig, p: Prepared, seed: int) -> tuple[Classifier, str]:
    """A fresh model for `seed`: random heads, the encoder loaded unless --from-scratch; and the
    check line saying how many encoder tensors came from the checkpoint."""
    torch.manual_seed(seed)
    model = Classifier(p.mcfg, p.num_classes, cfg.dropout, p.rating, pooling=cfg.pooling)
    if cfg.from_scratch:
        line = f"check: encoder weights: none loaded (--from-scratch: random weights, the baseline) from {p.pre.source}"
    else:
        shapes = {k: tuple(v.shape) for k, v in p.pre.state.items()}
        mine = model.bert.state_dict()
        checks.weights_line(p.pre.source, shapes, {k: tuple(v.shape) for k, v in mine.items()})  # refuses no match
        load_encoder(p.pre, model.bert)
        mine = model.bert.state_dict()
        same = all(torch.equal(mine[k], v.to(mine[k].dtype)) for k, v in p.pre.state.items() if k in mine)
        line = checks.weights_line(p.pre.source, shapes, {k: tuple(v.shape) for k, v in mine.items()}, same)
    return model.to(p.device), line


def start_checks(cfg: FinetuneConfig, p: Prepared, model: Classifier, seed: int, echo, warn) -> None:
    """What to look at before spending compute: label balance, one decoded batch, the untrained loss."""
    train, val = p.sets["train"], p.sets["val"]
    if p.num_classes:
        lines, warnings = checks.label_balance(train.labels, val.labels, p.num_classes)
        for line in lines:
            echo(line)
        for w in warnings:
            warn(f"warning: {w}")
    if p.rating is not None:
        echo(checks.rating_line(train.ratings, val.ratings))
    first = _order(seed, 1, len(train))
    if cfg.show_batch:
        vocab = token_list(p.tok)
        rows = first[:cfg.batch_size]
        echo(f"first training batch (seed {seed}), as the model sees it:")
        for line in checks.render_batch([p.seqs["train"][i] for i in rows], vocab, p.pad_id,
                                        None if train.labels is None else train.labels[rows],
                                        None if train.ratings is None else train.ratings[rows]):
            echo(line)
    if p.num_classes:
        rows = first[:4 * cfg.batch_size]
        loss = evaluate(model, p, "train", cfg, rows)["ce"]
        line, warning = checks.initial_loss_line(loss, math.ceil(len(rows) / cfg.batch_size), p.num_classes,
                                                 len(np.unique(train.labels)))
        echo(line)
        if warning:
            warn(f"warning: {warning}")


class _Keeper:
    """Writes <out>/best.pt whenever an epoch of any seed beats every epoch before it."""

    def __init__(self, path: Path):
        self.path, self.score, self.meta = path, None, None

    def offer(self, score: tuple, model: Classifier, p: Prepared, cfg: FinetuneConfig, meta: dict) -> None:
        if self.score is None or score > self.score:
            rating = None if p.rating is None else {"column": cfg.regression_column, "mean": p.rating[0],
                                                    "std": p.rating[1]}
            save_classifier(self.path, model.state_dict(), model_config=p.mcfg, num_classes=p.num_classes,
                            rating=rating, pair=cfg.text_column_b is not None, pooling=model.pooling,
                            pool_head=model.pool_head, data=p.pre.data,
                            config={**asdict(cfg), "seeds": list(cfg.seeds)}, **meta)
            self.score, self.meta = score, meta


def train_seed(cfg: FinetuneConfig, p: Prepared, seed: int, model: Classifier, log: MetricsLog, keeper: _Keeper,
               echo, warn) -> dict:
    """Fine-tune one seed: validate after each epoch, offer each epoch to the keeper; then test the
    seed's best epoch. Returns that epoch's record (+ test metrics)."""
    train = p.sets["train"]
    micro = math.ceil(len(train) / cfg.batch_size)
    steps_per_epoch = math.ceil(micro / cfg.grad_accum)
    total = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_ratio * total))
    opt = adamw(model, lr=cfg.lr, betas=BETAS, eps=EPS, weight_decay=cfg.weight_decay)
    sched = step_schedule(opt, warmup=warmup, max_steps=total, decay="linear", min_ratio=0.0)
    note = f"seed {seed} " if len(cfg.seed_list) > 1 else ""
    best, best_state, step, t0 = None, None, 0, time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = _order(seed, epoch, len(train))
        batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        loss_sum = 0.0
        for g in range(0, len(batches), cfg.grad_accum):
            group = batches[g:g + cfg.grad_accum]
            count = sum(len(rows) for rows in group)  # the step's mean is over all its examples
            for rows in group:
                batch = {k: v.to(p.device) for k, v in collate([p.seqs["train"][i] for i in rows], p.pad_id).items()}
                with p.autocast():
                    logits, rating = model.heads(batch["input_ids"], batch["token_type_ids"], batch["length"])
                y, r = _targets(train, rows, p.device)
                loss = example_losses(model, logits, rating, y, r, cfg.regression_weight).sum() / count
                loss.backward()
                loss_sum += loss.item() * count
            check_finite(loss_sum, step + 1, keeper.path if keeper.score is not None else None, "lower --lr")
            optimizer_step(opt, model.parameters(), cfg.clip)
            sched.step()
            step += 1
        v = evaluate(model, p, "val", cfg)
        rec = {"seed": seed, "epoch": epoch, "step": step, "loss": loss_sum / len(order), "val_loss": v["loss"]}
        text = f"{note}epoch {epoch}: train loss {rec['loss']:.4f} | val loss {v['loss']:.4f}"
        if "acc" in v:
            rec["val_acc"] = v["acc"]
            text += f" | val acc {100 * v['acc']:.2f}%"
        if "mae" in v:
            rec["val_mae"] = v["mae"]
            text += f" | val MAE {v['mae']:.4f}"
        log.write(rec)
        echo(f"{text} | {time.perf_counter() - t0:.0f}s")
        if "probs" in v:
            w = checks.one_class_warning(epoch, v["probs"].argmax(-1), p.sets["val"].labels, note)
            if w:
                warn(f"warning: {w}")
        score = (v["acc"], -v["loss"]) if "acc" in v else (-v["mae"],)
        if best is None or score > best[0]:
            best = (score, rec)
            best_state = {k: t.detach().to("cpu", copy=True) for k, t in model.state_dict().items()}
        keeper.offer(score, model, p, cfg, {"seed": seed, "epoch": epoch, "pretrained": p.pre.source,
                                            **{k: v for k, v in rec.items() if k.startswith("val_")}})
    result = dict(best[1])
    if "test" in p.sets:
        model.load_state_dict(best_state)
        t = evaluate(model, p, "test", cfg)
        test = {"seed": seed, "epoch": result["epoch"], "step": step, "test_loss": t["loss"],
                **({"test_acc": t["acc"]} if "acc" in t else {}), **({"test_mae": t["mae"]} if "mae" in t else {})}
        log.write(test)
        echo(f"{note}test (best epoch {result['epoch']}): loss {t['loss']:.4f}"
             + (f" | acc {100 * t['acc']:.2f}%" if "acc" in t else "")
             + (f" | MAE {t['mae']:.4f}" if "mae" in t else ""))
        result.update({k: v for k, v in test.items() if k.startswith("test_")})
    return result


def finetune(cfg: FinetuneConfig, echo=print, warn=None) -> dict:
    """Run the start-of-run checks, fine-tune once per seed, keep the best epoch of all, report the
    seeds' spread, and write the kept model's validation predictions (printing the worst)."""
    warn = warn or echo
    p = prepare(cfg)
    model, weights = _new_model(cfg, p, cfg.seed_list[0])  # refuses a checkpoint with no matching weights
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    keep_tokenizer(p.pre.tokenizer, out)
    (out / "metrics.jsonl").unlink(missing_ok=True)  # this run's records only
    log = MetricsLog(out, enabled=True, tensorboard=False)
    heads = " and ".join(([f"{p.num_classes} classes"] if p.num_classes else [])
                         + ([f"the rating {cfg.regression_column!r}"] if p.rating else []))
    micro = math.ceil(len(p.sets["train"]) / cfg.batch_size)
    rows = "pairs" if cfg.text_column_b else "sentences"
    echo(f"fine-tuning {'a randomly initialised' if cfg.from_scratch else p.pre.source} encoder "
         f"({p.mcfg.layers}x{p.mcfg.hidden}) on {len(p.sets['train']):,} {rows}"
         f", {heads}, {cfg.epochs} epoch{'s' if cfg.epochs > 1 else ''} of {math.ceil(micro / cfg.grad_accum)} steps"
         + (f" (x{cfg.grad_accum} batches of {cfg.batch_size})" if cfg.grad_accum > 1 else "")
         + (f", seeds {','.join(map(str, cfg.seed_list))}" if len(cfg.seed_list) > 1 else "") + f" on {p.device.type}")
    keeper, per_seed = _Keeper(out / "best.pt"), []
    try:
        echo(weights)
        start_checks(cfg, p, model, cfg.seed_list[0], echo, warn)
        for n, seed in enumerate(cfg.seed_list):
            if n:
                model, _ = _new_model(cfg, p, seed)
            per_seed.append(train_seed(cfg, p, seed, model, log, keeper, echo, warn))
        metric = "val_acc" if p.num_classes else "val_mae"
        result = {"best_seed": keeper.meta["seed"], "best_epoch": keeper.meta["epoch"], metric: keeper.meta[metric],
                  "out": str(out), "seeds": per_seed}
        kept = next(r for r in per_seed if r["seed"] == keeper.meta["seed"])
        result.update({k: v for k, v in kept.items() if k.startswith("test_")})
        if len(per_seed) > 1:
            lines, summary = checks.seed_summary(per_seed, metric)
            for line in lines:
                echo(line)
            echo(f"kept seed {keeper.meta['seed']}, epoch {keeper.meta['epoch']} -> {out / 'best.pt'}")
            log.write({"event": "seeds", "seeds": list(cfg.seed_list), "best_seed": keeper.meta["seed"],
                       **{f"{k}_{stat}": s[stat] for k, s in summary.items() for stat in ("mean", "std")}})
            result["summary"] = summary
        _predictions(cfg, p, out, echo)
    finally:
        log.close()
    return result


def _predictions(cfg: FinetuneConfig, p: Prepared, out: Path, echo) -> None:
    """The kept model's validation predictions to predictions.jsonl; the worst N printed."""
    import json

    records = labelled_predictions(out / "best.pt", cfg.val, cfg.batch_size, p.device)
    with atomic_write(out / "predictions.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    if cfg.show_errors:
        for line in checks.worst_errors(records, cfg.show_errors):
            echo(line)
