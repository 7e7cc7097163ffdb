"""What `bench.tokenize` and `bench.shard` share: running one side of a comparison in its own
process with its peak memory measured, scaled copies of inputs, and the report's lines.

Each side runs as `python -m bench.<stage> --side NAME ...` in a child process that does the work,
times it itself (interpreter start-up and imports excluded, for both sides alike) and prints one
`BENCH-RESULT {json}` line with its own peak RSS (VmHWM) and its worker processes' (RUSAGE_CHILDREN).
With psutil the parent also samples the proportional set size and the anonymous memory summed over
the child's process tree, since a pool of worker processes holds memory side by side.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

RESULT_TAG = "BENCH-RESULT "
REPO = Path(__file__).resolve().parent.parent
MB = 1e6


def own_peak_rss() -> int:
    """This process's peak RSS in bytes since its exec (VmHWM). Not `ru_maxrss` as seen by the
    parent: Linux seeds that with the forking parent's memory, so a child would inherit the
    parent's peak."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped workers: on a machine that others
    share, CPU seconds per unit of work move less than wall-clock rates do."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def report_result(result: dict) -> None:
    """Called in a child at its end: hand the measured figures, and its own and its reaped worker
    processes' peak RSS, to the parent."""
    import resource

    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(RESULT_TAG + json.dumps(dict(result, main_rss=own_peak_rss(), worker_rss=workers)), flush=True)


def _anon_bytes(pid: int) -> int:
    """Resident anonymous memory (heap, arrays) of a process, without the file pages it maps."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _sample_tree(pid: int, peak: dict, done: threading.Event, every: float = 0.1) -> None:
    """Peaks of the process tree's summed PSS (shared pages counted once) and anonymous RSS.
    Memory-mapped input counts in RSS and PSS as it is read, though the kernel can drop those
    pages at will; anonymous memory is what a process really holds."""
    try:
        import psutil
    except ImportError:
        return
    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    while not done.is_set():
        pss = anon = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    pss += p.memory_full_info().pss
                    anon += _anon_bytes(p.pid)
                except psutil.Error:
                    pass
        except psutil.Error:
            return
        peak["pss"], peak["anon"] = max(peak["pss"], pss), max(peak["anon"], anon)
        done.wait(every)


def run_side(module: str, args: list[str], env: dict | None = None) -> dict:
    """Run `python -m bench.<module> <args>` and return its result plus `peak_rss` (bytes, the
    largest process: the child or one of its workers), `peak_pss_tree` and `peak_anon_tree` (bytes,
    sampled peaks over the process tree, see `_sample_tree`; 0 without psutil) and `wall_s` (the
    child's whole life, start-up included)."""
    cmd = [sys.executable, "-m", f"bench.{module}", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, env={**os.environ, **(env or {})}, text=True)
    peak, done = {"pss": 0, "anon": 0}, threading.Event()
    sampler = threading.Thread(target=_sample_tree, args=(proc.pid, peak, done), daemon=True)
    sampler.start()
    out = proc.stdout.read()
    proc.wait()
    done.set()
    sampler.join()
    wall = time.perf_counter() - t0
    lines = [ln for ln in out.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(out)
        raise SystemExit(f"bench: `{' '.join(cmd)}` failed (exit {proc.returncode})")
    for ln in out.splitlines():  # anything else the child printed (profiles, notes) goes through
        if not ln.startswith(RESULT_TAG):
            print(ln)
    result = json.loads(lines[-1][len(RESULT_TAG):])
    return dict(result, peak_rss=max(result["main_rss"], result["worker_rss"]), peak_pss_tree=peak["pss"],
                peak_anon_tree=peak["anon"], wall_s=wall)


def best_of(runs: list[dict], rate_key: str) -> dict:
    """The fastest of repeated runs, with the highest peak RSS any of them reached."""
    best = dict(max(runs, key=lambda r: r[rate_key]))
    best["peak_rss"] = max(r["peak_rss"] for r in runs)
    for key in ("peak_pss_tree", "peak_anon_tree"):
        best[key] = max(r[key] for r in runs)
    return best


def scaled_text(src: Path, dst: Path, copies: int) -> Path:
    """`copies` concatenated copies of a text corpus, a blank line (document break) between them."""
    with open(dst, "wb") as out:
        for _ in range(copies):
            with open(src, "rb") as f:
                shutil.copyfileobj(f, out, 16 << 20)
            out.write(b"\n\n")
    return dst


def scaled_store(src: Path, dst: Path, copies: int) -> Path:
    """A token store holding `copies` copies of the documents of `src`, written with bertprep's own
    TokenStoreWriter in bounded memory (one copy's arrays at a time): a bigger store in seconds,
    without re-tokenizing a bigger corpus."""
    from bertprep.shards import tokenstore

    store = tokenstore.open_token_store(src, verify=False)
    dst.mkdir(parents=True, exist_ok=True)
    for name in tokenstore.TOKENIZER_FILES:
        shutil.copyfile(src / name, dst / name)
    lengths = np.diff(np.asarray(store.sent_offsets))
    starts = np.zeros(len(lengths), dtype=bool)
    starts[np.asarray(store.doc_offsets[:-1])] = True
    writer = tokenstore.TokenStoreWriter(dst, store.manifest["tokenizer"]["vocab_size"])
    for _ in range(copies):
        writer.append(store.ids, lengths, starts)
    keep = {k: v for k, v in store.manifest.items() if k not in ("files", "counts", "format", "format_version",
                                                                   "id_dtype")}
    writer.close(dict(keep, label=store.manifest["label"], counts={}))
    return dst


def versions(*names: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for n in names:
        try:
            out.append(f"{n} {version(n)}")
        except PackageNotFoundError:
            out.append(f"{n} (not installed)")
    return ", ".join(out)


def machine_line() -> str:
    """Cores, CPU and load: other work on the machine shows up in every figure below."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"machine: {os.cpu_count()} cores ({cpu}), load average {load} (1/5/15 min), Python {platform.python_version()}"


def mb(n: float) -> str:
    return f"{n / MB:,.1f} MB"


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain aligned table: first column left, the others right."""
    cells = [header, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])
