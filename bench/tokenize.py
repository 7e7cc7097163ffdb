"""Benchmark `bertprep tokenize` against raw HuggingFace `tokenizers` on the same corpus and cores.

    python -m bench.tokenize CORPUS [--workers N] [--vocab-size V] [--tokenizer tokenizer.json]
                             [--scale 4] [--repeat 1] [--profile]

bertprep's side is the whole `run_tokenize`: reading, sentence splitting, encoding and writing the
token store. The raw side reads the corpus's non-blank lines into memory and calls
`Tokenizer.encode_batch` (and, for reference, `encode_batch_fast`) on 10,000 lines at a time with
add_special_tokens=False. Both use one fixed tokenizer.json (trained first, untimed, unless
--tokenizer names one), and each side runs in its own process so peak RSS is its own. With
--scale K, bertprep also runs on K concatenated copies of the corpus to show that its memory does
not grow with the corpus. Module name note: run it with `-m`; as a script, this file would shadow
the stdlib `tokenize` module.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.common import best_of, cpu_seconds, machine_line, mb, report_result, run_side, scaled_text, table, versions

RAW_BATCH = 10_000


def side_bertprep(args) -> None:
    from bertprep.preprocess.tokenizing import TokenizeConfig, run_tokenize
    from bertprep.preprocess.vocab import VocabConfig

    cfg = TokenizeConfig(inputs=(args.corpus,), out=args.out, workers=args.workers, overwrite=True, progress=False,
                         backend=args.backend, vocab=VocabConfig(tokenizer=args.tokenizer))
    t0, c0 = time.perf_counter(), cpu_seconds()
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        result = prof.runcall(run_tokenize, cfg)
        print("cProfile of run_tokenize (main thread only; the reader thread's sentence splitting is not seen):")
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    else:
        result = run_tokenize(cfg)
    seconds = time.perf_counter() - t0
    m = result["manifest"]
    report_result({"tokens": m["counts"]["tokens"], "seconds": seconds, "cpu_s": cpu_seconds() - c0,
                   "ids_sha256": m["files"]["ids.bin"], "backend": result["backend"],
                   "fallback_reason": result["fallback_reason"]})


def side_raw(args) -> None:
    if args.workers:
        os.environ["RAYON_RS_NUM_THREADS"] = str(args.workers)
    from tokenizers import Tokenizer

    import hashlib

    import numpy as np

    from bertprep.shards.schema import id_dtype

    tok = Tokenizer.from_file(str(args.tokenizer))
    encode = tok.encode_batch_fast if args.side == "raw-fast" else tok.encode_batch
    dtype = id_dtype(tok.get_vocab_size(with_added_tokens=True)).newbyteorder("<")
    digest, hashing = hashlib.sha256(), 0.0
    t0, c0 = time.perf_counter(), cpu_seconds()
    with open(args.corpus, encoding="utf-8", errors="replace") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    tokens = 0
    for i in range(0, len(lines), RAW_BATCH):
        encodings = encode(lines[i:i + RAW_BATCH], add_special_tokens=False)
        tokens += sum(len(e.ids) for e in encodings)
        # Not part of the raw path: the ids hashed as bertprep's ids.bin stores them, to compare.
        h0 = time.perf_counter()
        digest.update(np.fromiter((t for e in encodings for t in e.ids), dtype, count=-1).tobytes())
        hashing += time.perf_counter() - h0
    report_result({"tokens": tokens, "seconds": time.perf_counter() - t0 - hashing,
                   "cpu_s": cpu_seconds() - c0 - hashing, "ids_sha256": digest.hexdigest()})


def measure(side: str, corpus: Path, tokenizer: Path, workers: int, tmp: Path, profile: bool = False) -> dict:
    """One run of `side`: raw, raw-fast, or bertprep-<backend> (its store goes to tmp/<side>)."""
    args = ["--side", side.split("-")[0] if side.startswith("bertprep") else side, str(corpus), "--tokenizer",
            str(tokenizer), "--workers", str(workers), "--out", str(tmp / side)]
    if side.startswith("bertprep-"):
        args += ["--backend", side.split("-", 1)[1]]
    r = run_side("tokenize", args + (["--profile"] if profile else []))
    return dict(r, tokens_per_s=r["tokens"] / r["seconds"])


def train_vocab(corpus: Path, vocab_size: int, workers: int, out: Path) -> Path:
    """A fixed tokenizer for both sides, so vocab training stays out of the timing."""
    from bertprep.preprocess.tokenizing import TokenizeConfig, run_tokenize
    from bertprep.preprocess.vocab import VocabConfig

    t0 = time.perf_counter()
    run_tokenize(TokenizeConfig(inputs=(corpus,), out=out, workers=workers, overwrite=True, progress=False,
                                vocab=VocabConfig(vocab_size=vocab_size)))
    print(f"trained a {vocab_size:,} WordPiece vocab on the corpus in {time.perf_counter() - t0:.1f}s (not timed)")
    return out / "tokenizer.json"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.tokenize", description=__doc__.split("\n\n")[0])
    p.add_argument("corpus", type=Path, help="plain text (a paragraph per line) or WikiText file")
    p.add_argument("--workers", type=int, default=0, help="encoder threads for both sides; 0 = all cores")
    p.add_argument("--vocab-size", type=int, default=30522, help="size of the vocab trained when no --tokenizer")
    p.add_argument("--tokenizer", type=Path, help="fixed tokenizer.json for both sides (skips training)")
    p.add_argument("--scale", type=int, default=4, help="also run bertprep on K copies of the corpus (0 = skip)")
    p.add_argument("--repeat", type=int, default=1, help="runs per side, alternating; the fastest is reported")
    p.add_argument("--profile", action="store_true", help="print a cProfile of bertprep's run_tokenize")
    p.add_argument("--backends", default="native,tokenizers", help="bertprep backends to run, comma-separated")
    p.add_argument("--side", choices=["bertprep", "raw", "raw-fast"], help=argparse.SUPPRESS)
    p.add_argument("--backend", default="native", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side == "bertprep":
        return side_bertprep(args)
    if args.side:
        return side_raw(args)

    size = args.corpus.stat().st_size
    print(machine_line())
    print(versions("tokenizers", "numpy"))
    print(f"corpus: {args.corpus} ({mb(size)}); workers: {args.workers or os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp_name:
        tmp = Path(tmp_name)
        tokenizer = args.tokenizer or train_vocab(args.corpus, args.vocab_size, args.workers, tmp / "vocab")
        backends = [b for b in args.backends.split(",") if b]
        runs: dict[str, list[dict]] = {**{f"bertprep-{b}": [] for b in backends}, "raw": [], "raw-fast": []}
        for i in range(args.repeat):
            for side in runs:
                runs[side].append(measure(side, args.corpus, tokenizer, args.workers, tmp,
                                          profile=args.profile and side.startswith("bertprep") and i == 0))
        best = {side: best_of(rs, "tokens_per_s") for side, rs in runs.items()}
        base = best["raw"]["tokens_per_s"]
        rows = []
        names = {"raw": "tokenizers encode_batch", "raw-fast": "tokenizers encode_batch_fast",
                 **{f"bertprep-{b}": f"bertprep tokenize --backend {b}" for b in backends}}
        for side, r in best.items():
            rows.append([names[side], f"{r['tokens']:,}", f"{r['seconds']:.2f}", f"{r['cpu_s']:.2f}",
                         f"{r['tokens_per_s'] / 1e6:.3f}", mb(r["peak_rss"]), f"{r['tokens_per_s'] / base:.2f}x"])
        print()
        print(table(rows, ["side", "tokens", "seconds", "CPU s", "M tokens/s", "peak RSS", "vs encode_batch"]))
        print()
        for b in backends:
            r = best[f"bertprep-{b}"]
            diff = r["tokens"] - best["raw"]["tokens"]
            used = r["backend"] + (f" (fell back: {r['fallback_reason']})" if r["fallback_reason"] else "")
            cpu = (r["tokens"] / r["cpu_s"]) / (best["raw"]["tokens"] / best["raw"]["cpu_s"])
            target = "target >= 3x, stretch 5x" if b == "native" else "the reference: about 1x"
            print(f"bertprep --backend {b} (ran {used}): {r['tokens_per_s'] / base:.2f}x encode_batch, {cpu:.2f}x in "
                  f"CPU time ({target}); "
                  f"tokens {diff:+,} vs raw ({100 * diff / best['raw']['tokens']:+.3f}%: bertprep ends sentences "
                  "where the raw side ends only lines)")
        for b in backends:
            same = best[f"bertprep-{b}"]["ids_sha256"] == best["raw"]["ids_sha256"]
            print(f"bertprep --backend {b} ids.bin {'is identical to' if same else 'DIFFERS from'} encode_batch's ids "
                  "(concatenated, same dtype)")
        first = best[f"bertprep-{backends[0]}"] if backends else None

        if args.scale > 1 and first:
            big = scaled_text(args.corpus, tmp / f"x{args.scale}.txt", args.scale)
            r = measure(f"bertprep-{backends[0]}", big, tokenizer, args.workers, tmp)
            small = first
            print(f"\npeak RSS vs corpus size (bertprep tokenize --backend {backends[0]}):\n" + table([
                [f"{mb(size)} corpus", f"{small['tokens']:,}", f"{small['tokens_per_s'] / 1e6:.3f}", mb(small["peak_rss"]),
                 mb(small["peak_anon_tree"])],
                [f"{mb(big.stat().st_size)} corpus ({args.scale} copies)", f"{r['tokens']:,}",
                 f"{r['tokens_per_s'] / 1e6:.3f}", mb(r["peak_rss"]), mb(r["peak_anon_tree"])],
            ], ["input", "tokens", "M tokens/s", "peak RSS", "peak anon"]))


if __name__ == "__main__":
    main()
