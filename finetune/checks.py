"""The checklist `bertprep finetune` runs for the user, as pure functions over numbers and arrays.

Fine-tuning fails quietly: random weights instead of pretrained ones, labels shifted by one class,
a model that answers one class for everything, a lucky seed. `finetune/tune.py` measures; this
module judges and words it:

- `weights_line`: how many encoder tensors came from the checkpoint; none at all is refused.
- `label_balance`: class counts of train and validation, and what is wrong with them (a class
  with no training example, labels validation has and train lacks, an id column taken for labels).
- `rating_line`: the regression target's spread and the error of always answering its mean.
- `initial_loss_line`: the untrained head's cross-entropy against ln(classes the data has).
- `render_batch`: a training batch decoded back to tokens, as the model sees it.
- `one_class_warning`: after an epoch, validation answered with one class (or no better than it).
- `prediction_records` / `worst_errors`: every validation prediction, and the most confident misses.
- `seed_summary`: each seed's result, mean and standard deviation.

Nothing here imports torch, so each judgement is tested on plain numbers.
"""

from __future__ import annotations

import math

import numpy as np

from bertprep.shards.errors import ShardFormatError

# The untrained head (weights N(0, 0.02)) is near uniform, so its loss is ln(K) plus a few hundredths
# (up to ~0.08 seen on encoders without a pooler, whose [CLS] vector is longer); labels shifted by
# one class put it at ln(K + 1), 0.41 above for two classes.
LOSS_TOLERANCE = 0.15
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile


def weights_line(source: str, checkpoint_shapes: dict[str, tuple], encoder_shapes: dict[str, tuple],
                 identical: bool | None = None) -> str:
    """Count the encoder tensors (names the classifier uses) found in the checkpoint with the same
    shape. Refuses a checkpoint that matches none: training would silently start from random weights."""
    used = [k for k in encoder_shapes if not k.startswith(("mlm.", "nsp.classifier."))]
    matched = [k for k in used if tuple(checkpoint_shapes.get(k, ())) == tuple(encoder_shapes[k])]
    if not matched:
        theirs = next(iter(checkpoint_shapes), None)
        hint = ""
        for prefix in WRAPPER_PREFIXES:
            if theirs is not None and theirs.startswith(prefix) and theirs[len(prefix):] in encoder_shapes:
                hint = f"; its names carry the {prefix!r} prefix of a DDP or torch.compile wrapper: strip it"
        raise ShardFormatError(
            f"{source}: none of its {len(checkpoint_shapes)} tensors match the encoder's {len(used)} by name and "
            f"shape (it has {theirs!r}, the encoder expects {used[0]!r}){hint}; fine-tuning it would train random "
            "weights (use --from-scratch if that is what you want)")
    note = "" if identical is None else ", identical after loading" if identical else ", BUT they differ after loading"
    fresh = len(used) - len(matched)
    return (f"check: encoder weights: {len(matched)} of {len(used)} tensors loaded from {source}{note}"
            + (f" ({fresh} start fresh)" if fresh else ""))


def _counts(labels: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(labels, minlength=k)


def _balance(name: str, counts: np.ndarray) -> str:
    n = max(int(counts.sum()), 1)
    shown = [f"{c}: {int(v)} ({100 * v / n:.1f}%)" for c, v in enumerate(counts)]
    if len(shown) > 12:
        shown = shown[:10] + [f"... {len(shown) - 10} more"]
    return f"{name} " + ", ".join(shown)


def label_balance(train: np.ndarray, val: np.ndarray, num_classes: int) -> tuple[list[str], list[str]]:
    """(lines, warnings) about the class counts of train and validation."""
    tc, vc = _counts(train, num_classes), _counts(val, num_classes)
    majority = int(vc.argmax())
    lines = [f"check: labels: {_balance('train', tc)} | {_balance('val', vc)}; always answering {majority} "
             f"scores {100 * vc[majority] / max(len(val), 1):.1f}% on val (the accuracy to beat)"]
    warnings = []
    absent = [c for c in range(num_classes) if tc[c] == 0]
    seen = sorted(set(np.unique(train).tolist()))
    if absent:
        why = (f"labels are expected as 0..K-1 and these run {seen[0]}..{seen[-1]}: shifted by one (1-based)?"
               if seen[0] > 0 else "a label read from the wrong column?")
        warnings.append(
            f"class{'es' if len(absent) > 1 else ''} {', '.join(map(str, absent[:10]))} "
            f"ha{'ve' if len(absent) > 1 else 's'} no training example, so the head has {num_classes} outputs for "
            f"{len(seen)} classes: {why} Check --label-column and the label values")
    only_val = sorted(set(np.unique(val).tolist()) - set(seen))
    if only_val:
        warnings.append(f"val has label{'s' if len(only_val) > 1 else ''} {', '.join(map(str, only_val[:10]))} "
                        "that train never has: the model cannot learn them (split the data by class, or check "
                        "--label-column)")
    if len(seen) > 2 and len(seen) * 2 > len(train):
        warnings.append(f"{len(seen)} distinct labels in {len(train)} training rows: is --label-column an id or "
                        "a count rather than a class?")
    if len(val) and vc.max() >= 0.9 * len(val):
        warnings.append(f"val is {100 * vc.max() / len(val):.0f}% class {majority}: accuracy says little here; "
                        "read the worst errors (--show-errors)")
    return lines, warnings


def rating_line(train: np.ndarray, val: np.ndarray) -> str:
    """The regression target's spread, and the error of always answering the training mean."""
    baseline = float(np.abs(val - train.mean()).mean())
    return (f"check: ratings: train mean {train.mean():.3g}, std {train.std():.3g}, "
            f"range {train.min():g}..{train.max():g}"
            f" | val mean {val.mean():.3g}; always answering {train.mean():.3g} gives val MAE {baseline:.4f} "
            "(the error to beat)")


def initial_loss_line(loss: float, batches: int, head_classes: int, data_classes: int) -> tuple[str, str | None]:
    """The untrained head's loss against ln(the number of classes the training data has)."""
    expected = math.log(max(data_classes, 2))
    line = (f"check: initial loss {loss:.4f} over {batches} batch{'es' if batches > 1 else ''} of the untrained "
            f"head; ln({data_classes}) = {expected:.4f}")
    if abs(loss - expected) <= max(LOSS_TOLERANCE, LOSS_TOLERANCE * expected):
        return line + ": ok", None
    if loss > expected:
        why = (f"the head has {head_classes} outputs but the data uses {data_classes} classes (labels shifted or "
               "1-based, or --label-column names another column)" if head_classes > data_classes
               else "the head is not near uniform at the start (initialised too large, or an encoder whose [CLS] "
                    "vector is very long), or the labels do not match the sentences")
    else:
        why = "the head already knows the answers: is it a trained head, or is the label written into the text?"
    return line + ": FAR OFF", f"the initial loss {loss:.4f} is far from ln({data_classes}) = {expected:.4f}: {why}"


def render_batch(seqs: list[np.ndarray], vocab: list[str], pad_id: int, labels=None, ratings=None) -> list[str]:
    """A batch as the model sees it: tokens padded to the longest row, then the targets."""
    width = max(s.shape[1] for s in seqs)
    lines = []
    for i, s in enumerate(seqs):
        tokens = [vocab[t] if 0 <= t < len(vocab) else f"<{t}>" for t in s[0].tolist()]
        pad = width - len(tokens)
        text = " ".join(tokens) + (f" {vocab[pad_id]}" * min(pad, 3)) + (f" …(x{pad})" if pad > 3 else "")
        segments = s[1].tolist()
        seg = f" | segments 0x{segments.count(0)} 1x{segments.count(1)}" if any(segments) else ""
        target = []
        if labels is not None:
            target.append(f"label {int(labels[i])}")
        if ratings is not None:
            target.append(f"rating {float(ratings[i]):g}")
        lines.append(f"  {text}{seg} -> {', '.join(target)}")
    return lines


def one_class_warning(epoch: int, preds: np.ndarray, labels: np.ndarray, seed_note: str = "") -> str | None:
    """Validation answered with a single class, or scored exactly the majority-class rate."""
    if len(labels) == 0:
        return None
    counts = np.bincount(labels)
    majority, rate = int(counts.argmax()), counts.max() / len(labels)
    acc = float((preds == labels).mean())
    answered = np.unique(preds)
    causes = ("a learning rate too high (diverged) or too low, too few steps, training data sorted by class, "
              "or labels that do not match the sentences")
    if len(answered) == 1:
        return (f"{seed_note}epoch {epoch}: predicting one class: the model answers {int(answered[0])} for every "
                f"validation example (val acc {100 * acc:.2f}%); likely {causes}")
    if abs(acc - rate) < 1e-9:
        return (f"{seed_note}epoch {epoch}: val acc {100 * acc:.2f}% equals the majority-class rate (always answering "
                f"{majority}): no better than predicting one class; likely {causes}")
    return None


def prediction_records(texts, texts_b, labels, probs, ratings, pred_ratings) -> list[dict]:
    """One record per validation row (1-based `row`, as file errors count): inputs, truths, predictions."""
    out = []
    for i, text in enumerate(texts):
        rec = {"row": i + 1, "text": text}
        if texts_b is not None:
            rec["text_b"] = texts_b[i]
        if probs is not None:
            p = probs[i]
            pred = int(p.argmax())
            rec.update(label=int(labels[i]), pred=pred, prob=round(float(p[pred]), 6),
                       probs=[round(float(x), 6) for x in p], correct=pred == int(labels[i]))
        if pred_ratings is not None:
            rec.update(rating=float(ratings[i]), pred_rating=round(float(pred_ratings[i]), 6),
                       abs_error=round(abs(float(pred_ratings[i]) - float(ratings[i])), 6))
        out.append(rec)
    return out


def worst_errors(records: list[dict], n: int) -> list[str]:
    """The n most confidently wrong predictions (largest rating errors without a class head)."""
    if records and "pred" in records[0]:
        wrong = sorted((r for r in records if not r["correct"]), key=lambda r: -r["prob"])[:n]
        total = sum(not r["correct"] for r in records)
        head = (f"worst errors: {len(wrong)} of {total} wrong, most confident first" if total
                else f"worst errors: none, all {len(records)} validation rows are right")
        rows = [f"  row {r['row']}: p={r['prob']:.3f} predicted {r['pred']}, true {r['label']}"
                + (f" | rating {r['pred_rating']:.2f}, true {r['rating']:g}" if "rating" in r else "")
                + f" | {_text(r)}" for r in wrong]
    else:
        wrong = sorted(records, key=lambda r: -r["abs_error"])[:n]
        head = f"worst errors: the {len(wrong)} largest rating errors"
        rows = [f"  row {r['row']}: predicted {r['pred_rating']:.2f}, true {r['rating']:g} "
                f"(off by {r['abs_error']:.2f}) | {_text(r)}" for r in wrong]
    return [head, *rows]


def _text(rec: dict) -> str:
    text = rec["text"] if "text_b" not in rec else f"{rec['text']} || {rec['text_b']}"
    return text if len(text) <= 140 else text[:137] + "..."


def seed_summary(per_seed: list[dict], metric: str) -> tuple[list[str], dict]:
    """Each seed's best validation score and, over several seeds, mean ± sample standard deviation
    (ddof=1: a handful of seeds estimates the spread of all seeds)."""
    percent = metric.endswith("acc")
    fmt = (lambda v: f"{100 * v:.2f}%") if percent else (lambda v: f"{v:.4f}")
    lines = ["seeds: " + " | ".join(f"{r['seed']}: {metric.replace('_', ' ')} {fmt(r[metric])} (epoch {r['epoch']})"
                                    for r in per_seed)]
    summary = {}
    for key in (metric, metric.replace("val_", "test_")):
        values = [r[key] for r in per_seed if key in r]
        if len(values) != len(per_seed) or not values:
            continue
        mean = float(np.mean(values))
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        summary[key] = {"values": values, "mean": mean, "std": std}
        lines.append(f"{key.replace('_', ' ')} over {len(values)} seeds: {fmt(mean)} ± {fmt(std)} "
                     f"(min {fmt(min(values))}, max {fmt(max(values))})")
    return lines, summary

