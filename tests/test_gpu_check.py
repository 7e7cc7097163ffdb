"""`python -m bench.gpu`, the GPU acceptance check, kept from rotting by its CPU dry run: every stage
is reported in gpu-check.json and in the Markdown table, a failing or hung stage is reported as
failed or timed out (its processes killed) and the stages after it still run, and `make install`
keeps a CUDA torch the system python already has instead of installing the CPU wheel over it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu, gpu_report
from bench.gpu_run import StageFailed

ROOT = Path(__file__).resolve().parent.parent
STAGES = [name for name, _, _ in gpu.STAGES]


def check(out: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "bench.gpu", "--dry-run", "--out", str(out), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu-check")
    return check(out), out


def test_dry_run_reports_every_stage(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["dry_run"] and [s["name"] for s in report["stages"]] == STAGES
    status = {s["name"]: s["status"] for s in report["stages"]}
    assert status == {n: "skip" if "compile" in n else "pass" for n in STAGES}
    figures = {s["name"]: s["figures"] for s in report["stages"]}
    assert figures["step-eager"]["tokens_per_s"] > 0 and 0 <= figures["step-eager"]["data_wait_frac"] < 1
    assert figures["hf-eager"]["batch"] == figures["step-eager"]["batch"] == 16  # the largest that fits
    assert figures["hf-eager"]["bertprep_speedup"] > 0
    ddp = figures["ddp-resume"]
    assert ddp["ranks"] == 2 and ddp["resume_event"] and ddp["max_rel_diff_after_resume"] == 0.0  # gloo: exact
    assert set(ddp["val_loss_whole"]) == {"6", "12"} and ddp["val_loss_resumed"] == ddp["val_loss_whole"]
    assert set(report["targets"]) == {"mfu", "speedup", "data_wait", "ddp_resume"}
    assert all(t["result"] == "n/a" for t in report["targets"].values())  # CPU figures judge no GPU target
    table = (out / "gpu-check.md").read_text()
    assert "| stage | figure | result |" in table
    for s in report["stages"]:
        assert f"| {s['title']} |" in table
    assert "[6/7] ddp-resume" in proc.stdout  # stages are printed as they go


def test_a_failing_and_a_hung_stage_are_reported_and_the_next_runs(tmp_path):
    proc = check(tmp_path, "--only", "env,cuda-tests,step-eager", "--inject", "env=fail",
                 "--inject", "cuda-tests=hang", "--timeout", "cuda-tests=2", "--inject", "step-eager=fail")
    assert proc.returncode == 1
    stages = {s["name"]: s for s in json.loads((tmp_path / "gpu-check.json").read_text())["stages"]}
    assert stages["env"]["status"] == "fail" and "injected failure (exit 7)" in stages["env"]["error"]
    assert stages["cuda-tests"]["status"] == "timeout" and stages["cuda-tests"]["seconds"] < 30
    assert stages["step-eager"]["status"] == "fail"  # ran after the hung one
    assert stages["hf-eager"]["status"] == "skip" and "--only" in stages["hf-eager"]["summary"]
    table = (tmp_path / "gpu-check.md").read_text()
    assert "**TIMED OUT**" in table and "**FAIL**" in table


def test_the_largest_batch_that_fits_is_chosen():
    fits = {64, 32}
    b, result, tried = gpu._fit((256, 128, 64, 32), lambda b: f"ran {b}" if b in fits else None)
    assert (b, result, tried) == (64, "ran 64", [256, 128, 64])
    with pytest.raises(StageFailed, match="out of memory at every batch size tried"):
        gpu._fit((256, 128), lambda b: None)


def test_cuda_test_files_include_every_cuda_marked_file():
    assert ROOT / "tests" / "test_trainer_cuda.py" in gpu.cuda_test_files()


FAKE_PYTHON = r"""#!/bin/sh
# A stand-in python for the Makefile's install recipe: logs each call. FAKE_CUDA=1: it imports a CUDA
# torch; FAKE_VENV_CUDA=1: so does the venv made from it (0: it was a venv, whose packages are not seen).
echo "python $*" >> "$FAKE_LOG"
case "$0" in */venv/bin/python) cuda=$FAKE_VENV_CUDA ;; *) cuda=$FAKE_CUDA ;; esac
case "$*" in
  *"print(torch.__version__"*) echo "2.9.0 CUDA 12.8" ;;
  *torch.version.cuda*) [ "$cuda" = 1 ] || exit 1 ;;
  *getsitepackages*) echo /opt/cuda-env/site-packages ;;
  *purelib*) dir=$(dirname "$0")/../site-packages; mkdir -p "$dir"; echo "$dir" ;;
  "-m venv"*) for dir; do :; done; mkdir -p "$dir/bin" && cp "$0" "$dir/bin/python" ;;
esac
exit 0
"""


@pytest.mark.parametrize("cuda,venv_sees_it", [(True, True), (True, False), (False, False)])
def test_make_install_keeps_a_cuda_torch_and_installs_the_cpu_wheel_elsewhere(tmp_path, cuda, venv_sees_it):
    fake, log, venv = tmp_path / "python", tmp_path / "calls.log", tmp_path / "venv"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = dict(os.environ, FAKE_LOG=str(log), FAKE_CUDA=str(int(cuda)), FAKE_VENV_CUDA=str(int(venv_sees_it)))
    args = ["make", "-s", "-C", str(ROOT), "install", f"PYTHON={fake}", f"VENV={venv}"]
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    calls = log.read_text()
    pth = venv / "site-packages" / "bertprep-system-torch.pth"
    if cuda:
        assert "keeping" in first.stdout and "2.9.0 CUDA 12.8" in first.stdout
        assert f"-m venv --system-site-packages {venv}" in calls and "torch==" not in calls
        # a python that is itself a venv: its site-packages reach the new venv through a .pth file
        assert pth.exists() != venv_sees_it
        if not venv_sees_it:
            assert pth.read_text() == "/opt/cuda-env/site-packages\n"
    else:
        assert f"-m venv {venv}" in calls and "-m pip install -q torch==" in calls and not pth.exists()
    assert "-m pip install -q -e .[dev,plot,cluster]" in calls
    second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)  # idempotent
    assert second.returncode == 0 and log.read_text() == calls


def test_targets_judge_gpu_figures():
    def stage(name, status="pass", **figures):
        return {"name": name, "title": name, "status": status, "seconds": 1.0, "figures": figures, "summary": ""}
    stages = [stage("step-eager", batch=256, tokens_per_s=3e5, mfu=0.35, data_wait_frac=0.002),
              stage("step-compile", batch=256, tokens_per_s=4e5, mfu=0.45, data_wait_frac=0.02),
              stage("hf-eager", batch=256, tokens_per_s=2e5), stage("hf-compile", batch=128, tokens_per_s=9e5),
              stage("ddp-resume", status="timeout")]
    t = gpu_report.evaluate_targets(stages, dry_run=False)
    assert t["mfu"]["value"] == 0.45 and t["mfu"]["result"] == "pass"  # the better mode
    assert t["speedup"]["value"] == 2.0 and t["speedup"]["result"] == "pass"  # HF at another batch left out
    assert t["data_wait"]["value"] == 0.02 and t["data_wait"]["result"] == "fail"  # the worse mode
    assert t["ddp_resume"]["result"] == "fail"
    report = {"dry_run": False, "created": "2026-12-03T20:00:00+00:00", "commit": "abc", "wall_s": 400.0,
              "stages": stages, "targets": t}
    table = gpu_report.markdown(report)
    assert "| target: data wait < 1% of step time | 2.00% (worst) | **FAIL** |" in table
    assert "| ddp-resume |  | **TIMED OUT** (1 s) |" in table
