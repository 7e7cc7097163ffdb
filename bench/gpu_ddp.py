"""The ddp-resume stage of `python -m bench.gpu`: torchrun on every visible GPU (2 gloo ranks on
CPU in the dry run), SIGKILLed once its checkpoint at step C is on disk, resumed with `--resume`,
and its losses compared step by step with an uninterrupted run of the same flags.

Three runs: `whole` (S steps, uninterrupted) and, beside it, `killed` (the same, killed after step
C's checkpoint; a later checkpoint that landed before the kill is removed, so the resume starts at
C), then the resumption of `killed`. Bitwise equality is not expected on CUDA (atomics in backward kernels make
two runs differ in the last bits, and bf16 grows that), so the check is a relative tolerance per
step; the same comparison over steps 1..C, two independent runs, shows the run-to-run noise floor.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path

from bench.gpu_run import ROOT, Context, StageFailed, kill_tree

CKPT_RE = re.compile(r"^step_(\d+)\.pt$")


def _losses(run: Path, key: str = "loss") -> dict[int, float]:
    """step -> the training loss (or `key`, e.g. val_loss) of the run's metrics.jsonl."""
    out = {}
    path = run / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by the kill
        if key in rec:
            out[int(rec["step"])] = float(rec[key])  # "nan" (written for a non-finite value) parses too
    return out


def _checkpoints(run: Path) -> dict[int, Path]:
    folder = run / "checkpoints"
    found = (CKPT_RE.match(p.name) for p in folder.iterdir()) if folder.is_dir() else ()
    return {int(m.group(1)): folder / m.group(0) for m in found if m}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def stage_ddp(ctx: Context, procs: int) -> tuple[dict, str]:
    p = ctx.plan
    S, C = p.ddp_steps, p.ddp_ckpt
    runs = ctx.work / "ddp"

    def cmd(out: Path, *extra: str) -> list:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
                ROOT / "trainer" / "run.py", "--shards", *ctx.shards(), "--out", out,
                "--layers", p.ddp_shape[0], "--hidden", p.ddp_shape[1], "--heads", p.ddp_shape[2],
                "--ffn", p.ddp_shape[3], "--batch-size", p.ddp_batch, "--max-steps", S, "--lr", p.ddp_lr,
                "--warmup-steps", max(1, S // 10), "--log-interval", 1, "--val-interval", C, "--val-batches", 4,
                "--ckpt-interval", C,
                "--max-checkpoints", 3, "--seed", 7, "--device", p.device, "--no-tensorboard", "--quiet", *extra]

    # The two runs go side by side (independent; on a GPU machine the small model leaves room for both).
    whole_proc = ctx.start(cmd(runs / "whole"), "ddp-whole")
    killed = runs / "killed"
    proc = ctx.start(cmd(killed), "ddp-killed")
    try:
        while C not in _checkpoints(killed):
            if proc.poll() is not None:
                raise StageFailed(f"torchrun exited {proc.returncode} before its step-{C} checkpoint")
            if time.monotonic() > ctx.deadline:
                ctx.wait(proc)  # kills it and raises StageTimeout
            time.sleep(0.05)
        kill_tree(proc)  # SIGKILL, torchrun and its workers: no chance to save anything more
    except BaseException:
        kill_tree(whole_proc)
        raise
    at_kill = max(_losses(killed), default=0)
    raced = sorted(s for s in _checkpoints(killed) if s > C)
    for s in raced:  # it got past another checkpoint before the kill landed: resume from C regardless
        _checkpoints(killed)[s].unlink()
    rc = ctx.wait(whole_proc)
    if rc != 0:
        raise StageFailed(f"uninterrupted torchrun exited {rc}: {_tail((ctx.logs / 'ddp-whole.log').read_text())}")
    whole = _losses(runs / "whole")

    rc, text = ctx.run(cmd(killed, "--resume"), "ddp-resume")
    if rc != 0:
        raise StageFailed(f"resumed torchrun exited {rc}: {_tail(text)}")
    resumed = _losses(killed)
    events = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines() if '"event"' in x]
    after = [s for s in range(C + 1, S + 1) if s in resumed and s in whole]
    before = [s for s in range(1, C + 1) if s in resumed and s in whole]
    diff_after = max((_rel(resumed[s], whole[s]) for s in after), default=None)
    diff_before = max((_rel(resumed[s], whole[s]) for s in before), default=None)
    val_whole, val_resumed = _losses(runs / "whole", "val_loss"), _losses(killed, "val_loss")
    f = {"ranks": procs, "backend": "nccl" if p.device == "cuda" and procs > 1 else "gloo" if procs > 1 else "none",
         "steps": S, "checkpoint_step": C, "last_step_logged_before_kill": at_kill,
         "later_checkpoints_removed": raced, "resume_event": any(e.get("event") == "resume" for e in events),
         "max_rel_diff_after_resume": diff_after, "max_rel_diff_before_kill": diff_before,
         "tolerance": p.ddp_tolerance, "final_loss_whole": whole.get(S), "final_loss_resumed": resumed.get(S),
         "val_loss_whole": val_whole, "val_loss_resumed": val_resumed}
    ranks = f"{procs} rank(s), {f['backend']}" + ("" if procs > 1 else " (one GPU: no all-reduce exercised)")
    summary = (f"{ranks}; killed after step {at_kill} (checkpoint {C}), resumed to {S}: max loss difference "
               f"{_pct(diff_after)} after the resume (tolerance {p.ddp_tolerance:.2%}), {_pct(diff_before)} "
               f"between the two runs before it")
    if len(after) != S - C or not f["resume_event"]:
        raise StageFailed(summary + f": the resumed run logged {len(after)} of steps {C + 1}..{S}")
    if diff_after > p.ddp_tolerance:
        raise StageFailed(summary)
    vals = [v.get(s) for v in (val_whole, val_resumed) for s in (C, S)]
    if not all(v is not None and math.isfinite(v) for v in vals):
        raise StageFailed(summary + f": validation at steps {C} and {S} missing or not finite ({vals})")
    if _rel(val_resumed[S], val_whole[S]) > p.ddp_tolerance:
        raise StageFailed(summary + f": validation loss at step {S} {val_resumed[S]:.4f}, uninterrupted {val_whole[S]:.4f}")
    summary += f"; validation loss at step {S} {val_resumed[S]:.4f} (uninterrupted {val_whole[S]:.4f})"
    return f, summary


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3%}"


def _tail(text: str) -> str:
    lines = [x for x in text.splitlines() if x.strip()]
    err = [x for x in lines if "error" in x.lower()]
    return (err or lines or ["no output"])[-1][:300]
