"""Running `tokenize` and `shard` tasks on a Dask distributed cluster (`--cluster ADDRESS|local:N`).

This module is the only one that talks to Dask, and it is imported only when --cluster is given:
a plain install does not need Dask (`make install`, or `pip install -e '.[cluster]'` in the checkout, brings it). It schedules
nothing itself: the per-chunk functions of `tokenizing.py` and `sharding.py` run as Dask tasks,
and what they compute depends only on the task's position in the input, never on which worker
runs it or when, so the output is byte-identical to a local run for any number of workers.

  open_session(address, timeout, scratch)
                                  connect to a scheduler (or start a local cluster of N worker
                                  processes for one command); one clear error when none answers
                                  or it has no workers; the run's pieces in `scratch` go at the end
  Session.check_workers(...)      before any task: every worker sees the input files (same sizes)
                                  and the shared output directory (a probe file the driver writes),
                                  and runs the same versions of bertprep and its numerics
  Session.ordered(fn, job, tasks) results in task order, a bounded window of tasks in flight
  Progress                        chunks done / total and throughput on the driver

A worker that dies mid-task is Dask's to handle: the scheduler gives its tasks to other workers
(up to `distributed.scheduler.allowed-failures` deaths per task, 3 by default). Tasks write under
temporary names that are new for every attempt, so a retried or duplicated task never writes
over another's file, and nothing is under a final name before it is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from bertprep.shards.atomic import atomic_write
from bertprep.shards.errors import BertprepError, ClusterError, ConfigError
from bertprep.shards.options import check, option

LOCAL_PREFIX = "local:"
PROGRESS_EVERY = 30.0  # seconds between progress lines when stderr is not a terminal
WINDOW_PER_THREAD = 2   # tasks in flight per worker thread: enough to keep every worker busy
CHECKED_PACKAGES = ("numpy", "pyarrow", "tokenizers")


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """Where `tokenize` and `shard` run their tasks: here (no address) or on a Dask cluster."""

    address: str | None = option(None, flag="--cluster", metavar="ADDRESS", help=(
        "Run the work as tasks on a Dask distributed cluster: a scheduler's address (tcp://host:8786), or local:N "
        "to start N worker processes here for this command. Output is byte-identical to a run without it. Needs "
        "pip install -e '.[cluster]' from the checkout (make install does)."))
    timeout: float = option(10.0, flag="--cluster-timeout", above=0, at_most=86400,
                            help="Seconds to wait for the --cluster scheduler to answer and to have a worker.")

    def __post_init__(self):
        check(self)  # --cluster-timeout: at most a day; a scheduler that takes longer is not coming
        if self.address is not None:
            check_address(self.address)


def check_address(address: str) -> str:
    """Refuse a --cluster value that cannot name a cluster, without importing Dask."""
    if address.startswith(LOCAL_PREFIX):
        n = address[len(LOCAL_PREFIX):]
        if not n.isdigit() or int(n) < 1:
            raise ConfigError(f"--cluster local:N needs a number of workers N >= 1, got {address!r}")
    elif not address or any(c.isspace() for c in address):
        raise ConfigError(f"--cluster must be a Dask scheduler address (tcp://host:8786) or local:N, got {address!r}")
    return address


def code_fingerprint() -> str:
    """sha256 of the code that decides the output bytes (preprocess/ and shards/): workers must run
    the same, or a worker with another packing rule would quietly change the output."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for pkg in ("preprocess", "shards"):
        for path in sorted((root / pkg).glob("*.py")) + sorted((root / pkg).glob("*.c")):
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": "%d.%d" % sys.version_info[:2], "bertprep code": code_fingerprint()[:12]}
    for name in CHECKED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


SHARED = "; inputs, --tokens and --out must be on a file system every worker mounts at the same path"


def worker_view(files: dict[str, int], probe: str, token: str, driver_versions: dict) -> list[str]:
    """Run on every worker: what it cannot see or do that the run needs (empty: all is well)."""
    problems = []
    for path, size in files.items():
        try:
            seen = os.stat(path).st_size
        except OSError as e:
            problems.append(f"cannot see {path} ({e.strerror}){SHARED}")
            continue
        if seen != size:
            problems.append(f"sees {path} with {seen:,} bytes, the driver with {size:,}: not the same file{SHARED}")
    directory = os.path.dirname(probe)
    try:
        with open(probe, encoding="utf-8") as f:
            same = f.read() == token
    except OSError:
        same = False
    if not same:
        problems.append(f"cannot see the output directory {directory} as the driver does (a file the driver "
                        f"wrote there is missing){SHARED}")
    else:
        test = os.path.join(directory, f".probe-{secrets.token_hex(4)}.tmp")
        try:
            with open(test, "w"):
                pass
            os.unlink(test)
        except OSError as e:
            problems.append(f"cannot write to the output directory {directory} ({e.strerror})")
    mine = versions()
    differ = [f"{k} {mine.get(k)} (driver {v})" for k, v in driver_versions.items() if mine.get(k) != v]
    if differ:
        problems.append(f"runs other versions than the driver: {', '.join(differ)}; install the same bertprep "
                        "and packages everywhere, or the output would not be byte-identical")
    return problems


class Session:
    """A connected Dask client (and the local cluster it started, if any) for one command."""

    def __init__(self, client, address: str, run_id: str):
        self.client = client
        self.address = address
        self.run_id = run_id
        self.piece_prefix = piece_prefix(run_id)
        self._window, self._window_at = 0, 0.0

    def threads(self) -> int:
        return sum(self.client.nthreads().values())

    def describe(self) -> str:
        n = len(self.client.nthreads())
        where = "a local cluster" if self.address.startswith(LOCAL_PREFIX) else self.address
        return f"{where} ({n} worker{'s' if n != 1 else ''})"

    def check_workers(self, *, files: list[Path], shared_dir: Path) -> None:
        """Every worker must see `files` (with the driver's sizes) and `shared_dir` (by a probe file
        written here), and run the driver's versions. One error line naming a worker otherwise."""
        token = secrets.token_hex(16)
        probe = shared_dir / f".probe-{token[:8]}.tmp"
        with atomic_write(probe, "w") as f:
            f.write(token)
        try:
            replies = self.client.run(worker_view, {str(p): p.stat().st_size for p in files}, str(probe), token,
                                      versions())
        except (OSError, TimeoutError) as e:  # a worker lost while asked
            raise ClusterError(f"--cluster {self.address}: could not ask the workers ({e.__class__.__name__}: {e})"
                               ) from None
        finally:
            probe.unlink(missing_ok=True)
        for worker, problems in sorted(replies.items()):
            if problems:
                n = len(problems) - 1
                more = f" (and {n} more problem{'s' if n > 1 else ''})" if n else ""
                raise ClusterError(f"worker {worker} {problems[0]}{more}")

    def submit(self, fn: Callable, *args, name: str, priority: int = 0):
        return self.client.submit(fn, *args, key=f"bertprep-{name}-{self.run_id}", priority=priority, pure=False)

    def result(self, future, what: str):
        """The task's result; Dask's own failures become one ClusterError line, while our errors
        (bad input found by a worker) and bugs pass through as raised on the worker."""
        from concurrent.futures import CancelledError

        from distributed.comm.core import CommClosedError
        from distributed.scheduler import KilledWorker

        try:
            return future.result()
        except BertprepError:
            raise
        except KilledWorker:
            raise ClusterError(f"{what}: the workers running it died too often (out of memory?); see the "
                               "workers' logs") from None
        except (CancelledError, CommClosedError) as e:
            raise ClusterError(f"{what}: lost the scheduler at {self.address} ({e.__class__.__name__})") from None

    def window(self) -> int:
        """Tasks kept in flight, from the workers there are now (re-read every few seconds, since
        workers may join or leave a running cluster)."""
        now = time.monotonic()
        if now - self._window_at > 5:
            self._window = max(2, WINDOW_PER_THREAD * self.threads())
            self._window_at = now
        return self._window

    def ordered(self, fn: Callable, job, tasks: list, name: str) -> Iterator:
        """`fn(job, task)` for every task, results yielded in task order. At most `window()` tasks
        past the oldest unconsumed one are submitted, so a slow task never lets results pile up;
        earlier tasks get higher priority."""
        futures: dict[int, object] = {}
        submitted = 0
        try:
            for i in range(len(tasks)):
                while submitted < len(tasks) and submitted < i + self.window():
                    futures[submitted] = self.submit(fn, job, tasks[submitted], name=f"{name}-{submitted}",
                                                     priority=-submitted)
                    submitted += 1
                yield self.result(futures.pop(i), f"{name} task {i}")
        finally:
            if futures:
                self.client.cancel(list(futures.values()))


def _probe(address: str, timeout: float) -> None:
    """Connect once and read the scheduler's handshake, before a Client exists: a Client that fails
    half-way leaves a traceback at exit, and what answers may not speak Dask at all."""
    import asyncio

    from distributed.comm import connect

    async def handshake():
        comm = await connect(address if "://" in address else f"tcp://{address}", timeout=timeout)
        await comm.close()

    async def bounded():
        # `connect` bounds only the TCP connection: reading the scheduler's handshake has no
        # deadline of its own, so a server that accepts and never answers would hang us forever.
        try:
            await asyncio.wait_for(handshake(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no handshake within {timeout:g}s") from None

    try:
        asyncio.run(bounded())
    except (OSError, TimeoutError) as e:
        raise ClusterError(f"--cluster {address}: no Dask scheduler answered within {timeout:g}s ({e}); start one "
                           f"with `dask scheduler` and workers with `dask worker {address}`, or use --cluster local:N"
                           ) from None
    except Exception as e:  # something answered, in another protocol
        raise ClusterError(f"--cluster {address}: what answers there is not a Dask scheduler "
                           f"({e.__class__.__name__}); check the address and port (8786 by default)") from None


def piece_prefix(run_id: str) -> str:
    """Tasks' files (pieces) in the shared directory are named `{prefix}...tmp`: hidden, temporary
    (removed by `remove_stale_temps` too), and told apart from another run's by `run_id`."""
    return f".piece-{run_id}-"


@contextlib.contextmanager
def open_session(address: str, timeout: float, scratch: Path) -> Iterator[Session]:
    """Connect to the scheduler at `address`, or start `local:N` (N worker processes of one thread
    each, on loopback) for the length of the block. On the way out, after the client (and a local
    cluster's workers) are gone, the run's pieces in `scratch` are removed, with the temporary
    files of tasks that were killed while writing (`..piece-*.PID.tmp`)."""
    try:
        import distributed
    except ImportError:
        raise ConfigError("--cluster needs Dask distributed: run make install, or pip install -e '.[cluster]' in "
                          "the checkout") from None
    check_address(address)
    cluster = client = session = None
    try:
        if address.startswith(LOCAL_PREFIX):
            cluster = distributed.LocalCluster(n_workers=int(address[len(LOCAL_PREFIX):]), threads_per_worker=1,
                                               processes=True, host="127.0.0.1", dashboard_address=":0",
                                               silence_logs=logging.CRITICAL)
            client = distributed.Client(cluster, timeout=timeout, set_as_default=False)
        else:
            _probe(address, timeout)
            client = distributed.Client(address, timeout=timeout, set_as_default=False)
        try:
            client.wait_for_workers(1, timeout=timeout)
        except (TimeoutError, OSError):
            raise ClusterError(f"--cluster {address}: the scheduler has no workers (waited {timeout:g}s); start "
                               f"them with `dask worker {address} --nthreads 1`") from None
        session = Session(client, address, secrets.token_hex(6))
        yield session
    finally:
        for closer in (client, cluster):
            if closer is not None:
                with contextlib.suppress(Exception):  # closing a cluster whose worker we killed may complain
                    closer.close()
        if session is not None:
            for p in scratch.glob(f"*{session.piece_prefix}*"):
                p.unlink(missing_ok=True)


class Progress:
    """Chunks done / total and throughput, on the driver: a bar on a terminal, else a line on stderr
    every PROGRESS_EVERY seconds (cluster runs are long and often logged to a file)."""

    def __init__(self, desc: str, total: int, unit: str, enabled: bool):
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        self.desc, self.total, self.unit = desc, total, unit
        self.done, self.amount = 0, 0
        self.t0 = self.last = time.perf_counter()
        self.log = enabled and not tty
        self.bar = tqdm(total=total, unit="chunk", desc=desc, disable=not (enabled and tty), leave=False,
                        dynamic_ncols=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def rate(self) -> str:
        per_s = self.amount / max(time.perf_counter() - self.t0, 1e-9)
        for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if per_s >= scale:
                return f"{per_s / scale:.1f} {prefix}{self.unit}/s"
        return f"{per_s:.0f} {self.unit}/s"

    def chunk_done(self, amount: int) -> None:
        self.done += 1
        self.amount += amount
        self.bar.set_postfix_str(self.rate(), refresh=False)
        self.bar.update(1)
        now = time.perf_counter()
        if self.log and now - self.last >= PROGRESS_EVERY:
            print(f"{self.desc}: {self.done}/{self.total} chunks, {self.rate()}", file=sys.stderr, flush=True)
            self.last = now
