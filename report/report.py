"""`bertprep report RUN_DIR -o report.html`: one self-contained HTML page about a training run.

    bertprep report runs/pydocs-tiny -o report.html [-n 8] [--val shards/val_*]

A pretraining run gets its settings, its curves (`report/plotting.py`), the final validation
figures next to those of the untrained model (the run's shape, with the random initial weights its
`--seed` gives, as the trainer builds them), and N validation sentences with every masked position coloured: green where
the top-1 guess is the true token, orange where it is not, with the true token beside it and the
top-3 guesses with probabilities on hover (or beside every guess, by a switch on the page). A
fine-tuning run gets its settings, curves, the confusion matrix on its validation set and the worst
errors (wrong and most confident), from the run's `predictions.jsonl` or predicted on `--val FILE`.
Images are embedded as data URIs and the page has no script, so it opens anywhere with no network.

Only the run directory is read, plus what its checkpoint needs for predictions: the validation
shards (or labelled file) the run recorded, or `--val`, and the tokenizer the checkpoint names.
HTML markup lives in `report/page.py`.
"""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from bertprep.shards.atomic import atomic_write
from bertprep.shards.errors import BertprepError, InputError
from bertprep.shards.options import flag_named
from bertprep.shards.reader import open_shards
from bertprep.shards.render import find_vocab, token_text
from bertprep.trainer import checkpoint as ckpt_io
from bertprep.report import page
from bertprep.report.config import ReportConfig
from bertprep.finetune.classifier import load_classifier
from bertprep.finetune.predict import labelled_predictions
from bertprep.trainer.artifacts import find_tokenizer, token_list
from bertprep.trainer.config import TrainConfig
from bertprep.trainer.dist import Dist
from bertprep.trainer.mixture import recorded_shard_paths
from bertprep.trainer.evaluation import default_val_shards, to_device, top_guesses, val_stream, validate
from bertprep.report.plotting import RunLog, draw, figure_bytes, read_run
from bertprep.trainer.stream import shard_data

PREDICTIONS_FILE = "predictions.jsonl"  # written by `bertprep finetune` where it does


def write_report(cfg: ReportConfig) -> dict:
    """Write the report atomically; returns out, kind, and what it holds (examples, masked tokens,
    notes on what was left out and why)."""
    out = Path(cfg.out)
    if not out.parent.is_dir():
        raise InputError(f"-o {out}: no such directory {out.parent}")
    for given in cfg.val:  # named by the user: a wrong path is a mistake, not a report without figures
        if not Path(given).is_file():
            raise InputError(f"--val {given}: no such file (validation shard files for a pretraining run, "
                             "a labelled file for a fine-tuning run)")
    run = read_run(cfg.run)
    curves = "data:image/png;base64," + base64.b64encode(figure_bytes(draw([run]), "png", 90)).decode()
    build = _finetune if run.kind == "finetune" else _pretrain
    summary = {"out": cfg.out, "kind": run.kind, "examples": 0, "masked": 0, "notes": []}
    sections = build(run, cfg, summary)
    # after what the run achieved and before the folded settings
    sections.insert(max(1, len(sections) - 1), ("Curves", page.image(curves, f"training curves of {run.name}")))
    title = f"{run.name}: {'fine-tuning' if run.kind == 'finetune' else 'pretraining'} run"
    html = page.document(title, str(run.path), sections, summary["notes"])
    with atomic_write(out, "w") as f:
        f.write(html)
    return summary


# --- pretraining ---------------------------------------------------------------------------------

def _pretrain(run: RunLog, cfg: ReportConfig, summary: dict) -> list[tuple[str, str]]:
    config = _json(run.path / "config.json")
    notes = summary["notes"]
    sections = [("Overview", page.facts(_overview(config) | _facts(run)))]
    all_settings = ("Settings", page.settings({"model": config.get("model", {}), "training": config.get("train", {}),
                                               "data": config.get("data", {})}, "config.json"))
    sections.extend(_pretrain_predictions(run, cfg, config, notes, summary))
    return sections + [all_settings]


def _pretrain_predictions(run: RunLog, cfg: ReportConfig, config: dict, notes: list, summary: dict) -> list:
    """The final figures against the untrained model's, and the coloured validation sentences."""
    sections = []
    ckpt_path = ckpt_io.newest(run.path)
    if ckpt_path is None:
        notes.append("no checkpoint in this run directory: final figures and predictions left out")
        return sections
    ck = ckpt_io.load(ckpt_path)  # refuses a damaged file in one line
    paths = list(cfg.val) or _recorded_val_shards(config or {"train": ck.get("config") or {}})
    missing = [p for p in paths if not Path(p).is_file()]
    if not paths or missing:
        notes.append(f"validation shards {'not recorded' if not paths else 'not found: ' + ', '.join(missing[:3])}; "
                     "final figures and predictions left out (pass --val shards/val_*)")
        return sections
    shards = open_shards(paths)
    ckpt_io.check_model_fits(ck, shard_data(shards), ckpt_path)  # shards up to the position table's length
    trained = ckpt_io.build_model(ck, ckpt_path)
    with torch.random.fork_rng(devices=[]):  # the run's own initial weights: the trainer seeds, then builds
        torch.manual_seed(int((ck.get("config") or {}).get("seed", flag_named(TrainConfig, "seed").default)))
        untrained = ckpt_io.new_model(trained.cfg)
    d = Dist(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    stream = val_stream(shards, cfg.batch_size, d)
    if stream is None:
        notes.append("the validation shards hold no examples: final figures and predictions left out")
        return sections
    before, after = (validate(m, stream, d, max_batches=cfg.val_batches, autocast=contextlib.nullcontext)
                     for m in (untrained, trained))
    step = int(ck["step"])
    sections.append(("Final figures", page.figures(before, after, step, len(paths))))
    vocab = _vocab(ck, ckpt_path, shards, notes)
    examples = masked_predictions(trained, shards, cfg.examples, vocab)
    summary["examples"] = len(examples)
    summary["masked"] = sum(t.get("ok") is not None for ex in examples for t in ex["tokens"])
    if examples:
        sections.append((f"Validation sentences at step {step:,}", page.sentences(examples)))
    return sections


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _recorded_val_shards(config: dict) -> list[str]:
    train = config.get("train") or {}
    if train.get("val_shards"):
        return list(train["val_shards"])
    return [str(p) for p in default_val_shards(recorded_shard_paths(train))]


def _overview(config: dict) -> dict:
    """The settings that say what a pretraining run was, in a line each."""
    m, t, d = (config.get(k) or {} for k in ("model", "train", "data"))
    out = {}
    if m:
        out["model"] = (f"{t.get('model', '')} {m.get('layers')} layers x {m.get('hidden')} hidden, "
                        f"{m.get('heads')} heads, ffn {m.get('ffn')}, {m.get('norm')}-norm, "
                        f"dropout {m.get('dropout')}").strip()
    if d:
        out["data"] = (f"{d.get('label')}: max_len {d.get('max_len')}, vocab {d.get('vocab_size', 0):,}, "
                       f"{'MLM + NSP' if d.get('nsp') else 'MLM'}")
    phase = config.get("phase") or {}
    if isinstance(phase, dict) and phase.get("index", 1) > 1:  # a later phase of a multi-phase run
        out["phase"] = f"{phase.get('name')}, from step {phase.get('start_step', 0):,}"
    if t:
        ranks = config.get("world_size", 1)
        out["optimisation"] = (f"batch {t.get('batch_size')} x {t.get('grad_accum')} accum x {ranks} rank(s), lr "
                               f"{t.get('lr')} ({t.get('warmup_steps')} warm-up, {t.get('decay')} decay), "
                               f"seed {t.get('seed')}")
    return out


def _facts(run: RunLog) -> dict:
    train = [r for r in run.records if "loss" in r and "event" not in r]
    ends = [r for r in run.records if r.get("event") == "end"]
    facts = {"steps": max((r["step"] for r in run.records if isinstance(r.get("step"), int)), default=0)}
    if train:
        facts["last train loss"] = f"{train[-1]['loss']:.4f}"
        speeds = [r["tokens_per_s"] for r in train if isinstance(r.get("tokens_per_s"), (int, float))]
        if speeds:
            facts["median tokens/s"] = f"{float(np.median(speeds)):,.0f}"
        if isinstance(train[-1].get("elapsed_s"), (int, float)):
            facts["training time"] = f"{train[-1]['elapsed_s']:,.1f} s"
    if ends:
        facts["stopped by"] = ends[-1].get("stopped", "?")
    facts["resumed"] = sum(r.get("event") == "resume" for r in run.records)
    return facts


def _vocab(ck: dict, ckpt_path: Path, shards: list, notes: list) -> list[str] | None:
    try:
        return token_list(Tokenizer.from_file(str(find_tokenizer(ck, ckpt_path))))[: ck["data"]["vocab_size"]]
    except BertprepError:
        vocab = find_vocab(shards[0].path, shards[0].meta)
        if vocab is None:
            notes.append("the run's tokenizer was not found: tokens are shown as ids")
        return vocab


def _first_rows(shards: list, count: int) -> dict[str, np.ndarray]:
    parts, left = [], count
    for s in shards:
        if left <= 0:
            break
        take = min(left, s.num_examples)
        parts.append(s.slice(0, take))
        left -= take
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


@torch.no_grad()
def masked_predictions(model: torch.nn.Module, shards: list, count: int, vocab: list[str] | None) -> list[dict]:
    """The first `count` validation examples, token by token; a masked position carries the top-1
    guess (`text`), the true token (`truth`), `ok`, the `top` 3 (token, probability) and what the
    input held there (`[MASK]`, the token itself, or a random one)."""
    rows = _first_rows(shards, count)
    if not rows or count < 1:
        return []
    specials = shards[0].meta["special_ids"]
    probs, top = top_guesses(model, to_device(rows, torch.device("cpu")), 3)     # (B, P, 3)
    examples = []
    for b in range(len(rows["length"])):
        ids = rows["input_ids"][b, : int(rows["length"][b])].tolist()
        targets = {}
        for s in range(int(rows["num_masked"][b])):
            pos, true_id = int(rows["masked_positions"][b, s]), int(rows["masked_ids"][b, s])
            guesses = [(token_text(vocab, int(t)), float(p)) for t, p in zip(top[b, s], probs[b, s])]
            shown = ids[pos]
            given = ("[MASK]" if shown == specials["mask"] else "unchanged" if shown == true_id
                     else f"random: {token_text(vocab, shown)}")
            targets[pos] = {"text": guesses[0][0], "truth": token_text(vocab, true_id),
                            "ok": int(top[b, s, 0]) == true_id, "top": guesses, "input": given}
        tokens = []
        for pos, i in enumerate(ids):
            if pos in targets:
                tokens.append(targets[pos])
            elif i == specials["sep"] and pos < len(ids) - 1:
                tokens.append({"sep": True})
            elif i not in (specials["cls"], specials["sep"], specials["pad"]):
                tokens.append({"text": token_text(vocab, i)})
        examples.append({"row": b, "tokens": tokens})
    return examples


# --- fine-tuning ---------------------------------------------------------------------------------

def _finetune(run: RunLog, cfg: ReportConfig, summary: dict) -> list[tuple[str, str]]:
    notes = summary["notes"]
    best = run.path / "best.pt"
    if not best.is_file():
        notes.append("no best.pt in this run directory: confusion matrix and errors left out")
        return [("Overview", page.facts(_facts(run)))]
    _, ck = load_classifier(best)  # refuses a damaged file in one line
    kept = {k: (f"{100 * v:.2f}%" if k.endswith("_acc") else f"{v:.4f}") for k, v in ck.items()
            if k.startswith("val_") and isinstance(v, float)}
    facts = {"kept": f"epoch {ck.get('epoch')}" + (f", seed {ck['seed']}" if "seed" in ck else ""), **kept,
             "pretrained from": ck.get("pretrained"), "classes": ck.get("num_classes")}
    for key in ("test_acc", "test_mae"):
        # with --seeds every seed has a test record: report the kept model's seed
        tests = [r[key] for r in run.records if isinstance(r.get(key), (int, float))
                 and r.get("seed", ck.get("seed")) == ck.get("seed")]
        if tests:
            facts[key] = f"{100 * tests[-1]:.2f}%" if key == "test_acc" else f"{tests[-1]:.4f}"
    sections = [("Overview", page.facts(facts | _facts(run)))]
    all_settings = ("Settings", page.settings({"fine-tuning": ck.get("config") or {},
                                               "model": ck.get("model_config", {})}, "best.pt"))
    if cfg.val:
        rows, source = labelled_predictions(best, cfg.val[0], cfg.batch_size), str(cfg.val[0])
    else:
        rows, source = _read_predictions(run.path / PREDICTIONS_FILE), PREDICTIONS_FILE
        if rows is None:
            notes.append(f"no readable {PREDICTIONS_FILE} in this run directory: confusion matrix and errors left "
                         "out (pass --val FILE to predict a labelled file)")
    if rows:
        sections.extend(_finetune_sections(rows, source, int(ck.get("num_classes") or 0), cfg, summary))
    return sections + [all_settings]


def _finetune_sections(rows: list[dict], source: str, classes: int, cfg: ReportConfig, summary: dict) -> list:
    """The confusion matrix and the most confident errors; or, for a rating head alone, the
    largest rating errors."""
    if "pred" not in rows[0]:
        worst = sorted(rows, key=lambda r: -r.get("abs_error", 0.0))[: cfg.examples]
        summary["examples"] = len(worst)
        return [(f"Largest rating errors ({len(worst)} of {len(rows)} on {source})", page.errors(worst))]
    k = max(classes, 1 + max(max(r["label"], r["pred"]) for r in rows))
    matrix = np.zeros((k, k), dtype=np.int64)
    for r in rows:
        matrix[r["label"], r["pred"]] += 1
    majority = matrix.sum(1).max() / max(1, matrix.sum())
    wrong = sorted((r for r in rows if r["label"] != r["pred"]), key=lambda r: -r["prob"])
    summary["examples"] = min(len(wrong), cfg.examples)
    return [("Confusion matrix", page.confusion(matrix, source, majority)),
            (f"Worst errors ({summary['examples']} of {len(wrong)}, most confident first)",
             page.errors(wrong[: cfg.examples]))]


def _read_predictions(path: Path) -> list[dict] | None:
    """The run's validation predictions as `bertprep finetune` writes them (a record per row:
    `text` (`text_b`), `label`, `pred`, `prob`, and/or `rating`, `pred_rating`, `abs_error`);
    None when there is no such file or it does not read as one."""
    if not path.is_file():
        return None
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            return None
        classified = all(isinstance(r.get(k), int) and r[k] >= 0 for k in ("label", "pred")) and _real(r.get("prob"))
        rated = all(_real(r.get(k)) for k in ("rating", "pred_rating", "abs_error"))
        if not isinstance(r, dict) or not isinstance(r.get("text"), str) or not (classified or rated):
            return None
        rows.append(r)
    if not rows or len({"pred" in r for r in rows}) > 1:
        return None
    return rows


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
