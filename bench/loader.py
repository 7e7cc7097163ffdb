"""Loader: our stream next to MosaicML streaming and LitData on the same examples, samples/s and
shuffle quality side by side (issue 21; figures in bench/README.md, section "Loader").

    python -m bench.loader                       # 16 files x 3,125 examples, seq 128, vocab 30,522
    python -m bench.loader --rows 1000 --json out.json

The examples are synthetic shards (trainer/synthetic.py): 16 files, two sources of 8 files each.
The same examples (every column, plus their position) are written into MosaicML's MDS and
LitData's chunk format, so all three read the same bytes' worth of data. Each side hands out
batches of 32:
- ours: `ShardStream` through the `Prefetcher` ring (what the trainer runs), in three orders:
  --shuffle file, --shuffle global, and global with a 0.7/0.3 --mix of the two sources (measured
  in alternating rounds before and after the peers, the median kept: the machine is shared);
- MosaicML `StreamingDataset(shuffle=True)` and LitData `StreamingDataset(shuffle=True)`, iterated
  in-process and through a torch `DataLoader` with 2 workers (their documented way).
Shuffle quality, per order, from the first 20,000 examples handed out: how many distinct files a
window of 1,000 consecutive examples draws from (mean over windows), and the correlation of
neighbouring examples' document ids. The shards keep no document ids, so an example's position in
the data as written (file x rows + row: documents are written in corpus order) stands in for it:
the correlation of neighbours' positions, each batch taken as a set (shuffled within, for every
side alike: ours sorts a batch's rows for page locality, and a batch's order means nothing to the
model), and the share of neighbours within 8 rows of each other (likely the same document).
Not part of `make test` (a minute or two, and a few hundred MB of scratch files).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bertprep.shards.reader import open_shards
from bertprep.trainer.mixture import Source
from bertprep.trainer.prefetch import Prefetcher
from bertprep.trainer.stream import ShardStream, StreamConfig
from bertprep.trainer.synthetic import write_synthetic_shards

B = 32
QUALITY_N = 20_000


def quality(files: np.ndarray, positions: np.ndarray) -> dict:
    """Distinct files per window of 1,000; the neighbour correlation of the position proxy with
    each batch of B taken as a set (shuffled within, alike for every side: a batch's order means
    nothing to the model); the share of neighbours within 8 rows of each other in the data as
    written (likely one document)."""
    n = len(files) // 1000 * 1000
    distinct = float(np.mean([len(np.unique(w)) for w in files[:n].reshape(-1, 1000)]))
    m = len(positions) // B * B
    pos = np.random.default_rng(0).permuted(positions[:m].astype(np.int64).reshape(-1, B), axis=1).ravel()
    near = np.abs(np.diff(pos)) <= 8
    return {"files_per_1000": distinct, "corr_neighbours": float(np.corrcoef(pos[:-1], pos[1:])[0, 1]),
            "near_neighbours": float(near.mean())}


def ours(shards, sizes, order: str, mix: bool, seconds: float) -> dict:
    half = len(shards) // 2
    sources = [Source("a", half, 0.7), Source("b", len(shards) - half, 0.3)] if mix else None
    stream = ShardStream(shards, StreamConfig(batch_size=B, seed=1, order=order), sources)
    start = np.concatenate([[0], np.cumsum(sizes)])
    _, f, r = stream.examples(np.arange(QUALITY_N // B))
    q = quality(f.ravel(), start[f.ravel()] + r.ravel())
    with Prefetcher(stream, torch.device("cpu"), ring=4) as feed:
        for _ in range(64):  # warm the page cache and the ring
            feed.next()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(256):
                feed.next()
            n += 256 * B
        dt = time.perf_counter() - t0
    return {"samples_per_s": n / dt} | q


def _columns(shards) -> list[dict]:
    """Every example of every file as plain arrays, with its position in the data as written."""
    out, pos = [], 0
    for f, s in enumerate(shards):
        cols = s.take(np.arange(s.num_examples))
        for i in range(s.num_examples):
            out.append({k: np.ascontiguousarray(v[i]) for k, v in cols.items()} | {"pos": pos, "file": f})
            pos += 1
    return out


def _measure_iter(make_iter, seconds: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Samples/s of an iterator of samples or batches (dicts), and the first QUALITY_N (file, pos)."""
    files, pos, kept = [], [], 0
    it = make_iter()
    next(it)  # start-up (index files, worker processes) is not counted in samples/s
    n, t0 = 0, time.perf_counter()
    for item in it:
        f, p = np.atleast_1d(np.asarray(item["file"])), np.atleast_1d(np.asarray(item["pos"]))
        if kept < QUALITY_N:
            files.append(f)
            pos.append(p)
            kept += len(f)
        n += len(f)
        if time.perf_counter() - t0 > seconds:
            break
    dt = time.perf_counter() - t0
    return n / dt, np.concatenate(files), np.concatenate(pos)


def _without_torchvision() -> None:
    """`import streaming` imports its image datasets, which import torchvision; this venv's CPU
    torch has no matching torchvision wheel (the registry's is a CUDA build that fails to load), and
    the MDS path measured here never touches images: stand-ins for the two names it imports."""
    import importlib
    import importlib.machinery
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("torchvision") is not None:
        return
    tv, datasets, transforms, functional = (types.ModuleType(n) for n in (
        "torchvision", "torchvision.datasets", "torchvision.transforms", "torchvision.transforms.functional"))
    datasets.VisionDataset = type("VisionDataset", (), {})
    datasets.CIFAR10 = type("CIFAR10", (), {})
    functional.to_tensor = lambda x: torch.as_tensor(np.asarray(x))
    tv.datasets, tv.transforms, transforms.functional = datasets, transforms, functional
    stand_ins = {m.__name__: m for m in (tv, datasets, transforms, functional)}
    for m in stand_ins.values():
        m.__spec__ = importlib.machinery.ModuleSpec(m.__name__, None)
    sys.modules.update(stand_ins)
    importlib.import_module("streaming")  # it keeps what it imported
    for name in stand_ins:  # gone again: other packages probe for torchvision
        del sys.modules[name]


def mosaic(examples, folder: Path, seconds: float) -> dict:
    _without_torchvision()
    from streaming import MDSWriter, StreamingDataset

    out = folder / "mds"
    cols = {k: ("int" if np.ndim(v) == 0 else f"ndarray:{v.dtype}:{','.join(map(str, v.shape))}")
            for k, v in examples[0].items()}
    with MDSWriter(out=str(out), columns=cols, size_limit=1 << 26) as w:
        for ex in examples:
            w.write(ex)
    res = {}
    for workers in (0, 2):
        ds = StreamingDataset(local=str(out), shuffle=True, shuffle_seed=1, batch_size=B)  # default py1e shuffle
        if workers == 0:
            rate, f, p = _measure_iter(lambda: iter(ds), seconds)
        else:
            loader = torch.utils.data.DataLoader(ds, batch_size=B, num_workers=workers)
            rate, f, p = _measure_iter(lambda: iter(loader), seconds)
        res[f"workers_{workers}"] = {"samples_per_s": rate} | quality(f, p)
    return res


def litdata_side(examples, folder: Path, seconds: float) -> dict:
    import litdata as ld

    out = folder / "litdata"
    ld.optimize(fn=_litdata_sample, inputs=[(folder / "examples.npy", i) for i in range(len(examples))],
                output_dir=str(out), chunk_bytes="64MB", num_workers=1, mode="overwrite")
    res = {}
    for workers in (0, 2):
        ds = ld.StreamingDataset(str(out), shuffle=True, seed=1)
        if workers == 0:
            rate, f, p = _measure_iter(lambda: iter(ds), seconds)
        else:
            loader = ld.StreamingDataLoader(ds, batch_size=B, num_workers=workers)
            rate, f, p = _measure_iter(lambda: iter(loader), seconds)
        res[f"workers_{workers}"] = {"samples_per_s": rate} | quality(f, p)
    return res


_CACHE: dict = {}


def _litdata_sample(arg):
    path, i = arg
    if path not in _CACHE:
        _CACHE[path] = np.load(path, allow_pickle=True)
    return dict(_CACHE[path][i])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=3125, help="examples per file")
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0, help="time per throughput measurement")
    ap.add_argument("--peers", default="mosaic,litdata", help="comma-separated: mosaic, litdata (or '')")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    results = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "load": os.getloadavg()[0], "rows": args.files * args.rows, "batch": B}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = write_synthetic_shards(folder / "shards", rows=[args.rows] * args.files, max_len=128, vocab_size=30522,
                                       batch=5000)
        shards = open_shards(paths)
        sizes = np.array([s.num_examples for s in shards])
        orders = (("ours file", "file", False), ("ours global", "global", False), ("ours global+mix", "global", True))
        rounds: dict[str, list] = {name: [] for name, _, _ in orders}

        def measure_ours():  # before and after the peers: a shared machine's load moves
            for _ in range(2):
                for name, order, mix in orders:
                    rounds[name].append(ours(shards, sizes, order, mix, args.seconds / 4))

        measure_ours()
        peers = [p for p in args.peers.split(",") if p]
        if peers:
            examples = _columns(shards)
            np.save(folder / "examples.npy", np.array(examples, dtype=object), allow_pickle=True)
            for peer in peers:
                run = {"mosaic": mosaic, "litdata": litdata_side}[peer]
                results[peer] = run(examples, folder, args.seconds)
                print(peer, json.dumps(results[peer]), flush=True)
            measure_ours()
        for name, runs in rounds.items():
            results[name] = runs[0] | {"samples_per_s": float(np.median([r["samples_per_s"] for r in runs])),
                                       "rounds": [r["samples_per_s"] for r in runs]}
            print(name, json.dumps(results[name]), flush=True)
    results["load_after"] = os.getloadavg()[0]
    best = max((r[w]["samples_per_s"] for p in ("mosaic", "litdata") if p in results for w, r in
                [(k, results[p]) for k in results[p]]), default=None)
    if best:
        results["ratio_vs_best_peer"] = results["ours global+mix"]["samples_per_s"] / best
        print(f"ours (global shuffle + mix) / best peer configuration: {results['ratio_vs_best_peer']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
