"""Child processes under a deadline, for `python -m bench.gpu`: each stage runs its commands through
a `Context` whose deadline kills the whole process tree (torchrun's workers included) of a command
that runs past it, so one hang costs its stage and nothing more.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class StageFailed(Exception):
    """A stage's verdict is fail; the message is its summary, `figures` what it measured before failing."""

    def __init__(self, message: str, figures: dict | None = None):
        super().__init__(message)
        self.figures = figures or {}


class StageTimeout(Exception):
    """A stage ran past its deadline; its processes were killed."""


# --- child processes ------------------------------------------------------------------------------
def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its workers in sessions of their own, so a
    process-group kill would miss them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    below = _descendants(proc.pid)  # before the parent dies and they are re-parented
    for pid in (proc.pid, *below):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()


class Context:
    """What a stage gets: the plan, its deadline, folders, and what earlier stages found."""

    def __init__(self, plan, out: Path, dry_run: bool):
        self.plan, self.out, self.dry_run = plan, out, dry_run
        self.logs, self.work = out / "logs", out / "work"
        self.deadline = float("inf")
        self.found: dict[str, dict] = {}  # stage name -> figures of passed stages
        self.abort = ""                   # set by a stage when the rest cannot run (no CUDA device)
        self._shards: list[Path] | None = None
        self.env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        if dry_run:
            self.env |= {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

    def start(self, cmd: list[str], log: str) -> subprocess.Popen:
        path = self.logs / f"{log}.log"
        with open(path, "w") as f:
            f.write("$ " + " ".join(map(str, cmd)) + "\n")
            f.flush()
            proc = subprocess.Popen(list(map(str, cmd)), stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                    env=self.env, start_new_session=True)
        proc.log_name = log
        return proc

    def wait(self, proc: subprocess.Popen) -> int:
        try:
            return proc.wait(timeout=max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            raise StageTimeout(f"killed at the stage's deadline (logs/{proc.log_name}.log)") from None

    def run(self, cmd: list[str], log: str) -> tuple[int, str]:
        """Run to completion within the stage's deadline; (exit status, its output)."""
        rc = self.wait(self.start(cmd, log))
        return rc, (self.logs / f"{log}.log").read_text(errors="replace")

    def shards(self) -> list[Path]:
        """Synthetic training shards, written once with the real writer (so the trainer reads what
        `bertprep shard` writes), and validation shards beside them (found by the trainer's default)."""
        if self._shards is None:
            from bertprep.trainer.synthetic import write_synthetic_shards
            p, folder = self.plan, self.work / "shards"
            write_synthetic_shards(folder, rows=[p.val_rows], max_len=p.seq, vocab_size=p.vocab, split="val")
            self._shards = write_synthetic_shards(folder, rows=list(p.shard_rows), max_len=p.seq, vocab_size=p.vocab)
        return self._shards
