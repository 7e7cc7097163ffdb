"""Load: peak memory of `bertprep shard` over token stores of 10M and 50M tokens, and of
`bertprep tokenize` over corpora of 30 MB and 300 MB, all a real corpus repeated. Memory must stay
flat as the input grows (issue 7); the figures go to bench/README.md, section "Load".

    python -m bench.load                                   # the shipped data/pydocs.wiki.tokens
    python -m bench.load --corpus /path/a.txt /path/b.txt  # other real text, concatenated

Not part of `make test` (minutes, and half a gigabyte of scratch files); tests/faults/test_load.py
checks the same property at an eighth of the size. Each command runs as its own process while a
thread samples /proc every 20 ms: `peak RSS` is bertprep's main process's high-water mark (VmHWM;
mapped input pages count in it as they are read), `tree anon` is the anonymous memory (heap,
arrays) summed over the process and its workers, the memory a run really holds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO / "data" / "pydocs.wiki.tokens"
MIB = 1 << 20


def _status(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    found = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in keys:
                    found[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return found


def _group(pgid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[3]) == pgid:
                        pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def measure(args: list) -> dict:
    """Run `bertprep ARGS` in its own process group; wall time and sampled memory peaks. Not
    `ru_maxrss`: Linux starts a child's figure at its forking parent's resident set."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "bertprep.cli", *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    peak, done = {"rss": 0, "tree_rss": 0, "tree_anon": 0}, threading.Event()

    def sample():
        while not done.is_set():
            members = [_status(pid, ("VmRSS", "RssAnon")) for pid in _group(p.pid)]
            peak["rss"] = max(peak["rss"], _status(p.pid, ("VmHWM",)).get("VmHWM", 0))
            peak["tree_rss"] = max(peak["tree_rss"], sum(m.get("VmRSS", 0) for m in members))
            peak["tree_anon"] = max(peak["tree_anon"], sum(m.get("RssAnon", 0) for m in members))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = p.communicate()
    done.set()
    sampler.join()
    if p.returncode != 0:
        raise SystemExit(f"bench.load: `bertprep {' '.join(map(str, args))}` failed:\n{err}")
    return dict(peak, seconds=time.perf_counter() - t0, summary=out.strip())


def repeat_corpus(sources: list[Path], dst: Path, min_bytes: int) -> Path:
    """The sources concatenated, over and over, until `min_bytes` (whole copies, streamed)."""
    written = 0
    with open(dst, "wb") as out:
        while written < min_bytes:
            for src in sources:
                with open(src, "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
                out.write(b"\n\n")
                written += src.stat().st_size + 2
    return dst


def repeat_store(src: Path, dst: Path, min_tokens: int) -> int:
    """A token store of whole copies of `src`'s documents with at least `min_tokens` tokens, written
    by bertprep's TokenStoreWriter one copy at a time (the same store tokenizing the repeated corpus
    would give, without the wait). Returns its token count."""
    from bertprep.shards import tokenstore

    store = tokenstore.open_token_store(src)
    dst.mkdir(parents=True, exist_ok=True)
    for name in tokenstore.TOKENIZER_FILES:
        shutil.copyfile(src / name, dst / name)
    lengths = np.diff(np.asarray(store.sent_offsets))
    starts = np.zeros(len(lengths), dtype=bool)
    starts[np.asarray(store.doc_offsets[:-1])] = True
    writer = tokenstore.TokenStoreWriter(dst, store.manifest["tokenizer"]["vocab_size"])
    while writer.num_tokens < min_tokens:
        writer.append(store.ids, lengths, starts)
    keep = {k: v for k, v in store.manifest.items() if k not in ("files", "counts", "format", "format_version")}
    return writer.close(dict(keep, counts={}))["counts"]["tokens"]


def row(what: str, size: str, m: dict) -> str:
    return (f"| {what} | {size} | {m['rss'] / MIB:,.0f} MiB | {m['tree_rss'] / MIB:,.0f} MiB | "
            f"{m['tree_anon'] / MIB:,.0f} MiB | {m['seconds']:.1f} s |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", nargs="+", type=Path, default=[DEFAULT_CORPUS], help="real text to repeat")
    ap.add_argument("--work", type=Path, help="scratch directory [default: a temporary one, removed after]")
    ap.add_argument("--workers", type=int, default=0, help="shard --workers (0 = all cores)")
    ap.add_argument("--vocab-size", type=int, default=8000)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="bertprep-load-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        base = work / "base"
        measure(["tokenize", *a.corpus, "--out", base, "--vocab-size", a.vocab_size, "--label", "load"])
        vocab = base / "vocab.txt"
        for target in (10_000_000, 50_000_000):
            store = work / f"tokens{target // 1_000_000}m"
            n = repeat_store(base, store, target)
            for fmt in ("arrow", "msgpack"):
                out = work / f"shards{target // 1_000_000}m-{fmt}"
                m = measure(["shard", "--tokens", store, "--out", out, "--workers", a.workers, "--format", fmt])
                rows.append(row(f"shard --format {fmt}", f"{n / 1e6:.1f}M tokens", m))
                print(rows[-1], flush=True)
                shutil.rmtree(out)
            shutil.rmtree(store)
        for size in (30_000_000, 300_000_000):
            corpus = repeat_corpus(a.corpus, work / f"corpus{size // 1_000_000}.txt", size)
            m = measure(["tokenize", corpus, "--out", work / "tok", "--vocab", vocab, "--overwrite"])
            counts = json.loads((work / "tok" / "manifest.json").read_text())["counts"]
            rows.append(row("tokenize", f"{corpus.stat().st_size / 1e6:,.0f} MB ({counts['tokens'] / 1e6:.0f}M tokens)", m))
            print(rows[-1], flush=True)
            corpus.unlink()
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"corpus: {', '.join(p.name for p in a.corpus)}, repeated; {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f}")
    print("| command | input | peak RSS (main) | peak RSS (all processes) | tree anon | wall |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
