"""What `python -m bench.gpu` writes: `gpu-check.json` (every stage's status and figures, the
environment, the targets) and `gpu-check.md` (one table, stage | figure | result, to paste into
bench/README.md). The targets are the issue's, for an H100/H200-class GPU; a dry run evaluates them
too but marks them `n/a`, since CPU figures say nothing about them."""

from __future__ import annotations

import datetime

from bertprep.shards.atomic import atomic_write, write_json

FORMAT_VERSION = 1
TARGETS = {  # name -> (threshold, what it means)
    "mfu": (0.40, "best bertprep MFU >= 40% (stretch 50%)"),
    "speedup": (1.5, "bertprep >= 1.5x HF BertForMaskedLM tokens/s, same shape and batch"),
    "data_wait": (0.01, "data wait < 1% of step time"),
    "ddp_resume": (None, "DDP + resume check passing"),
}
PASSED = {"pass": "pass", "fail": "**FAIL**", "timeout": "**TIMED OUT**", "skip": "skipped"}


def evaluate_targets(stages: list[dict], dry_run: bool) -> dict[str, dict]:
    """Each target's figure and verdict (pass/fail, or n/a when its stages did not produce it)."""
    fig = {s["name"]: s.get("figures", {}) for s in stages if s["status"] == "pass"}
    ours = [fig[n] for n in ("step-eager", "step-compile") if n in fig]
    out = {}
    mfus = [f["mfu"] for f in ours if f.get("mfu") is not None]
    out["mfu"] = _verdict(max(mfus) if mfus else None, lambda v: v >= TARGETS["mfu"][0], "{:.1%}")
    batch = fig.get("step-eager", {}).get("batch")  # HF may have run smaller (out of memory): not comparable
    best = {side: max((fig[n]["tokens_per_s"] for n in names if n in fig and fig[n].get("batch") == batch),
                      default=None)
            for side, names in (("ours", ("step-eager", "step-compile")), ("hf", ("hf-eager", "hf-compile")))}
    ratio = best["ours"] / best["hf"] if best["ours"] and best["hf"] else None
    out["speedup"] = _verdict(ratio, lambda v: v >= TARGETS["speedup"][0], "{:.2f}x (best of each side)")
    waits = [f["data_wait_frac"] for f in ours if f.get("data_wait_frac") is not None]
    out["data_wait"] = _verdict(max(waits) if waits else None, lambda v: v < TARGETS["data_wait"][0], "{:.2%} (worst)")
    ddp = next((s["status"] for s in stages if s["name"] == "ddp-resume"), None)
    out["ddp_resume"] = {"value": ddp, "text": ddp or "not run",
                         "result": "pass" if ddp == "pass" else "fail" if ddp in ("fail", "timeout") else "n/a"}
    for name, t in out.items():
        t["target"] = TARGETS[name][1]
        if dry_run and t["result"] != "n/a":
            t["result"] = "n/a"  # CPU figures of a tiny model: the targets are for the GPU
    return out


def _verdict(value, ok, fmt: str) -> dict:
    if value is None:
        return {"value": None, "text": "not measured", "result": "n/a"}
    return {"value": value, "text": fmt.format(value), "result": "pass" if ok(value) else "fail"}


def markdown(report: dict) -> str:
    env = next((s.get("figures", {}) for s in report["stages"] if s["name"] == "env"), {})
    head = (f"`python -m bench.gpu{' --dry-run' if report['dry_run'] else ''}` on "
            f"{', '.join(env.get('devices') or []) or 'CPU'} (torch {env.get('torch', '?')}, "
            f"CUDA {env.get('torch_cuda') or '-'}, transformers {env.get('transformers') or '-'}; "
            f"{report['created'][:16].replace('T', ' ')} UTC, commit {report.get('commit', '?')[:10]}, "
            f"{report['wall_s']:.0f} s in all)")
    lines = [head, "", "| stage | figure | result |", "| --- | --- | --- |"]
    for s in report["stages"]:
        text = s.get("summary") or s.get("error") or ""
        lines.append(f"| {s['title']} | {_cell(text)} | {PASSED[s['status']]} ({s['seconds']:.0f} s) |")
    for name, t in report["targets"].items():
        result = {"pass": "pass", "fail": "**FAIL**", "n/a": "n/a"}[t["result"]]
        lines.append(f"| target: {t['target']} | {_cell(t['text'])} | {result} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write(out_dir, stages: list[dict], *, dry_run: bool, wall_s: float, commit: str, plan: dict) -> dict:
    report = {"format": "bertprep-gpu-check", "version": FORMAT_VERSION, "dry_run": dry_run,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": commit, "wall_s": wall_s, "plan": plan, "stages": stages,
              "targets": evaluate_targets(stages, dry_run)}
    write_json(out_dir / "gpu-check.json", report)
    with atomic_write(out_dir / "gpu-check.md", "w") as f:
        f.write(markdown(report))
    return report
