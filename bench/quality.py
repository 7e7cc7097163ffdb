"""Time to accuracy: held-out MLM accuracy against training minutes, bertprep's path next to the
HuggingFace path, in one run on one corpus, vocab, model shape, batch, length and thread count
(issue 13).

    python -m bench.quality CORPUS                       # 2 x 20 minutes of training, one side after the other
    python -m bench.quality CORPUS --minutes 10 --json q.json --plot q.png

- **Common**: a WordPiece vocab of `--vocab-size` (8,000) trained on CORPUS by `bertprep tokenize`
  (both sides use that tokenizer.json); BERT 2 layers / 128 hidden / 2 heads / 512 feed-forward;
  batch 32 x 128 tokens; 15% of tokens predicted (80/10/10); `--threads` torch threads; 2% of the
  documents held out, the same documents on both sides (bertprep's seeded document split), each side
  evaluating on its own examples of them; evaluation every `--eval-every` minutes of training time,
  its own time left out of the training clock. Each side's learning rate warms up over its warm-up
  steps and decays linearly to 0 as its training clock reaches the budget (bertprep's `--schedule
  time`; the same rule in the HF side's LambdaLR), so both end annealed whatever their speed.
- **HF**: the documents' paragraphs as a `datasets.Dataset` of lines (what `load_dataset('text')`
  gives), `.map` with a `PreTrainedTokenizerFast` (`[CLS] line [SEP]`), `.map(group_texts)` into
  128-token blocks (run_mlm.py), a `DataLoader` with `DataCollatorForLanguageModeling(mlm_probability
  =0.15)`, `BertForMaskedLM` (sdpa attention), AdamW lr 1e-3 (fused; HF Trainer's defaults:
  weight decay 0, eps 1e-8, clip 1.0), 100 warm-up steps, dropout 0.1. Its validation set is the
  held-out blocks masked `--eval-masks` times by the same collator with fixed seeds.
- **bertprep**: `bertprep tokenize` -> `bertprep shard --strategy split --max-len 128 --split
  0.98,0.02,0 --dupe-factor D` (D differently masked copies, for masks that change between epochs as
  the collator's do) -> `trainer/run.py --max-time MINUTES --val-minutes E` with the recipe flags
  below; the curve is the trainer's own validation records in metrics.jsonl.
- **modern**: the same tokens sharded `--strategy pack` (documents packed to 128 tokens, attention
  kept within each), `--arch modern` (`modern-tiny`: 3 x 128, GeGLU 256, RoPE, local/global
  attention, no dropout), 30% dynamic masking (`--mask-prob 0.3`), a warm-up / stable / decay
  schedule (`--stable 0.8 --decay 1-sqrt` on the time budget). It validates on the bertprep side's
  split shards with their static 15% masks, so every bertprep-built side is scored on the same
  examples and masks.
- **Ablations** (`--ablation`): the modern side with one element turned back to BERT's at a time
  (`VARIANTS` below): 15% masking, split shards, learned positions, GELU (--ffn 384, the GeGLU's
  parameter count), BERT's linear decay.

Each side runs in its own process, one after the other, never at the same time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, cpu_seconds, machine_line, report_result, run_side, table, versions

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
SHAPE = {"layers": 2, "hidden": 128, "heads": 2, "ffn": 512}
SPLIT = (0.98, 0.02, 0.0)
# The modern recipe at tiny scale: ModernBERT's block as wide as the BERT side's model, 30% masking.
MODERN = {"model": "modern-tiny", "layers": 3, "hidden": 128, "heads": 2, "ffn": 256, "dropout": 0.0,
          "mask_prob": 0.3, "stable": 0.8, "decay": "1-sqrt"}
# side -> (shards it trains on, its trainer settings over the BERT recipe's)
VARIANTS = {
    "bertprep": ("split", {}),
    "modern": ("pack", MODERN),
    "modern-mask15": ("pack", MODERN | {"mask_prob": 0.15}),
    "modern-split": ("split", MODERN),
    "modern-learned-pos": ("pack", MODERN | {"positions": "learned"}),
    "modern-gelu": ("pack", MODERN | {"mlp": "gelu", "ffn": 384}),
    "modern-linear-decay": ("pack", MODERN | {"stable": 0.0, "decay": "linear"}),
}
ABLATIONS = [v for v in VARIANTS if v.startswith("modern-")]


# --- the HuggingFace side --------------------------------------------------------------------------

def read_documents(corpus: Path) -> list[list[str]]:
    """The corpus's documents as lists of paragraphs, read by the same rules as `bertprep tokenize`
    (WikiText headings start documents and its escapes are undone), so both sides see the same text."""
    from bertprep.preprocess.corpus import DOC_BREAK, ReadStats, read_corpus

    docs: list[list[str]] = []
    for para in read_corpus(corpus, "auto", ReadStats()):
        if para is DOC_BREAK:
            if not docs or docs[-1]:
                docs.append([])
        elif para:
            docs[-1].append(para)
    return [d for d in docs if d]


def hf_data(a, tok):
    """(train blocks, validation batches): run_mlm.py's tokenize + group_texts on the training
    documents' lines; the held-out blocks masked `--eval-masks` times with fixed seeds."""
    from itertools import chain

    import datasets
    import torch
    from transformers import DataCollatorForLanguageModeling

    from bertprep.preprocess.splits import assign_documents

    datasets.disable_progress_bars()
    docs = read_documents(a.corpus)
    if len(docs) != a.documents:
        raise SystemExit(f"bench: read {len(docs)} documents, the token store has {a.documents}")
    split = assign_documents(len(docs), SPLIT, 0)

    def group_texts(examples):  # run_mlm.py's: concatenate everything, cut into blocks, drop the rest
        joined = {k: list(chain(*examples[k])) for k in examples}
        total = len(joined["input_ids"]) // a.max_len * a.max_len
        return {k: [v[i:i + a.max_len] for i in range(0, total, a.max_len)] for k, v in joined.items()}

    def blocks(doc_ids):
        ds = datasets.Dataset.from_dict({"text": [p for i in doc_ids for p in docs[i]]})
        ds = ds.map(lambda b: tok(b["text"], return_special_tokens_mask=True), batched=True, remove_columns=["text"])
        return ds.map(group_texts, batched=True)

    train, held_out = blocks(split["train"]), blocks(split["val"])
    collator = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=0.15, return_tensors="pt")
    rows = [dict(zip(held_out.column_names, v)) for v in zip(*(held_out[c] for c in held_out.column_names))]
    val = []
    for k in range(a.eval_masks):
        torch.manual_seed(10_000 + k)
        for s in range(0, len(rows), 64):
            b = collator(rows[s:s + 64])
            val.append({key: v for key, v in b.items() if key != "special_tokens_mask"})
    return train, collator, val


def hf_model(a):
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(a.seed)
    cfg = BertConfig(vocab_size=a.vocab_size, hidden_size=SHAPE["hidden"], num_hidden_layers=SHAPE["layers"],
                     num_attention_heads=SHAPE["heads"], intermediate_size=SHAPE["ffn"],
                     max_position_embeddings=512, attn_implementation="sdpa")
    return BertForMaskedLM(cfg).train()


def hf_step_fn(model):
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, eps=1e-8, fused=True)

    def step(batch):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return opt, step


def hf_evaluate(model, val) -> dict:
    """Loss and accuracy over the labelled positions; logits only there (the same numbers as the
    full (B, T, V) logits, faster; evaluation time is not training time anyway)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    loss_sum = correct = count = 0.0
    with torch.no_grad():
        for b in val:
            h = model.bert(**{k: v for k, v in b.items() if k != "labels"}).last_hidden_state
            at = b["labels"] != -100
            logits = model.cls(h[at])
            target = b["labels"][at]
            loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
            correct += float((logits.argmax(-1) == target).sum())
            count += int(at.sum())
    model.train()
    return {"loss": loss_sum / count, "acc": correct / count, "tokens": int(count)}


def side_hf(a) -> None:
    import torch
    from torch.utils.data import DataLoader
    from transformers import PreTrainedTokenizerFast

    from bertprep.trainer.loop import TrainClock
    from bertprep.trainer.optim import budget_lr_factor

    torch.set_num_threads(a.threads)
    t0, c0 = time.perf_counter(), cpu_seconds()
    tok = PreTrainedTokenizerFast(tokenizer_file=str(a.tokens / "tokenizer.json"), unk_token="[UNK]",
                                  sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
                                  model_max_length=1 << 30)
    train, collator, val = hf_data(a, tok)
    prep = {"prep_s": time.perf_counter() - t0, "prep_cpu_s": cpu_seconds() - c0, "train_examples": len(train)}

    model = hf_model(a)
    opt, step_fn = hf_step_fn(model)
    budget, every = a.minutes * 60, a.eval_every * 60
    clock, curve, step, next_eval = TrainClock(), [], 0, every
    # The same rule as bertprep's --schedule time: linear warm-up over --hf-warmup steps, then a
    # linear decay that reaches 0 as the budget runs out (a step horizon guessed from a measured
    # rate would end the decay early or late, whichever side it was guessed for).
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: budget_lr_factor(
        s, clock.read()[0] / budget, warmup=a.hf_warmup, decay="linear", min_ratio=0.0))
    g = torch.Generator().manual_seed(a.seed)
    loader = DataLoader(train, batch_size=a.batch, shuffle=True, drop_last=True, collate_fn=collator, generator=g)
    print(f"[hf] {len(train):,} training blocks, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"lr {1e-3:g} decaying linearly to 0 over {a.minutes:g} training minutes", file=sys.stderr, flush=True)
    clock.start()
    done = False
    while not done:
        for batch in loader:
            loss = step_fn(batch)
            sched.step()
            step += 1
            now = clock.read()[0]
            done = now >= budget
            if now >= next_eval or done:
                with clock.paused():
                    next_eval = (now // every + 1) * every
                    r = hf_evaluate(model, val)
                    wall, cpu = clock.read()
                    curve.append({"step": step, "train_s": wall, "train_cpu_s": cpu, "acc": r["acc"],
                                  "loss": r["loss"], "tokens": r["tokens"], "train_loss": loss.item()})
                    print(f"[hf] {wall / 60:5.2f} min step {step:>6} | val acc {r['acc']:.4f} | "
                          f"loss {r['loss']:.3f}", file=sys.stderr, flush=True)
            if done:
                break
    report_result(prep | {"curve": curve, "steps": step})


# --- bertprep's side ---------------------------------------------------------------------------------

def bertprep_config(a, out: Path, variant: str = "bertprep", **kw):
    from bertprep.trainer.config import train_config

    kind, settings = VARIANTS[variant]
    folder = a.shards if kind == "split" else a.shards.with_name(a.shards.name + "-pack")
    shards = tuple(map(str, sorted(folder.glob("train_*.arrow"))))
    val = tuple(map(str, sorted(a.shards.glob("val_*.arrow"))))  # every side: the split shards' val masks
    base = dict(shards=shards, val_shards=val, out=str(out), model="tiny", **SHAPE, batch_size=a.batch, lr=a.lr,
                warmup_steps=a.warmup, dropout=a.dropout, decay=a.decay, beta2=a.beta2, precision=a.precision,
                seed=a.seed, val_interval=0,
                val_examples=0, log_interval=100, ckpt_interval=10**9, tensorboard=False, quiet=False)
    return train_config(**(base | settings | kw))


def side_bertprep(a, variant: str = "bertprep") -> None:
    import torch

    from bertprep.shards.reader import open_shards
    from bertprep.trainer.loop import train

    torch.set_num_threads(a.threads)
    val = open_shards(sorted(a.shards.glob("val_*.arrow")))
    copies = val[0].meta["dupe_factor"]  # evaluate on as many masked copies as the HF side
    per_copy = sum(s.num_examples for s in val) // copies
    val_batches = max(1, per_copy * min(copies, a.eval_masks) // a.batch)
    print(f"[{variant}] --schedule time over {a.minutes:g} minutes; validation {val_batches} batches",
          file=sys.stderr, flush=True)
    run = a.work / "run"
    summary = train(bertprep_config(a, run, variant, max_steps=10**9, max_time=a.minutes, schedule="time",
                                    val_minutes=a.eval_every, val_batches=val_batches, log_interval=500))
    curve = [{"step": r["step"], "train_s": r["train_s"], "train_cpu_s": r["train_cpu_s"], "acc": r["val_mlm_acc"],
              "loss": r["val_loss"], "tokens": r["val_tokens"]}
             for r in map(json.loads, open(run / "metrics.jsonl")) if "val_mlm_acc" in r]
    report_result({"curve": curve, "steps": summary["step"], "stopped": summary["stopped"]})


# --- where the step rate comes from ------------------------------------------------------------------

def step_costs(a) -> None:
    """Median wall and CPU seconds per training step: the HF model, ours computing what HF computes
    (logits at all 128 positions), ours as the trainer runs it, and the precisions and compilation
    that were tried, on one synthetic batch (32 x 128, 15% of positions predicted, the vocab size),
    timed alternately so machine load hits all alike."""
    import contextlib

    import torch
    import torch.nn.functional as F
    import transformers

    from bench.train import _adamw, make_batch
    from bertprep.trainer.hf import hf_config
    from bertprep.trainer.model import Bert, ModelConfig, pretraining_loss

    torch.set_num_threads(a.threads)
    b = make_batch(a.batch, a.max_len, round(a.max_len * 0.15), a.vocab_size, torch.device("cpu"))
    cfg = ModelConfig(vocab_size=a.vocab_size, max_len=512, dropout=0.1, **SHAPE)

    def autocast(bf16):
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def ours(*, dense=False, bf16=False, compiled=False):
        model = Bert(cfg).train()
        opt = _adamw(model, None)
        fwd = torch.compile(model) if compiled else model

        def step():
            with autocast(bf16):
                if dense:  # logits at every position, the loss at the labelled ones: HF's work
                    mlm, _ = fwd(b["input_ids"], b["token_type_ids"], b["length"])
                    loss = F.cross_entropy(mlm.float().flatten(0, 1), b["labels"].flatten())
                else:
                    mlm, nsp = fwd(b["input_ids"], b["token_type_ids"], b["length"], b["masked_positions"])
                    loss, _ = pretraining_loss(mlm, nsp, b, accuracy=False)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    def theirs(bf16):
        hf = transformers.BertForMaskedLM(transformers.BertConfig(**hf_config(cfg), attn_implementation="sdpa"))
        _, hf_step = hf_step_fn(hf.train())
        inputs = {k: b[k] for k in ("input_ids", "token_type_ids", "attention_mask", "labels")}

        def step():
            with autocast(bf16):
                hf_step(inputs)
        return step

    sides = {"HF BertForMaskedLM, fp32 (the HF path)": theirs(False),
             "ours, logits at all 128 positions (HF's work)": ours(dense=True),
             "ours as trained: logits at the masked only, last layer pruned": ours(),
             "ours as trained, bf16 autocast": ours(bf16=True),
             "ours as trained, torch.compile": ours(compiled=True),
             "HF BertForMaskedLM, bf16 autocast": theirs(True)}
    for fn in sides.values():  # compilation and first-call costs out of the timings
        fn()
    wall, cpu = {k: [] for k in sides}, {k: [] for k in sides}
    for i in range(3 + a.calib_steps):
        for name, fn in sides.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            if i >= 3:
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
    base = statistics.median(wall[next(iter(sides))])
    base_cpu = statistics.median(cpu[next(iter(sides))])
    rows = [[n, f"{statistics.median(wall[n]):.3f}", f"{statistics.median(cpu[n]):.3f}",
             f"{base / statistics.median(wall[n]):.2f}x", f"{base_cpu / statistics.median(cpu[n]):.2f}x"] for n in sides]
    print(f"step cost, batch {a.batch} x {a.max_len}, vocab {a.vocab_size:,}, {a.threads} threads, "
          f"median of {a.calib_steps} steps:")
    print(table(rows, ["step", "wall s", "CPU s", "vs HF (wall)", "vs HF (CPU)"]))


# --- the comparison ------------------------------------------------------------------------------

def minutes_to_reach(curve: list[dict], target: float, clock: str = "train_s") -> float | None:
    """Training minutes (`clock` "train_cpu_s": CPU minutes) at which a curve first reaches
    `target`, interpolated linearly between evaluations (None: never)."""
    prev = None
    for p in curve:
        if p["acc"] >= target:
            if prev is None:
                return p[clock] / 60
            f = (target - prev["acc"]) / max(p["acc"] - prev["acc"], 1e-12)
            return (prev[clock] + f * (p[clock] - prev[clock])) / 60
        prev = p
    return None


def acc_at(curve: list[dict], minutes: float) -> float | None:
    """Accuracy of the last evaluation at or before `minutes` of training."""
    seen = [p["acc"] for p in curve if p["train_s"] <= minutes * 60 + 1.0]
    return seen[-1] if seen else None


def ascii_plot(curves: dict[str, list[dict]], minutes: float, width: int = 64, height: int = 16) -> str:
    """Accuracy against training minutes, one letter per side, for a README code block."""
    top = max(p["acc"] for c in curves.values() for p in c)
    top = math.ceil(top * 20 + 0.5) / 20
    grid = [[" "] * (width + 1) for _ in range(height + 1)]
    for name, curve in curves.items():
        mark = name[0].upper()
        for p in curve:
            x = min(width, round(p["train_s"] / 60 / minutes * width))
            y = height - round(p["acc"] / top * height)
            grid[y][x] = mark if grid[y][x] in (" ", mark) else "*"
    lines = []
    for i, row in enumerate(grid):
        label = f"{top * (height - i) / height:5.2f}" if i % 4 == 0 else "     "
        lines.append(f"{label} |{''.join(row)}")
    lines.append("      +" + "-" * (width + 1))
    ticks = [" "] * (width + 8)
    for m in range(0, int(minutes) + 1, max(1, int(minutes) // 5)):
        s = str(m)
        x = 7 + round(m / minutes * width)
        ticks[x:x + len(s)] = s
    lines.append("".join(ticks).rstrip() + "  training minutes")
    lines.append("      " + ", ".join(f"{n[0].upper()} = {n}" for n in curves) + ", * = both")
    return "\n".join(lines)


def save_plot(curves: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, curve in curves.items():
        ax.plot([p["train_s"] / 60 for p in curve], [p["acc"] for p in curve], marker="o", ms=3, label=name)
    ax.set_xlabel("training minutes (evaluation excluded)")
    ax.set_ylabel("held-out MLM accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def prepare(a, work: Path) -> dict:
    """bertprep tokenize + shard, timed: the bertprep side's data preparation."""
    bertprep = [sys.executable, "-c", "from bertprep.cli import main; main()"]
    t0 = time.perf_counter()
    kids0 = os.times()
    subprocess.run([*bertprep, "tokenize", str(a.corpus), "--vocab-size", str(a.vocab_size), "--out",
                    str(work / "tokens"), "--overwrite"], check=True, cwd=REPO)
    subprocess.run([*bertprep, "shard", "--tokens", str(work / "tokens"), "--out", str(work / "shards"),
                    "--strategy", "split", "--max-len", str(a.max_len), "--split", ",".join(map(str, SPLIT)),
                    "--dupe-factor", str(a.dupe_factor), "--seed", str(a.seed), "--overwrite"], check=True, cwd=REPO)
    if any(VARIANTS.get(s, ("split",))[0] == "pack" for s in a.sides.split(",")):  # masked afresh each epoch
        subprocess.run([*bertprep, "shard", "--tokens", str(work / "tokens"), "--out", str(work / "shards-pack"),
                        "--strategy", "pack", "--max-len", str(a.max_len), "--split", ",".join(map(str, SPLIT)),
                        "--seed", str(a.seed), "--overwrite"], check=True, cwd=REPO)
    kids = os.times()
    manifest = json.loads((work / "tokens" / "manifest.json").read_text())
    return {"prep_s": time.perf_counter() - t0,
            "prep_cpu_s": kids.children_user + kids.children_system - kids0.children_user - kids0.children_system,
            "documents": manifest["counts"]["documents"], "tokens": manifest["counts"]["tokens"]}


def side_args(a, work: Path, side: str, documents: int) -> list[str]:
    return ["--side", side, "--work", str(work / side), "--corpus", str(a.corpus), "--tokens", str(work / "tokens"), "--shards",
            str(work / "shards"), "--documents", str(documents), "--minutes", str(a.minutes), "--eval-every",
            str(a.eval_every), "--threads", str(a.threads), "--vocab-size", str(a.vocab_size), "--max-len",
            str(a.max_len), "--batch", str(a.batch), "--eval-masks", str(a.eval_masks), "--seed", str(a.seed),
            "--lr", str(a.lr), "--warmup", str(a.warmup), "--dropout", str(a.dropout), "--decay", a.decay,
            "--beta2", str(a.beta2), "--precision", a.precision,
            "--hf-warmup", str(a.hf_warmup)]


def report(a, prep: dict, results: dict) -> dict:
    curves = {name: r["curve"] for name, r in results.items()}
    names = list(curves)
    print(f"\nheld-out MLM accuracy against training minutes ({a.minutes:g} min budget per side, "
          f"evaluations every {a.eval_every:g} min):")
    marks = sorted({round(p["train_s"] / 60 / a.eval_every) * a.eval_every for c in curves.values() for p in c})
    rows = [[f"{m:g}"] + [f"{v:.4f}" if (v := acc_at(curves[n], m)) is not None else "-" for n in names]
            for m in marks]
    print(table(rows, ["minutes"] + [f"{n} acc" for n in names]))
    out = {"minutes": a.minutes, "prep": prep, "sides": results, "reach": {}}
    anchors = [m for m in ("hf", "bertprep") if m in names]  # the reach columns: minutes to their finals
    rows = []
    for n in names:
        r, last = results[n], curves[n][-1]
        other = [m for m in names if m != n]
        reach = {m: minutes_to_reach(curves[n], curves[m][-1]["acc"]) for m in other}
        out["reach"][n] = reach
        cpu_per_min = last["train_cpu_s"] / max(last["train_s"], 1e-9)
        rows.append([n, f"{last['acc']:.4f}", f"{math.exp(last['loss']):.0f}", f"{r['steps']:,}",
                     f"{r['steps'] / last['train_s']:.2f}", f"{cpu_per_min:.2f}",
                     f"{r['prep_s']:.1f}"]
                    + [("-" if m == n else f"{v:.2f}" if (v := reach.get(m)) is not None else "not reached")
                       for m in anchors])
    print()
    print(table(rows, ["side", "final acc", "final ppl", "steps", "steps/s", "CPU s per s", "data prep s"]
                + [f"min to {m}'s final" for m in anchors]))
    if "hf" in curves and "bertprep" in curves:
        hf20, bp = curves["hf"][-1]["acc"], curves["bertprep"]
        t, cpu = minutes_to_reach(bp, hf20), minutes_to_reach(bp, hf20, "train_cpu_s")
        hf_cpu = curves["hf"][-1]["train_cpu_s"] / 60
        when = (f"in {t:.2f} minutes ({cpu:.1f} CPU minutes against HF's {hf_cpu:.1f})" if t is not None
                else "not within its budget")
        print(f"\nbertprep reaches HF's {a.minutes:g}-minute accuracy ({hf20:.4f}) {when} "
              f"(target: <= {a.minutes / 2:g}); bertprep's own final: {bp[-1]['acc']:.4f}")
    if "bertprep" in curves and "modern" in curves:
        bert, modern = curves["bertprep"], curves["modern"]
        t = minutes_to_reach(modern, bert[-1]["acc"])
        print(f"\nmodern recipe: final {modern[-1]['acc']:.4f} = {modern[-1]['acc'] / bert[-1]['acc']:.2f}x the BERT "
              f"recipe's {bert[-1]['acc']:.4f} (target >= 1.3x); reaches the BERT recipe's {a.minutes:g}-minute "
              f"accuracy {'in %.2f minutes' % t if t is not None else 'not within its budget'} "
              f"(target <= {a.minutes / 2:g})")
        ablated = [n for n in names if n in ABLATIONS]
        if ablated:
            rows = [[n, f"{curves[n][-1]['acc']:.4f}", f"{curves[n][-1]['acc'] - modern[-1]['acc']:+.4f}"]
                    for n in ablated]
            print("\nablation: the modern side with one element turned back to BERT's (what it bought = -delta)")
            print(table(rows, ["side", "final acc", "vs modern"]))
            out["ablation"] = {n: curves[n][-1]["acc"] - modern[-1]["acc"] for n in ablated}
    print()
    print(ascii_plot(curves, a.minutes))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("corpus", type=Path, nargs="?")
    p.add_argument("--minutes", type=float, default=20.0, help="training budget per side (training time only)")
    p.add_argument("--eval-every", type=float, default=None, help="minutes between evaluations (default: minutes/20)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval-masks", type=int, default=10, help="differently masked copies of the held-out text")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sides", default="hf,bertprep,modern", help=f"which sides to run, in this order: hf and any of "
                   f"{', '.join(VARIANTS)}")
    p.add_argument("--ablation", action="store_true", help="also run the modern side with each element turned back "
                   f"to BERT's ({', '.join(ABLATIONS)})")
    g = p.add_argument_group("bertprep's recipe")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--warmup", type=int, default=100)
    g.add_argument("--dropout", type=float, default=0.1)
    g.add_argument("--decay", default="linear", choices=["linear", "cosine"])
    g.add_argument("--beta2", type=float, default=0.999)
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast (AMX where the CPU has it)")
    g.add_argument("--dupe-factor", type=int, default=20, help="differently masked copies in the shards")
    p.add_argument("--hf-warmup", type=int, default=100)
    p.add_argument("--calib-steps", type=int, default=30, help="with --step-costs: steps timed per variant")
    p.add_argument("--work", type=Path, help="keep the token store, shards and runs here (default: a temp dir)")
    p.add_argument("--json", type=Path, help="write the curves and figures here")
    p.add_argument("--plot", type=Path, help="save a plot (PNG/SVG, needs matplotlib)")
    p.add_argument("--step-costs", action="store_true", help="only time one training step of each side and "
                   "of ours with each speed choice added in turn (no CORPUS needed)")
    p.add_argument("--side", choices=["hf", *VARIANTS], help=argparse.SUPPRESS)
    for hidden in ("--tokens", "--shards"):
        p.add_argument(hidden, type=Path, help=argparse.SUPPRESS)
    p.add_argument("--documents", type=int, help=argparse.SUPPRESS)
    p.add_argument("--corpus", dest="corpus_opt", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.corpus = a.corpus or a.corpus_opt
    if a.step_costs:
        return step_costs(a)
    if a.corpus is None:
        p.error("give a CORPUS")
    a.corpus = a.corpus.resolve()  # the sides run in the repository root
    if a.eval_every is None:
        a.eval_every = a.minutes / 20
    if a.side == "hf":
        return side_hf(a)
    if a.side in VARIANTS:
        return side_bertprep(a, a.side)
    if a.ablation:
        a.sides = ",".join(dict.fromkeys(a.sides.split(",") + ABLATIONS))

    print(machine_line())
    print(versions("torch", "transformers", "datasets", "tokenizers"))
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        work = (a.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        prep = prepare(a, work)
        print(f"corpus {a.corpus} ({a.corpus.stat().st_size / 1e6:.1f} MB): {prep['documents']:,} documents, "
              f"{prep['tokens']:,} tokens; vocab {a.vocab_size:,}; bertprep tokenize + shard "
              f"(--dupe-factor {a.dupe_factor}) {prep['prep_s']:.1f} s; recipe lr {a.lr:g}, warm-up {a.warmup}, "
              f"dropout {a.dropout:g}, {a.decay} decay, beta2 {a.beta2:g}, {a.precision}", flush=True)
        results = {}
        for side in a.sides.split(","):
            load0 = os.getloadavg()[0]
            r = run_side("quality", side_args(a, work, side, prep["documents"]), env=OFFLINE)
            if side in VARIANTS:
                r["prep_s"], r["prep_cpu_s"] = prep["prep_s"], prep["prep_cpu_s"]
            r["load"] = [load0, os.getloadavg()[0]]
            print(f"{side}: {r['steps']:,} steps, load average {load0:.1f} at the start, {r['load'][1]:.1f} at the end",
                  flush=True)
            results[side] = r
        out = report(a, prep, results)
        out["machine"], out["corpus"] = machine_line(), str(a.corpus)
        if a.json:
            a.json.write_text(json.dumps(out, indent=1) + "\n")
        if a.plot:
            save_plot({n: r["curve"] for n, r in results.items()}, a.plot,
                      f"{a.corpus.name}: 2x128 BERT / 3x128 modern, batch 32x{a.max_len}, "
                      f"{a.threads} thread{'s' if a.threads != 1 else ''}, vocab {a.vocab_size:,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
