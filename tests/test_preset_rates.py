"""Each --model preset gets the learning rate and warm-up that suit it when no flag, --config file
or recipe sets them (config.PRESET_RATES, shown in --help and recorded in config.json), and the
trainer warns, once, when the warm-up cannot end within --max-steps or, by the step rate of the
first log window, within the --max-time budget (the loop's clock is faked: no timing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertprep.trainer import loop
from bertprep.trainer.config import PRESET_RATES, PRESETS
from bertprep.trainer.run import build_parser, main, parse_config
from bertprep.trainer.synthetic import write_synthetic_shards
from conftest import FakeClock


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("syn")
    write_synthetic_shards(folder, rows=[200])
    write_synthetic_shards(folder, rows=[64], split="val")
    return folder


def args(shards: Path, out: Path, *extra: str) -> list[str]:
    return ["--shards", str(next(shards.glob("train_*.arrow"))), "--out", str(out), "--model", "tiny",
            "--hidden", "32", "--heads", "2", "--ffn", "64", "--batch-size", "8", "--log-interval", "5",
            "--val-interval", "0", "--val-batches", "1", "--val-examples", "0", "--ckpt-interval", "1000000",
            "--no-tensorboard", "--quiet", *extra]


def test_every_preset_has_rates_and_base_keeps_the_papers():
    assert set(PRESET_RATES) == set(PRESETS)
    assert PRESET_RATES["base"] == (1e-4, 10_000)
    for family in ([p for p in PRESETS if not p.startswith("modern-")], [p for p in PRESETS if p.startswith("modern-")]):
        lrs = [PRESET_RATES[p][0] for p in family]  # within a family, smaller models take larger rates
        assert len(lrs) >= 4 and lrs == sorted(lrs, reverse=True)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_preset_without_rates_gets_its_own(preset):
    cfg = parse_config(["--shards", "x.arrow", "--model", preset])
    assert (cfg.optim.lr, cfg.optim.warmup_steps) == PRESET_RATES[preset]


def test_given_rates_win_from_a_flag_a_config_or_a_recipe(tmp_path):
    base = ["--shards", "x.arrow", "--model", "tiny"]
    cfg = parse_config(base + ["--lr", "3e-3"])
    assert (cfg.optim.lr, cfg.optim.warmup_steps) == (3e-3, 100)  # the other one still the preset's
    toml = tmp_path / "run.toml"
    toml.write_text("warmup-steps = 7\n")
    cfg = parse_config(base + ["--config", str(toml)])
    assert (cfg.optim.lr, cfg.optim.warmup_steps) == (1e-3, 7)
    cfg = parse_config(base + ["--recipe", "bert-tiny"])  # the recipe sets bert-base's schedule
    assert (cfg.optim.lr, cfg.optim.warmup_steps) == (1e-4, 10_000)


def test_help_shows_the_table():
    text = " ".join(build_parser().format_help().split())
    assert "by --model: tiny 0.001, mini 0.0005" in text and "tiny 100, mini 300" in text


def test_a_warmup_past_max_steps_warns_once_and_the_resolved_rates_are_recorded(shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(args(shards, run, "--max-steps", "3")) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "--warmup-steps 100" in warnings[0] and "--max-steps 3" in warnings[0], err
    train = json.loads((run / "config.json").read_text())["train"]
    assert (train["lr"], train["warmup_steps"]) == (1e-3, 100)
    assert main(args(shards, tmp_path / "ok", "--max-steps", "3", "--warmup-steps", "2")) == 0
    assert "warning:" not in capsys.readouterr().err


@pytest.mark.parametrize("warmup,warns", [("100000", True), ("2", False)])
def test_a_warmup_past_the_time_budget_warns_at_the_first_log_window(shards, tmp_path, monkeypatch, capsys,
                                                                     warmup, warns):
    monkeypatch.setattr(loop, "time", FakeClock())
    assert main(args(shards, tmp_path / "run", "--max-time", "0.01", "--warmup-steps", warmup)) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    if warns:
        assert len(warnings) == 1 and "--max-time 0.01 min budget ends near step" in warnings[0], warnings
        assert "before the warm-up ends at step 100,000" in warnings[0]
    else:
        assert warnings == []
