"""Helpers for the fault suite: run `bertprep` as a real process (so that it can be killed, stopped
and its memory measured), build corpora bigger than tests/data by repetition, and mount small or
read-only file systems.

Not a conftest.py on purpose: tests/conftest.py is imported as the module `conftest` by the other
test files, and a second conftest.py would take that name. Test files import what they need.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent.parent / "data"
WIKI = DATA / "pydocs.wiki.tokens"
PLAIN = DATA / "shakespeare.txt"
BERTPREP = [sys.executable, "-m", "bertprep.cli"]
TRAINER = [sys.executable, str(Path(__file__).resolve().parents[2] / "trainer" / "run.py")]


@dataclass
class Run:
    """A finished `bertprep` process, with memory peaks sampled every 20 ms from /proc while it ran.

    Not `ru_maxrss` from wait4: Linux seeds a child's figure with the forking parent's (here the
    pytest process's) resident set, which would hide what bertprep itself holds."""

    code: int
    out: str
    err: str
    seconds: float
    peak_rss: int  # bytes: the main process's own high-water mark (VmHWM)
    peak_anon: int  # bytes: anonymous memory (heap, arrays) summed over its process group, its workers too

    def one_error_line(self) -> str:
        """The single `error: ...` line a refused command prints (asserting it is one line, no traceback)."""
        lines = self.err.strip().splitlines()
        assert self.code == 2, f"exit {self.code}, stderr:\n{self.err}"
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in self.err, self.err
        return lines[0]


def start(*args, cwd: Path | None = None, address_space: int | None = None,
          command: list[str] = BERTPREP) -> subprocess.Popen:
    """Start `bertprep ARGS` (or `command ARGS`: TRAINER, say) in its own process group, its output
    going to temporary files; `address_space` (bytes) caps its virtual memory as `ulimit -v` does
    (a small machine)."""
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()

    def limit():
        if address_space:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    p = subprocess.Popen(command + [str(a) for a in args], stdout=out, stderr=err, cwd=cwd,
                         start_new_session=True, preexec_fn=limit)
    p.outfiles = (out, err)  # type: ignore[attr-defined]
    p.t0 = time.monotonic()  # type: ignore[attr-defined]
    return p


def _status_kib(pid: int | str, keys: tuple[str, ...]) -> dict[str, int]:
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


def group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, state) of every process whose process group is `pgid`."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == pgid:
            members.append((int(entry.name), fields[0].decode()))
    return members


def _sample(pid: int, peak: dict, done: threading.Event) -> None:
    while not done.is_set():
        hwm = _status_kib(pid, ("VmHWM",)).get("VmHWM", 0)
        anon = sum(_status_kib(m, ("RssAnon",)).get("RssAnon", 0) for m, _ in group_members(pid))
        peak["hwm"], peak["anon"] = max(peak["hwm"], hwm), max(peak["anon"], anon)
        done.wait(0.02)


def finish(p: subprocess.Popen, timeout: float = 120, reap: bool = True) -> Run:
    """Wait for a started process (killing its group after `timeout`: a hang fails the test), then
    kill whatever it left in its process group unless `reap` is false."""
    timer = threading.Timer(timeout, kill_group, (p.pid,))
    timer.start()
    peak, done = {"hwm": 0, "anon": 0}, threading.Event()
    sampler = threading.Thread(target=_sample, args=(p.pid, peak, done), daemon=True)
    sampler.start()
    try:
        # waitid with WNOWAIT leaves the zombie, so /proc/PID still answers until the sampler is done
        os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
    finally:
        timer.cancel()
        done.set()
        sampler.join()
    _, status = os.waitpid(p.pid, 0)
    seconds = time.monotonic() - p.t0  # type: ignore[attr-defined]
    p.returncode = os.waitstatus_to_exitcode(status)
    if reap:
        kill_group(p.pid)
    out, err = p.outfiles  # type: ignore[attr-defined]
    texts = []
    for f in (out, err):
        f.seek(0)
        texts.append(f.read().decode("utf-8", "replace"))
        f.close()
    if p.returncode == -signal.SIGKILL and seconds >= timeout:
        raise AssertionError(f"{' '.join(map(str, p.args))} still running after {timeout}s (a hang)")
    return Run(p.returncode, texts[0], texts[1], seconds, peak["hwm"], peak["anon"])


def bertprep(*args, timeout: float = 120, cwd: Path | None = None, address_space: int | None = None) -> Run:
    """Run `bertprep ARGS` to completion in a fresh process."""
    return finish(start(*args, cwd=cwd, address_space=address_space), timeout)


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies excluded: they hold nothing)."""
    return any(state != "Z" for _, state in group_members(pgid))


def repeat_file(src: Path, dst: Path, copies: int) -> Path:
    """`copies` concatenated copies of `src` (documents repeat; the text stays real)."""
    with open(dst, "wb") as out:
        for _ in range(copies):
            with open(src, "rb") as f:
                shutil.copyfileobj(f, out)
    return dst


def scaled_store(src: Path, dst: Path, copies: int) -> Path:
    """A token store of `copies` copies of `src`'s documents, written by bertprep's own
    TokenStoreWriter one copy at a time: a big store in seconds, without tokenizing a big corpus."""
    import numpy as np

    from bertprep.shards import tokenstore

    store = tokenstore.open_token_store(src)
    dst.mkdir(parents=True, exist_ok=True)
    for name in tokenstore.TOKENIZER_FILES:
        shutil.copyfile(src / name, dst / name)
    lengths = np.diff(np.asarray(store.sent_offsets))
    starts = np.zeros(len(lengths), dtype=bool)
    starts[np.asarray(store.doc_offsets[:-1])] = True
    writer = tokenstore.TokenStoreWriter(dst, store.manifest["tokenizer"]["vocab_size"])
    for _ in range(copies):
        writer.append(store.ids, lengths, starts)
    keep = {k: v for k, v in store.manifest.items() if k not in ("files", "counts", "format", "format_version")}
    writer.close(dict(keep, counts={}))
    return dst


def data_files(directory: Path) -> dict[str, bytes]:
    """Every file under a final (non-hidden) name, with its bytes ({} for no directory)."""
    if not Path(directory).is_dir():
        return {}
    return {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir()) if not p.name.startswith(".")}


def assert_no_temp_files(directory: Path) -> None:
    left = [p.name for p in Path(directory).iterdir() if p.name.endswith(".tmp")]
    assert not left, f"temporary files left in {directory}: {left}"


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A tmpfs of `size` mounted at `path` for the block; skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8); this machine cannot make a full disk")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); no way to make a full or read-only disk")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True)
