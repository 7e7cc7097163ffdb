"""Benchmark the vocab step and text -> verified shards at WikiText-103 scale (issue 23).

    python -m bench.vocab CORPUS HELDOUT [--samples 50,100,200] [--parts steps,samples] [--out DIR]

CORPUS is a WikiText-layout file (`python -m bench.wikicorpus` builds a 543 MB one), HELDOUT text of
the same kind that no vocab saw (the same script with another --seed).
  steps    each command in its own process, timed with its own CPU seconds and peak RSS
           (os.wait4): `bertprep tokenize CORPUS` with the defaults (a sampled vocab), the same
           with --vocab-sample-mb 0 (the whole corpus), the same with --vocab of that vocab (encoding
           alone), `bertprep shard --max-len 128 --nsp`, `bertprep verify`, and `tokenizers`' own
           `BertWordPieceTokenizer.train` on the same file. The vocab step is a tokenize run less
           its --vocab run.
  samples  vocabs trained on --samples MB of CORPUS and on all of it: each one's overlap with the
           whole-corpus vocab, and tokens per word on HELDOUT (its words as BERT's pre-tokenizer
           makes them, each WordPiece-tokenized).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.common import machine_line, table, versions

BERTPREP = [str(Path(sys.executable).with_name("bertprep"))]
HF_TRAIN = ("from tokenizers import BertWordPieceTokenizer; import sys; "
            "BertWordPieceTokenizer().train([sys.argv[1]], vocab_size=30522, show_progress=False)")


def timed(cmd: list[str]) -> dict:
    """Wall seconds, CPU seconds (user + system, the process and the children it waited for) and
    peak RSS of one command."""
    t0 = time.perf_counter()
    p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.read().decode()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{out}")
    return {"wall": time.perf_counter() - t0, "cpu": ru.ru_utime + ru.ru_stime, "rss": ru.ru_maxrss * 1024,
            "out": out.strip().splitlines()[-1] if out.strip() else ""}


def steps(corpus: Path, tmp: Path) -> list[list[str]]:
    rows = []
    runs = [
        ("bertprep tokenize CORPUS (defaults: sampled vocab)", BERTPREP + ["tokenize", corpus, "--out", tmp / "t"]),
        ("bertprep tokenize CORPUS --vocab-sample-mb 0 (vocab on everything)",
         BERTPREP + ["tokenize", corpus, "--out", tmp / "tall", "--vocab-sample-mb", "0"]),
        ("of which encoding (the same with --vocab of that vocab)",
         BERTPREP + ["tokenize", corpus, "--out", tmp / "tv", "--vocab", tmp / "tall" / "vocab.txt"]),
        ("bertprep shard --max-len 128 --nsp", BERTPREP + ["shard", "--tokens", tmp / "t", "--out", tmp / "s",
                                                           "--max-len", "128", "--nsp"]),
        ("bertprep verify", BERTPREP + ["verify", tmp / "s"]),
        ("tokenizers' own BertWordPieceTokenizer.train", [sys.executable, "-c", HF_TRAIN, corpus]),
    ]
    results = {}
    for name, cmd in runs:
        results[name] = r = timed(cmd)
        print(f"{name}: {r['wall']:.1f}s wall, {r['cpu']:.1f}s CPU, {r['rss'] / 1e6:.0f} MB; {r['out'][:200]}",
              flush=True)
        rows.append([name, f"{r['wall']:.1f}", f"{r['cpu']:.1f}", f"{r['rss'] / 1e6:.0f} MB"])
    names = [n for n, _ in runs]
    full, enc, hf = results[names[1]], results[names[2]], results[names[5]]
    rows.append(["vocab step, whole corpus (tokenize --vocab-sample-mb 0 less --vocab)",
                 f"{full['wall'] - enc['wall']:.1f}", f"{full['cpu'] - enc['cpu']:.1f}", ""])
    e2e = [results[n] for n in (names[0], names[3], names[4])]
    rows.append(["text -> verified shards, defaults (tokenize + shard + verify)",
                 f"{sum(r['wall'] for r in e2e):.1f}", f"{sum(r['cpu'] for r in e2e):.1f}", ""])
    print(f"vocab step on the whole corpus vs tokenizers' own train: {(full['wall'] - enc['wall']) / hf['wall']:.2f}x "
          f"wall, {(full['cpu'] - enc['cpu']) / hf['cpu']:.2f}x CPU (target <= 1x)")
    return rows


def heldout_words(path: Path, tmp: Path) -> Counter:
    from bertprep.preprocess.corpus import detect_format
    from bertprep.preprocess.sampling import plan_sample, write_words

    chunks, _, _ = plan_sample([(path, detect_format(path))], 0)
    write_words(chunks, tmp / "heldout.words", lowercase=True)
    return Counter((tmp / "heldout.words").read_text(encoding="utf-8").split())


def tokens_per_word(tok, counts: Counter) -> float:
    model = tok.model
    return sum(c * len(model.tokenize(w)) for w, c in counts.items()) / sum(counts.values())


def samples(corpus: Path, heldout: Path, sizes: list[float], tmp: Path) -> list[list[str]]:
    from bertprep.preprocess.sampling import train_vocab
    from bertprep.preprocess.vocab import VocabConfig

    counts = heldout_words(heldout, tmp)
    print(f"held-out: {sum(counts.values()):,} words, {len(counts):,} distinct", flush=True)
    trained = {}
    for mb in [0.0] + sizes:
        t0 = time.perf_counter()
        tok, sample = train_vocab(VocabConfig(vocab_sample_mb=mb), [(corpus, "wikitext")], tmp, None, False, 1 << 26)
        trained[mb] = (tok, sample, time.perf_counter() - t0)
        print(f"--vocab-sample-mb {mb:g}: {sample['bytes'] / 1e6:.0f} MB read, {trained[mb][2]:.1f}s", flush=True)
    full = set(trained[0.0][0].get_vocab())
    base = tokens_per_word(trained[0.0][0], counts)
    rows = []
    for mb, (tok, sample, seconds) in trained.items():
        tpw = tokens_per_word(tok, counts)
        rows.append([f"{mb:g}" if mb else "0 (whole corpus)", f"{sample['bytes'] / 1e6:.0f} MB", f"{seconds:.1f}",
                     f"{100 * len(full & set(tok.get_vocab())) / len(full):.1f}%", f"{tpw:.4f}",
                     f"{100 * (tpw / base - 1):+.2f}%"])
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.vocab", description=__doc__.split("\n\n")[0])
    p.add_argument("corpus", type=Path)
    p.add_argument("heldout", type=Path)
    p.add_argument("--samples", default="50,100,200", help="sample sizes in MB (--vocab-sample-mb)")
    p.add_argument("--parts", default="steps,samples")
    p.add_argument("--out", type=Path, help="where the runs write [default: a temporary directory]")
    args = p.parse_args(argv)
    print(machine_line())
    print(versions("tokenizers", "numpy"))
    print(f"corpus: {args.corpus} ({args.corpus.stat().st_size / 1e6:.0f} MB); uptime: "
          f"{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-vocab-", dir=args.out) as name:
        tmp = Path(name)
        if "steps" in args.parts:
            print("\n" + table(steps(args.corpus, tmp), ["step", "wall s", "CPU s", "peak RSS"]), flush=True)
        if "samples" in args.parts:
            sizes = [float(s) for s in args.samples.split(",") if s]
            print("\n" + table(samples(args.corpus, args.heldout, sizes, tmp),
                               ["--vocab-sample-mb", "read", "seconds", "overlap with whole-corpus vocab",
                                "held-out tokens/word", "vs whole-corpus vocab"]))
    print(f"uptime at the end: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
