"""A trainer refusal leaves nothing behind: everything that can refuse (the flags, the shards, the
model's shape, --init-from's weights, the validation data) is checked before the run directory,
its TensorBoard events or any file in it is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertprep.trainer.run import main
from bertprep.trainer.synthetic import write_synthetic_shards

SMALL = ["--model", "tiny", "--hidden", "32", "--heads", "2", "--ffn", "64", "--batch-size", "8",
         "--val-interval", "0", "--warmup-steps", "1", "--quiet"]  # TensorBoard on: its writer must wait too


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("refusals")
    short = write_synthetic_shards(root / "s", rows=[64], max_len=32)
    long = write_synthetic_shards(root / "l", rows=[64], max_len=48)
    run = root / "phase1"
    assert main(["--shards", *map(str, short), "--out", str(run), "--max-position", "32", "--max-steps", "2",
                 *SMALL]) == 0
    return {"short": [str(p) for p in short], "long": [str(p) for p in long], "phase1": str(run)}


CASES = {
    "a shape the model refuses": lambda d: ["--shards", *d["short"], "--hidden", "100", "--heads", "3"],
    "positions shorter than the shards": lambda d: ["--shards", *d["short"], "--max-position", "16"],
    "--init-from a missing run": lambda d: ["--shards", *d["short"], "--init-from", d["phase1"] + "-missing"],
    "--init-from a model too short for the shards": lambda d: ["--shards", *d["long"], "--init-from", d["phase1"]],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_refused_run_leaves_no_files(data, tmp_path, capsys, case):
    out = tmp_path / "out"
    assert main([*SMALL, "--out", str(out), "--max-steps", "4", *CASES[case](data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert not out.exists(), sorted(str(p.relative_to(out)) for p in out.rglob("*"))


def test_a_refusal_in_an_existing_directory_adds_nothing(data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    assert main([*SMALL, "--shards", *data["short"], "--hidden", "100", "--heads", "3", "--out", str(out)]) == 2
    assert [p.name for p in Path(out).iterdir()] == ["notes.txt"]
