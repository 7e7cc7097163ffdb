"""`make demo`: the whole path on the corpus shipped in data/, printing every command it runs.

    python -m bertprep.demo [--out demo] [--steps N] [--model tiny]

tokenize (train an 8k WordPiece vocab) -> shard (128 tokens, seed 123) -> train a small BERT
(a few minutes on CPU; a larger model for longer where CUDA is present) -> evaluate the trained
model against the untrained one on the validation shards (MLM accuracy and perplexity) -> write
the run's HTML report (`bertprep report`) and print its path.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CORPUS = ROOT / "data" / "pydocs.wiki.tokens"


def run(cmd: list[str], display: list[str]) -> None:
    print("\n$ " + " ".join(shlex.quote(c) for c in display), flush=True)
    # unbuffered, so the steps' output stays in order when the demo's output goes to a file or pipe
    code = subprocess.call(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if code != 0:
        sys.exit(f"demo: step failed with exit code {code}")


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m bertprep.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo", help="directory for tokens/, shards/ and runs/ (default: demo)")
    p.add_argument("--steps", type=int, help="training steps (default: 1500 on CPU, 5000 on CUDA)")
    p.add_argument("--model", help="model preset (default: tiny on CPU, mini on CUDA)")
    p.add_argument("--batch-size", type=int, default=32)
    return p.parse_args(argv)


def main(argv=None) -> None:
    from bertprep.trainer.dist import pick_device

    args = parse(argv)
    cuda = pick_device("auto").type == "cuda"
    steps = args.steps or (5000 if cuda else 1500)
    model = args.model or ("mini" if cuda else "tiny")
    out = Path(args.out)
    tokens, shards, run_dir = out / "tokens", out / "shards", out / "runs" / model
    bertprep = [sys.executable, "-m", "bertprep.cli"]
    t0 = time.perf_counter()
    print(f"bertprep demo: {CORPUS.name} (Python 3.11 docs, PSF licence) -> {out}/ on {'CUDA' if cuda else 'CPU'}")

    run([*bertprep, "tokenize", str(CORPUS), "--out", str(tokens), "--vocab-size", "8000", "--overwrite"],
        ["bertprep", "tokenize", str(CORPUS.relative_to(ROOT)), "--out", str(tokens), "--vocab-size", "8000",
         "--overwrite"])
    shard_args = ["shard", "--tokens", str(tokens), "--out", str(shards), "--max-len", "128", "--seed", "123",
                  "--split", "0.9,0.05,0.05", "--overwrite"]
    run([*bertprep, *shard_args], ["bertprep", *shard_args])
    run([*bertprep, "inspect", *sorted(glob.glob(str(shards / "train_*.arrow")))[:1], "-n", "1"],
        ["bertprep", "inspect", str(shards / "train_pydocs_128_123_00000.arrow"), "-n", "1"])

    options = ["--model", model, "--max-steps", str(steps), "--batch-size", str(args.batch_size), "--lr", "1e-3",
               "--warmup-steps", str(steps // 10), "--val-interval", str(max(steps // 3, 1)),
               "--log-interval", str(max(steps // 12, 1)), "--ckpt-interval", str(steps), "--dropout", "0.0",
               "--out", str(run_dir)]
    train_files = sorted(glob.glob(str(shards / "train_*")))
    if run_dir.exists():  # the demo's own run directory: a re-run starts training afresh
        shutil.rmtree(run_dir)
    run([sys.executable, str(ROOT / "trainer" / "run.py"), "--shards", *train_files, *options],
        ["python", "trainer/run.py", "--shards", str(shards / "train_*"), *options])

    from bertprep.trainer.run import evaluate

    val = sorted(glob.glob(str(shards / "val_*")))
    print("\nevaluating on the validation shards ...", flush=True)
    before = evaluate(val, None, model=model, batch_size=64, max_batches=100, seed=0)
    after = evaluate(val, run_dir, batch_size=64, max_batches=100, examples=1)
    print(f"\n{'':12}{'val MLM accuracy':>18}{'val perplexity':>16}{'val loss':>10}")
    for name, r in (("untrained", before), (f"step {after['step']}", after)):
        print(f"{name:12}{100 * r['val_mlm_acc']:>17.1f}%{r['val_ppl']:>16.1f}{r['val_loss']:>10.3f}")
    for line in after.get("examples", []):
        print(line)

    report = run_dir / "report.html"
    if importlib.util.find_spec("matplotlib") is None:
        report = None
        print("\nreport skipped: it needs matplotlib (pip install -e '.[plot]'; `make install` does)")
    else:
        run([*bertprep, "report", str(run_dir), "-o", str(report)],
            ["bertprep", "report", str(run_dir), "-o", str(report)])
    print(f"\ndemo done in {time.perf_counter() - t0:.0f}s; run directory: {run_dir}/ (metrics.jsonl, checkpoints)")
    if report is not None:
        print(f"report: {report.resolve()}")


if __name__ == "__main__":
    main()
