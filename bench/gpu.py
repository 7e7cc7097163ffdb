"""GPU acceptance in one command: everything CUDA-specific checked and measured, each stage time-boxed.

    make gpu-check                               # = python -m bench.gpu, on a CUDA machine
    python -m bench.gpu --out gpu-check          # gpu-check.json, gpu-check.md, logs/ and work/ there
    python -m bench.gpu --dry-run                # the same stages on CPU, tiny shapes (what the tests run)
    python -m bench.gpu --only env,step-eager --timeout step-eager=60

Stages, in order (docs/gpu.md says what each figure means): env (torch, devices, peak FLOP/s),
cuda-tests (the CUDA-marked tests), step-eager and step-compile (the real trainer, `trainer/run.py`,
at BERT-base shape, seq 128, bf16, on synthetic shards: tokens/s, step time, MFU, data wait),
hf-eager and hf-compile (HF `BertForMaskedLM`, SDPA, same shape, batch, precision and optimizer),
ddp-resume (torchrun on every visible GPU, SIGKILLed after a checkpoint, resumed, losses compared
with an uninterrupted run's). Every stage runs in child processes with a deadline: a hung stage is
killed (its whole process tree), reported as timed out, and the next stage runs. The trainer is
driven through its command line only, so this check runs exactly what users run.
Exit status: 0 when every stage passed, 1 otherwise (a missed target is shown, not an error).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

from bench import gpu_ddp, gpu_report
from bench.gpu_run import ROOT, Context, StageFailed, StageTimeout

# dense bf16 tensor-core peak per GPU, TFLOP/s (vendor data sheets); first matching name wins;
# None: no trustworthy figure (the A10G is a cloud variant of the A10), the measured matmul is used
PEAK_BF16_TFLOPS = (("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("H200", 989), ("GH200", 989),
                    ("B200", 2250), ("A100", 312), ("L40S", 362), ("L40", 181), ("A10G", None), ("A10", 125), ("L4", 121))


@dataclass(frozen=True, kw_only=True)
class Plan:
    """The shapes and step counts of a check: GPU (BERT-base) or the CPU dry run (tiny)."""
    device: str                          # the trainer's --device
    shape: tuple[int, int, int, int]     # layers, hidden, heads, ffn
    vocab: int
    seq: int
    batches: tuple[int, ...]             # tried largest first; the first that fits is used
    shard_rows: tuple[int, ...]          # examples per synthetic shard file
    val_rows: int                        # validation examples (validated in the ddp-resume stage)
    steps: int                           # trainer steps per throughput run
    log_interval: int                    # one metrics window per this many steps
    skip_windows: int                    # windows left out as warm-up (compilation, autotuning)
    hf_steps: int
    hf_warmup: int
    compile: bool                        # run the --compile stages (not on the CPU dry run)
    ddp_shape: tuple[int, int, int, int]
    ddp_batch: int
    ddp_steps: int
    ddp_ckpt: int                        # the checkpoint the run is killed after
    ddp_lr: float
    ddp_procs: int | None                # None: every visible GPU
    ddp_tolerance: float                 # max |resumed - uninterrupted| / uninterrupted loss, per step
    budget_s: float                      # all stages together
    timeouts: tuple[tuple[str, float], ...]


GPU_PLAN = Plan(device="cuda", shape=(12, 768, 12, 3072), vocab=30522, seq=128, batches=(256, 128, 64, 32),
                shard_rows=(8192,) * 4, val_rows=1024, steps=60, log_interval=10, skip_windows=2, hf_steps=30, hf_warmup=10,
                compile=True, ddp_shape=(4, 512, 8, 2048), ddp_batch=32, ddp_steps=50, ddp_ckpt=25, ddp_lr=5e-4,
                ddp_procs=None, ddp_tolerance=0.01, budget_s=450,
                timeouts=(("env", 90), ("cuda-tests", 150), ("step-eager", 150), ("hf-eager", 120),
                          ("step-compile", 180), ("ddp-resume", 180), ("hf-compile", 150)))
DRY_PLAN = Plan(device="cpu", shape=(2, 32, 2, 64), vocab=1000, seq=32, batches=(16, 8), shard_rows=(512, 512), val_rows=64,
                steps=12, log_interval=3, skip_windows=1, hf_steps=4, hf_warmup=1, compile=False,
                ddp_shape=(2, 32, 2, 64), ddp_batch=8, ddp_steps=12, ddp_ckpt=6, ddp_lr=3e-3, ddp_procs=2,
                ddp_tolerance=0.0, budget_s=300,  # gloo on CPU is deterministic: the resumed losses are exact
                timeouts=(("env", 60), ("cuda-tests", 90), ("step-eager", 60), ("hf-eager", 60),
                          ("step-compile", 60), ("ddp-resume", 120), ("hf-compile", 60)))


# --- stages ---------------------------------------------------------------------------------------
def stage_env(ctx: Context) -> tuple[dict, str]:
    rc, text = ctx.run([sys.executable, "-m", "bench.gpu_worker", "probe"], "env")
    if rc != 0:
        raise StageFailed(f"the probe exited {rc}: {_last_line(text)}")
    f = _last_json(text)
    name = (f["devices"] or [""])[0]
    table = next((v for k, v in PEAK_BF16_TFLOPS if k in name), None)
    f["peak_tflops"], f["peak_source"] = (table, "table") if table else (f.get("bf16_matmul_tflops"), "measured matmul")
    where = f"{f['device_count']}x {name}" if name else "no CUDA device"
    torch_note = f"torch {f['torch']}" + (f" (CUDA {f['torch_cuda']}{', outside the venv' if f['torch_from_system'] else ''})"
                                          if f["torch_cuda"] else " (CPU build)")
    summary = f"{where}; {torch_note}; transformers {f['transformers'] or 'missing'}"
    if f["peak_tflops"]:
        summary += f"; peak {f['peak_tflops']:.0f} TFLOP/s bf16 ({f['peak_source']})"
    if f.get("bf16_matmul_tflops"):
        summary += f", 8k matmul {f['bf16_matmul_tflops']:.0f}"
    if not f["transformers"]:
        raise StageFailed(summary + ": `make install` installs transformers (the dev extra)", f)
    if not ctx.dry_run and not f["cuda_available"]:
        ctx.abort = "no CUDA device visible (run `python -m bench.gpu --dry-run` on CPU)"
        raise StageFailed(summary + ": " + ctx.abort, f)
    return f, summary


def cuda_test_files() -> list[Path]:
    """tests/test_trainer_cuda.py and every test file that skips itself without CUDA."""
    marked = re.compile(r"skipif\(\s*not\s+torch\.cuda\.is_available\(\)")
    files = {ROOT / "tests" / "test_trainer_cuda.py"}
    files |= {p for p in (ROOT / "tests").rglob("test_*.py") if marked.search(p.read_text(errors="replace"))}
    return sorted(p for p in files if p.exists())


def stage_cuda_tests(ctx: Context) -> tuple[dict, str]:
    files = cuda_test_files()
    xml = ctx.logs / "cuda-tests.xml"
    xml.unlink(missing_ok=True)  # a previous check's
    rc, text = ctx.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                        *[p.relative_to(ROOT) for p in files]], "cuda-tests")
    if not xml.exists():
        raise StageFailed(f"pytest exited {rc} without a report: {_last_line(text)}")
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in ET.parse(xml).getroot().iter("testsuite"):
        for k in counts:
            counts[k] += int(suite.get(k, 0))
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    f = {"files": [str(p.relative_to(ROOT)) for p in files], "passed": passed, "failed": counts["failures"],
         "errors": counts["errors"], "skipped": counts["skipped"], "exit": rc}
    summary = f"{passed} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped " \
              f"({', '.join(f['files'])})"
    if counts["failures"] or counts["errors"] or rc not in (0, 5):
        raise StageFailed(summary)
    if not ctx.dry_run and (counts["skipped"] or not passed):
        raise StageFailed(summary + ": on a CUDA machine none may skip")
    return f, summary


def shape_flags(shape) -> list[str]:
    return [x for k, v in zip(("--layers", "--hidden", "--heads", "--ffn"), shape) for x in (k, str(v))]


def step_flops(plan: Plan, batch: int, predictions: int, full_logits: bool) -> float:
    """Matmul FLOPs of one step from trainer/model.py's count: ours computes the last layer and the
    MLM head at the 1 + P rows it reads; HF at all T positions."""
    from bertprep.trainer.model import flops_per_step

    layers, hidden, heads, ffn = plan.shape
    shape = SimpleNamespace(layers=layers, hidden=hidden, heads=heads, ffn=ffn, vocab_size=plan.vocab, nsp=False)
    if full_logits:
        return flops_per_step(shape, batch, plan.seq, plan.seq)
    return flops_per_step(shape, batch, plan.seq, predictions, last_layer_rows=1 + predictions)


def _predictions(ctx: Context) -> int:
    from bertprep.shards.reader import open_shards
    return int(open_shards(ctx.shards()[:1])[0].meta["max_predictions"])


def _mfu(ctx: Context, flops: float, step_s: float) -> float | None:
    peak = ctx.found.get("env", {}).get("peak_tflops")
    return flops / step_s / (peak * 1e12) if peak and not ctx.dry_run else None


def _trainer(ctx: Context, batch: int, compiled: bool, name: str) -> tuple[int, str, Path]:
    p = ctx.plan
    out = ctx.work / "runs" / f"{name}-b{batch}"
    cmd = [sys.executable, ROOT / "trainer" / "run.py", "--shards", *ctx.shards(), "--out", out, *shape_flags(p.shape),
           "--batch-size", str(batch), "--max-steps", str(p.steps), "--warmup-steps", str(p.steps // 4),
           "--log-interval", str(p.log_interval), "--val-interval", "0", "--ckpt-interval", str(p.steps),
           "--max-checkpoints", "1", "--device", p.device, "--precision", "bf16" if p.device == "cuda" else "auto",
           "--seed", "1", "--no-tensorboard", "--quiet", "--compile" if compiled else "--no-compile"]
    rc, text = ctx.run(cmd, f"{name}-b{batch}")
    return rc, text, out


def _out_of_memory(text: str) -> bool:
    return "OutOfMemoryError" in text or "CUDA out of memory" in text or "error: out of memory" in text


def _fit(batches, attempt) -> tuple[int, object, list[int]]:
    """The largest batch of `batches` (largest first) for which `attempt(batch)` is not out of memory."""
    tried = []
    for b in batches:
        tried.append(b)
        result = attempt(b)
        if result is not None:
            return b, result, tried
    raise StageFailed(f"out of memory at every batch size tried ({', '.join(map(str, tried))})")


def stage_step(ctx: Context, compiled: bool) -> tuple[dict, str]:
    name = "step-compile" if compiled else "step-eager"
    p = ctx.plan
    chosen = ctx.found.get("step-eager", {}).get("batch")
    candidates = [b for b in p.batches if chosen is None or b <= chosen]

    def attempt(b):
        rc, text, out = _trainer(ctx, b, compiled, name)
        if rc == 0:
            return out
        if _out_of_memory(text):
            return None
        raise StageFailed(f"trainer exited {rc} at batch {b}: {_last_line(text)}")

    batch, out, tried = _fit(candidates, attempt)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    for ck in (out / "checkpoints").glob("step_*.pt"):  # scratch (1.3 GB at BERT-base): only the metrics matter
        ck.unlink()
    windows = [r for r in recs if "samples_per_s" in r]
    steady = windows[p.skip_windows:] or windows[-1:]
    if not steady:
        raise StageFailed(f"no training records in {out / 'metrics.jsonl'}")
    # token slots (batch x seq, what the HF side computes on), not the trainer's real tokens/s
    tps = sorted(r["samples_per_s"] for r in steady)[len(steady) // 2] * p.seq  # median window
    step_s = batch * p.seq / tps
    window_s = [p.log_interval * batch / r["samples_per_s"] for r in steady]  # one rank, no accumulation
    wait = sum(r["data_wait_s"] for r in steady) / sum(window_s)
    P = _predictions(ctx)
    flops = step_flops(p, batch, P, full_logits=False)
    f = {"batch": batch, "batches_tried": tried, "seq": p.seq, "predictions": P, "tokens_per_s": tps, "step_s": step_s,
         "flops_per_step": flops, "mfu": _mfu(ctx, flops, step_s), "data_wait_frac": wait,
         "windows": len(steady), "steps": p.steps, "final_loss": windows[-1]["loss"], "compile": compiled}
    summary = _speed_line(f) + f", data wait {wait:.2%}"
    return f, summary


def stage_hf(ctx: Context, compiled: bool) -> tuple[dict, str]:
    p = ctx.plan
    ours = ctx.found.get("step-compile" if compiled else "step-eager") or {}  # the same mode, for the ratio
    start = ours.get("batch") or ctx.found.get("step-eager", {}).get("batch") or p.batches[0]
    name = "hf-compile" if compiled else "hf-eager"
    layers, hidden, heads, ffn = p.shape

    def attempt(b):
        cmd = [sys.executable, "-m", "bench.gpu_worker", "hf", "--shards", *ctx.shards(), "--batch", str(b),
               "--steps", str(p.hf_steps), "--warmup", str(p.hf_warmup), "--device", p.device,
               "--layers", str(layers), "--hidden", str(hidden), "--heads", str(heads), "--ffn", str(ffn),
               "--vocab", str(p.vocab)] + (["--compile"] if compiled else [])
        rc, text = ctx.run(cmd, f"{name}-b{b}")
        if rc == 0:
            return _last_json(text)
        if _out_of_memory(text):
            return None
        raise StageFailed(f"HF step exited {rc} at batch {b}: {_last_line(text)}")

    batch, f, tried = _fit([b for b in p.batches if b <= start], attempt)
    f["batches_tried"] = tried
    f["flops_per_step"] = step_flops(p, batch, p.seq, full_logits=True)
    f["mfu"] = _mfu(ctx, f["flops_per_step"], f["step_s"])
    summary = _speed_line(f)
    if ours.get("tokens_per_s") and ours.get("batch") == batch:
        f["bertprep_speedup"] = ours["tokens_per_s"] / f["tokens_per_s"]
        summary += f"; bertprep {f['bertprep_speedup']:.2f}x"
    elif ours:
        summary += f" (bertprep ran at batch {ours['batch']}: no ratio at unequal batches)"
    else:
        summary += " (no bertprep figure in this mode to compare with)"
    return f, summary


def _speed_line(f: dict) -> str:
    mfu = f" MFU {f['mfu']:.1%}," if f.get("mfu") is not None else ""
    return f"batch {f['batch']}: {f['tokens_per_s']:,.0f} tokens/s, {f['step_s'] * 1e3:.1f} ms/step,{mfu}".rstrip(",")


def _last_json(text: str) -> dict:
    """The worker's result: its last stdout line that is a JSON object (warnings may follow it)."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise StageFailed(f"no result line in the worker's output: {_last_line(text)}")


def _last_line(text: str) -> str:
    lines = [x for x in text.splitlines() if x.strip()]
    err = [x for x in lines if x.startswith("error:") or "Error" in x]
    return (err or lines or ["no output"])[-1][:300]


STAGES = (  # name, title, function; the order they run in
    ("env", "environment", stage_env),
    ("cuda-tests", "CUDA tests", stage_cuda_tests),
    ("step-eager", "bertprep train step", lambda ctx: stage_step(ctx, compiled=False)),
    ("hf-eager", "HF BertForMaskedLM step", lambda ctx: stage_hf(ctx, compiled=False)),
    ("step-compile", "bertprep train step, --compile", lambda ctx: stage_step(ctx, compiled=True)),
    ("ddp-resume", "torchrun DDP, kill, resume", lambda ctx: gpu_ddp.stage_ddp(ctx, _ddp_procs(ctx))),
    ("hf-compile", "HF BertForMaskedLM step, torch.compile", lambda ctx: stage_hf(ctx, compiled=True)),
)


def _ddp_procs(ctx: Context) -> int:
    return ctx.plan.ddp_procs or max(1, ctx.found.get("env", {}).get("device_count", 1))


def _injected(kind: str):
    """--inject STAGE=fail|hang: the stage's body replaced by a child that fails or never ends
    (for the test that a failing or hung stage is reported as such and the next one still runs)."""
    code = "import sys; sys.exit(7)" if kind == "fail" else "import time; time.sleep(3600)"

    def stage(ctx: Context) -> tuple[dict, str]:
        rc, _ = ctx.run([sys.executable, "-c", code], "injected")
        raise StageFailed(f"injected failure (exit {rc})")
    return stage


def run_stages(ctx: Context, only: set[str] | None, timeouts: dict[str, float], inject: dict[str, str]) -> list[dict]:
    t_end = time.monotonic() + ctx.plan.budget_s
    results = []
    for i, (name, title, fn) in enumerate(STAGES, 1):
        r = {"name": name, "title": title, "status": "skip", "seconds": 0.0, "figures": {}, "summary": ""}
        results.append(r)
        left = t_end - time.monotonic()
        starved = f"not started: the time budget ({ctx.plan.budget_s:.0f} s) is spent"
        why = ("not selected by --only" if only is not None and name not in only else
               ctx.abort if ctx.abort else
               "torch.compile is not exercised in --dry-run (minutes of CPU compilation)"
               if "compile" in name and not ctx.plan.compile and name not in inject else
               starved if left < 10 else "")
        if why:
            r["summary"] = why
            if why == starved:
                r["status"] = "timeout"  # starved by the stages before it: not a pass
            print(f"[{i}/{len(STAGES)}] {name}: {'timed out' if why == starved else 'skipped'}: {why}", flush=True)
            continue
        limit = min(timeouts[name], left)
        print(f"[{i}/{len(STAGES)}] {name}: {title} (at most {limit:.0f} s) ...", flush=True)
        t0 = time.monotonic()
        ctx.deadline = t0 + limit
        try:
            r["figures"], r["summary"] = (_injected(inject[name]) if name in inject else fn)(ctx)
            r["status"] = "pass"
            ctx.found[name] = r["figures"]
        except StageTimeout as e:
            r["status"], r["error"] = "timeout", f"timed out after {limit:.0f} s: {e}"
        except StageFailed as e:
            r["status"], r["error"], r["figures"] = "fail", str(e), e.figures
        except Exception as e:  # a bug in this script or an unreadable result: report it, go on
            r["status"], r["error"] = "fail", f"{e.__class__.__name__}: {e}"
        r["seconds"] = time.monotonic() - t0
        print(f"    {r['status']} in {r['seconds']:.0f} s: {r['summary'] or r.get('error', '')}", flush=True)
    return results


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


NAMES = [n for n, _, _ in STAGES]


def _pairs(values: list[str], flag: str, convert) -> dict:
    """--flag STAGE=VALUE, repeated -> {stage: value}; ValueError names the flag."""
    out = {}
    for v in values:
        name, _, value = v.partition("=")
        if name not in NAMES or not value:
            raise ValueError(f"{flag} {v!r}: expected STAGE=VALUE with STAGE one of {', '.join(NAMES)}")
        try:
            out[name] = convert(value)
        except ValueError:
            raise ValueError(f"{flag} {v!r}: bad value {value!r}") from None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu-check", help="folder for gpu-check.json, gpu-check.md, logs/, work/")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, a few steps, 2 gloo ranks")
    ap.add_argument("--only", help="comma-separated stages to run (the others are reported as skipped)")
    ap.add_argument("--timeout", action="append", default=[], metavar="STAGE=SECONDS", help="a stage's time box")
    ap.add_argument("--budget", type=float, help="seconds for all stages together (default: the plan's)")
    ap.add_argument("--inject", action="append", default=[], metavar="STAGE=fail|hang",
                    help="testing: replace a stage by a child that fails or hangs")
    args = ap.parse_args(argv)
    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    if args.budget:
        plan = Plan(**(asdict(plan) | {"budget_s": args.budget}))
    try:
        timeouts = dict(plan.timeouts) | _pairs(args.timeout, "--timeout", float)
        inject = _pairs(args.inject, "--inject", str)
        if any(v not in ("fail", "hang") for v in inject.values()):
            raise ValueError("--inject takes STAGE=fail or STAGE=hang")
        only = {x.strip() for x in args.only.split(",")} if args.only else None
        if only is not None and only - set(NAMES):
            raise ValueError(f"--only: unknown stage(s) {', '.join(sorted(only - set(NAMES)))}; "
                             f"the stages are {', '.join(NAMES)}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    ctx = Context(plan, out, args.dry_run)
    shutil.rmtree(ctx.work, ignore_errors=True)  # this script's own scratch: runs and shards of a previous check
    ctx.logs.mkdir(parents=True, exist_ok=True)
    ctx.work.mkdir(parents=True, exist_ok=True)
    print(f"bench.gpu{' --dry-run' if args.dry_run else ''}: {len(STAGES)} stages, at most {plan.budget_s:.0f} s; "
          f"logs in {ctx.logs}", flush=True)
    t0 = time.monotonic()
    stages = run_stages(ctx, only, timeouts, inject)
    report = gpu_report.write(out, stages, dry_run=args.dry_run, wall_s=time.monotonic() - t0, commit=_commit(),
                              plan=asdict(plan))
    print()
    print(gpu_report.markdown(report), end="")
    print(f"\nwrote {out / 'gpu-check.json'} and {out / 'gpu-check.md'}")
    return 0 if all(s["status"] in ("pass", "skip") for s in stages) else 1


if __name__ == "__main__":
    sys.exit(main())
