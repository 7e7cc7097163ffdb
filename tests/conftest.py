"""Shared fixtures: the small real corpora in tests/data, and a token store made from one of them
once per session (a vocab trained on a 165 KB slice of the Python docs)."""

from __future__ import annotations

import os

# Tests train tiny models: one intra-op thread is as fast as two, and on a busy machine OpenMP's
# spinning threads make every step ten times slower. Set before anything imports torch; the
# torchrun and CLI subprocesses that tests start inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json
import shutil
from pathlib import Path

import pytest

from bertprep.cli import main

DATA = Path(__file__).parent / "data"
WIKI = DATA / "pydocs.wiki.tokens"
PLAIN = DATA / "shakespeare.txt"


def run_cli(args: list[str], capsys=None) -> int:
    """Run `bertprep ARGS` in-process; returns the exit code (0 when it returns normally)."""
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


TICK_S = 0.01              # what one reading of the fake clock advances it by


class FakeClock:
    """Stands in for the `time` module in trainer/loop.py: wall and CPU time advance by TICK_S per
    reading, and `pause(s)` moves them on as a slow validation would."""

    def __init__(self):
        self.now = 0.0

    def _tick(self) -> float:
        self.now += TICK_S
        return self.now

    perf_counter = process_time = _tick

    def pause(self, seconds: float) -> None:
        self.now += seconds



def one_line(capsys, args) -> str:
    """Run `bertprep ARGS` in-process expecting a refusal: exit 2 and a single `error:` line, returned."""
    code = run_cli(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, (args, code, err)
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def train_losses(run_dir: Path | str) -> dict[int, float]:
    """{step: training loss} of a run's metrics.jsonl, checking that no step is logged twice.

    A resumed run drops its records past the checkpoint it resumed from; a dict built straight from
    the file would merge the duplicates unseen, so a resume test comparing dicts could not fail."""
    recs = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if "loss" in r]
    assert steps == sorted(set(steps)), f"metrics.jsonl repeats or reorders steps: {steps}"
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


@pytest.fixture(scope="session")
def token_store(tmp_path_factory) -> Path:
    """A token store of tests/data/pydocs.wiki.tokens with a 2000-piece trained vocab."""
    out = tmp_path_factory.mktemp("tokens") / "tokens"
    code = run_cli(["tokenize", WIKI, "--out", out, "--vocab-size", "2000"])
    assert code == 0
    return out


@pytest.fixture
def token_store_copy(token_store, tmp_path) -> Path:
    """A private copy of the session token store, for tests that damage it."""
    dst = tmp_path / "tokens"
    shutil.copytree(token_store, dst)
    return dst


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """`make test` runs `pytest -n 2 --dist loadgroup`: a module's tests stay together on one worker
    (its module fixtures are built once), except tests/test_docs.py's, whose pages are spread over
    the workers (a page's blocks run in order, in its own directory, on one worker)."""
    for item in items:
        group = item.nodeid.split("::")[0]
        if getattr(item, "originalname", "") == "test_shown_commands_run":
            group += "::" + item.callspec.id.rsplit(":", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))
