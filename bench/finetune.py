"""What pretraining buys on a real labelled task: each pretraining run fine-tuned on it over several
seeds, next to the same architecture fine-tuned from random weights (issue 20).

    bench/get_fortunes.sh /tmp/fortunes                 # the four-topic task: 1,930 / 414 / 414 quotations
    python -m bench.quality /tmp/fortunes/pretrain.txt --sides modern --minutes 20 --work /tmp/qf/modern
    python -m bench.finetune /tmp/fortunes --run bert=RUN --run modern=/tmp/qf/modern/modern/run --seeds 1,2,3
    python -m bench.finetune DATA --run NAME=RUN [--epochs 4] [--lr 1e-4] [--pooling cls|mean] [--threads 2]
                             [--json f.json] [--work DIR]

DATA holds train.jsonl, val.jsonl and test.jsonl ("sentence", "label" 0..K-1). Each RUN is a bertprep
pretraining run directory (BERT or `--arch modern`) or checkpoint file. Each fine-tune is `bertprep
finetune` called as a library (the command it amounts to is printed first): once from RUN's weights
and once with `--from-scratch` (RUN's architecture and tokenizer, random weights), over the same
seeds, data order and settings. Per seed, the epoch with the best validation accuracy is tested.
The table: test accuracy, mean +- sample standard deviation over the seeds (ddof=1, as `bertprep
finetune --seeds` reports it), each seed's figure, and pretraining's gain in points (pretrained
mean less scratch mean).

Defaults are for small encoders (2-4 layers of 128-256) on CPU: lr 1e-4, batch 32, 4 epochs (the
compact BERTs' fine-tuning range in Turc et al. 2019, "Well-Read Students Learn Better"; the BERT
paper's 2e-5 is for 110M parameters), 128 tokens, dropout 0.1. Fine-tuned runs go to
DIR/NAME/pretrained and DIR/NAME/scratch (`--work`; default a temporary directory, removed at the end).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.common import cpu_seconds, machine_line, table, versions
from bertprep.finetune.config import POOLINGS

INITS = ("pretrained", "scratch")
SPLITS = ("train", "val", "test")


def named_run(text: str) -> tuple[str, Path]:
    name, sep, run = text.partition("=")
    if not sep or not name or not run or "/" in name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=RUN, a name without '/' and a pretraining run "
                                         "directory, e.g. bert=runs/tiny")
    return name, Path(run)


def seed_list(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated seeds, e.g. 1,2,3") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: seeds must be distinct and >= 0")
    return seeds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.finetune", description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="directory of train.jsonl, val.jsonl, test.jsonl (bench/get_fortunes.sh)")
    p.add_argument("--run", type=named_run, action="append", required=True, metavar="NAME=RUN",
                   help="a pretraining run directory or checkpoint, named for the table; repeat for several")
    p.add_argument("--seeds", type=seed_list, default=(1, 2, 3), help="comma-separated fine-tuning seeds (default 1,2,3)")
    p.add_argument("--epochs", type=int, default=4, help="passes over the training set (default 4)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=128, help="tokens per example, [CLS]/[SEP] included (default 128)")
    p.add_argument("--pooling", choices=POOLINGS, default="cls",
                   help="what the class head reads, as `bertprep finetune --pooling` (default cls)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument("--work", type=Path, help="keep the fine-tuned runs here as NAME/pretrained and NAME/scratch "
                   "(default: a temporary directory)")
    a = p.parse_args(argv)
    names = [name for name, _ in a.run]
    if len(set(names)) != len(names):
        p.error(f"--run: a name is given twice ({', '.join(names)}); give each run its own NAME")
    for flag, value in (("--epochs", a.epochs), ("--batch-size", a.batch_size), ("--threads", a.threads)):
        if value < 1:
            p.error(f"{flag} must be at least 1, got {value}")
    for _, run in a.run:  # before the first fine-tune, not after the runs named before it
        if not run.exists():
            p.error(f"{run}: no such pretraining run directory or checkpoint; give --run NAME=RUN with RUN a "
                    "trainer/run.py --out directory")
    missing = [str(a.data / f"{s}.jsonl") for s in SPLITS if not (a.data / f"{s}.jsonl").is_file()]
    if missing:
        p.error(f"{', '.join(missing)}: not found; build the task with bench/get_fortunes.sh {a.data}")
    return a


def command_line(cfg) -> str:
    """The `bertprep finetune` command a config amounts to: the flags that differ from the defaults."""
    from bertprep.shards.options import flags

    words = ["bertprep", "finetune"]
    for x in flags(type(cfg)):
        value = getattr(cfg, x.path[0])
        if value == x.default:
            continue
        if x.type is bool:
            words.append(x.name if value else x.meta["negative"] or f"--no-{x.name[2:]}")
        else:
            words += [x.name, x.meta["sep"].join(map(str, value)) if x.many else str(value)]
    return " ".join(words)


def accuracy_spread(per_seed: list[dict]) -> dict:
    """Test accuracy over the seeds' records: values, mean and sample std, as `bertprep finetune`
    prints them (finetune/checks.py's seed_summary; also for one seed, where finetune() keeps none)."""
    from bertprep.finetune.checks import seed_summary

    return seed_summary(per_seed, "val_acc")[1]["test_acc"]


def fine_tune(a: argparse.Namespace, run: Path, out: Path, scratch: bool) -> dict:
    """One `bertprep finetune` over all seeds; its per-seed records, test accuracy spread and times."""
    from bertprep.finetune.tune import FinetuneConfig, finetune

    cfg = FinetuneConfig(checkpoint=str(run), train=str(a.data / "train.jsonl"), val=str(a.data / "val.jsonl"),
                         test=str(a.data / "test.jsonl"), out=str(out), epochs=a.epochs, lr=a.lr,
                         batch_size=a.batch_size, max_len=a.max_len, pooling=a.pooling, seeds=a.seeds,
                         from_scratch=scratch)
    print(f"\n$ {command_line(cfg)}", flush=True)
    t0, c0 = time.perf_counter(), cpu_seconds()
    r = finetune(cfg, echo=lambda line: print(line, flush=True), warn=lambda line: print(line, file=sys.stderr))
    return {"seeds": r["seeds"], "test_acc": accuracy_spread(r["seeds"]),
            "wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0, "out": str(out)}


def report(results: dict, seeds: tuple[int, ...]) -> tuple[str, dict]:
    """The table (percent; gain in points on the pretrained row) and each run's gain."""
    rows, gains = [], {}
    for name, r in results.items():
        gains[name] = 100 * (r["pretrained"]["test_acc"]["mean"] - r["scratch"]["test_acc"]["mean"])
        for init in INITS:
            acc = r[init]["test_acc"]
            rows.append([name, init, f"{100 * acc['mean']:.1f} ± {100 * acc['std']:.1f}",
                         " / ".join(f"{100 * v:.1f}" for v in acc["values"]),
                         f"{gains[name]:+.1f}" if init == "pretrained" else "-",
                         f"{r[init]['wall_s']:.0f} s"])
    header = ["run", "init", "test acc % (mean ± std)", f"per seed ({','.join(map(str, seeds))})",
              "gain (points)", "time"]
    return table(rows, header), gains


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    import torch

    from bertprep.shards.errors import BertprepError

    torch.set_num_threads(a.threads)
    sizes = {s: sum(1 for _ in open(a.data / f"{s}.jsonl", encoding="utf-8")) for s in SPLITS}
    print(machine_line())
    print(versions("torch", "tokenizers"))
    print(f"task {a.data}: train {sizes['train']:,}, val {sizes['val']:,}, test {sizes['test']:,} rows; "
          f"runs {', '.join(f'{n}={r}' for n, r in a.run)}; seeds {','.join(map(str, a.seeds))}; {a.epochs} epochs, "
          f"lr {a.lr:g}, batch {a.batch_size}, max-len {a.max_len}, pooling {a.pooling}, {a.threads} threads", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        work = (a.work or Path(tmp)).resolve()
        try:
            for name, run in a.run:
                results[name] = {"run": str(run), **{init: fine_tune(a, run, work / name / init, init == "scratch")
                                                     for init in INITS}}
        except BertprepError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    text, gains = report(results, a.seeds)
    print("\n" + text)
    if a.json:
        out = {"machine": machine_line(), "data": str(a.data), "sizes": sizes,
               "settings": {"seeds": list(a.seeds), "epochs": a.epochs, "lr": a.lr, "batch_size": a.batch_size,
                            "max_len": a.max_len, "pooling": a.pooling, "threads": a.threads},
               "runs": {n: dict(r, gain_points=gains[n]) for n, r in results.items()}}
        a.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
