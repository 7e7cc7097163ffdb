"""Benchmark `tokenize` and `shard` on a Dask cluster against the local path, on the same corpus.

    python -m bench.cluster CORPUS [--workers 2] [--chunk-mb 4] [--tokenizer tokenizer.json] [--noop 400]

Runs, in this process and one after another: the local path (`tokenize --workers N`, then
`shard --workers N`), a local Dask cluster of N worker processes (started once, its start-up timed
apart), the same two commands with `--cluster` on it (each twice: the second, warm run is the one
reported), and --noop no-op tasks through the windowed submitter the commands use. Reports wall
and CPU time (this process, its reaped pool processes and, for the cluster, the workers' own CPU
time read on each worker), throughput, whether the outputs are byte-identical, and the per-chunk
costs that predict how the cluster path scales with machines: the scheduling round trip of a
task, the CPU a chunk costs on the cluster path against the local one, and the driver's serial
CPU per chunk.
Needs the cluster extra: `pip install -e '.[cluster]'`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import resource
import tempfile
import time
from pathlib import Path

from bench.common import machine_line, mb, table, versions


def own_cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def worker_cpu(client) -> float:
    """CPU seconds the cluster's worker processes have used so far (read on each worker)."""
    def cpu():
        import resource as r

        u = r.getrusage(r.RUSAGE_SELF)
        return u.ru_utime + u.ru_stime
    return sum(client.run(cpu).values())


def tree_digest(directory: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(directory.iterdir()):
        if not p.name.startswith("."):
            h.update(p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def timed(fn, client=None) -> dict:
    w0 = worker_cpu(client) if client else 0.0
    c0, t0 = own_cpu(), time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    driver = own_cpu() - c0
    workers = worker_cpu(client) - w0 if client else 0.0
    return {"result": result, "seconds": seconds, "driver_cpu": driver, "worker_cpu": workers, "cpu": driver + workers}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("corpus", type=Path, help="plain text (a paragraph per line) or WikiText file")
    p.add_argument("--workers", type=int, default=2, help="local threads/processes, and cluster worker processes")
    p.add_argument("--chunk-mb", type=float, default=4.0, help="tokenize span size for both paths")
    p.add_argument("--tokenizer", type=Path, help="fixed tokenizer.json (else a 30,522 vocab is trained, untimed)")
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--noop", type=int, default=400, help="no-op tasks for the scheduling round trip")
    args = p.parse_args(argv)

    import distributed

    from bertprep.preprocess import cluster, sharding_cluster, tokenizing
    from bertprep.preprocess.sharding import ShardConfig, run_shard
    from bertprep.preprocess.tokenizing import TokenizeConfig, run_tokenize
    from bertprep.preprocess.vocab import VocabConfig
    from bertprep.shards import options

    print(machine_line())
    print(versions("distributed", "numpy", "pyarrow", "tokenizers"))
    size = args.corpus.stat().st_size
    print(f"corpus: {args.corpus} ({mb(size)}); {args.workers} workers; --chunk-mb {args.chunk_mb}")
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp_name:
        tmp = Path(tmp_name)
        tokenizer = args.tokenizer
        if tokenizer is None:
            t0 = time.perf_counter()
            run_tokenize(TokenizeConfig(inputs=(args.corpus,), out=tmp / "vocab", overwrite=True, progress=False,
                                        vocab=VocabConfig(vocab_size=30522)))
            tokenizer = tmp / "vocab" / "tokenizer.json"
            print(f"trained a 30,522 WordPiece vocab in {time.perf_counter() - t0:.1f}s (not timed)")

        def tok(out, where=None):
            return run_tokenize(options.build(TokenizeConfig, dict(
                inputs=(args.corpus,), out=tmp / out, overwrite=True, progress=False, workers=args.workers,
                chunk_mb=args.chunk_mb, cluster=where, tokenizer=tokenizer)))

        def shard(tokens, out, where=None):
            return run_shard(options.build(ShardConfig, dict(
                tokens=tmp / tokens, out=tmp / out, max_len=args.max_len, seed=1, workers=args.workers,
                overwrite=True, progress=False, cluster=where)))

        runs = {"tokenize local": timed(lambda: tok("tok-local")),
                "shard local": timed(lambda: shard("tok-local", "shard-local"))}
        t0 = time.perf_counter()
        with distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                      dashboard_address=":0", silence_logs=logging.CRITICAL) as lc, \
                distributed.Client(lc, set_as_default=False) as client:
            startup = time.perf_counter() - t0
            address = lc.scheduler_address
            appended = []  # the driver's serial work per tokenize chunk: appending the piece to the store
            append = tokenizing._append_piece

            def timed_append(writer, path):
                c = time.process_time()
                append(writer, path)
                appended.append(time.process_time() - c)

            # First runs on fresh workers pay their imports and the native tables once; the rows
            # are the second, warm runs (the steady state of a long job).
            cold = {"tokenize": timed(lambda: tok("tok-cluster", address), client),
                    "shard": timed(lambda: shard("tok-local", "shard-cluster", address), client)}
            shard_tasks = []  # how the shard chunks were grouped into tasks
            plan_tasks = sharding_cluster._tasks

            def counted_tasks(*a):
                shard_tasks[:] = plan_tasks(*a)
                return shard_tasks

            tokenizing._append_piece, sharding_cluster._tasks = timed_append, counted_tasks
            try:
                runs["tokenize cluster"] = timed(lambda: tok("tok-cluster", address), client)
                runs["shard cluster"] = timed(lambda: shard("tok-local", "shard-cluster", address), client)
            finally:
                tokenizing._append_piece, sharding_cluster._tasks = append, plan_tasks
            with cluster.open_session(address, 10, tmp) as session:
                noop = timed(lambda: list(session.ordered(max, -1, list(range(args.noop)), "noop")), client)

        rows = []
        for name, r in runs.items():
            res = r["result"]
            if name.startswith("tokenize"):
                amount = f"{mb(size)}, {res['manifest']['counts']['tokens']:,} tokens"
                rate = f"{size / r['seconds'] / 1e6:.2f} MB/s"
            else:
                examples = sum(s["examples"] for s in res["manifest"]["splits"].values())
                amount = f"{examples:,} examples"
                rate = f"{examples / r['seconds']:,.0f} examples/s"
            base = runs[name.split()[0] + " local"]
            rows.append([f"bertprep {name}", amount, f"{res['chunks']:,}", f"{r['seconds']:.2f}", f"{r['cpu']:.2f}",
                         rate, f"{base['seconds'] / r['seconds']:.2f}x"])
        print()
        print(table(rows, ["side", "work", "chunks", "seconds", "CPU s", "throughput", "vs local"]))
        print()
        same_tok = tree_digest(tmp / "tok-local") == tree_digest(tmp / "tok-cluster")
        same_shard = tree_digest(tmp / "shard-local") == tree_digest(tmp / "shard-cluster")
        print(f"byte-identical to the local run: token store {'yes' if same_tok else 'NO'}, "
              f"shards {'yes' if same_shard else 'NO'}")
        print(f"local cluster start-up ({args.workers} workers): {startup:.2f}s; first runs on the fresh workers "
              f"(imports, native tables): tokenize {cold['tokenize']['seconds']:.2f}s, shard "
              f"{cold['shard']['seconds']:.2f}s (the rows above are second runs)")
        per_task = noop["seconds"] / args.noop
        print(f"scheduling round trip: {1e3 * per_task:.2f} ms per task ({args.noop} no-op tasks through the "
              f"windowed submitter, {noop['cpu'] / args.noop * 1e3:.2f} ms CPU per task, scheduler included)")
        for stage in ("tokenize", "shard"):
            here, there = runs[f"{stage} local"], runs[f"{stage} cluster"]
            n = there["result"]["chunks"]
            print(f"{stage}: {1e3 * here['cpu'] / n:.1f} ms CPU per chunk locally, {1e3 * there['cpu'] / n:.1f} ms on "
                  f"the cluster (workers {1e3 * there['worker_cpu'] / n:.1f}, driver and scheduler "
                  f"{1e3 * there['driver_cpu'] / n:.1f})")

        # The cost model: workers scale the parallel part; the driver (and the scheduler) do a
        # serial part per task, and tokenize's driver also appends every piece (per MB).
        t = runs["tokenize cluster"]
        tasks = t["result"]["chunks"]
        append_per_mb = sum(appended) / (size / 1e6)
        per_task = (t["driver_cpu"] - sum(appended)) / tasks
        worker_mb_s = (size / 1e6) / t["worker_cpu"]
        for chunk_mb in (args.chunk_mb, 64.0):
            ceiling = chunk_mb / (per_task + append_per_mb * chunk_mb)
            print(f"model, tokenize with --chunk-mb {chunk_mb:g}: a worker process encodes {worker_mb_s:.1f} MB/s "
                  f"(CPU); the driver spends {1e3 * per_task:.1f} ms per task and {1e3 * append_per_mb:.2f} ms per MB "
                  f"appending, so it keeps up with {ceiling / worker_mb_s:.0f} worker processes ({ceiling:,.0f} MB/s)")
        sh = runs["shard cluster"]
        tokens = sum(s["real_tokens"] for s in sh["result"]["manifest"]["splits"].values())
        worker_tok_s = tokens / sh["worker_cpu"]
        per_task = sh["driver_cpu"] / len(shard_tasks)
        chunks_per_task = sh["result"]["chunks"] / len(shard_tasks)
        for per in (chunks_per_task, sharding_cluster.CHUNKS_PER_TASK):
            ceiling = tokens / sh["result"]["chunks"] * per / per_task
            print(f"model, shard with {per:.1f} chunks per task: a worker process packs {worker_tok_s / 1e6:.1f} M "
                  f"tokens/s (CPU); the driver and scheduler spend {1e3 * per_task:.1f} ms per task, so they keep up "
                  f"with {ceiling / worker_tok_s:.0f} worker processes")


if __name__ == "__main__":
    main()
