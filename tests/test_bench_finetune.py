"""`python -m bench.finetune`: bad --run, --seeds and DATA are refused (exit 2) before any fine-tune
runs, the command each fine-tune amounts to is `bertprep finetune` with the flags that differ from its
defaults, and the table puts pretraining's gain in points (pretrained mean less scratch mean) on the
pretrained row, with the seeds' sample standard deviation."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import finetune as bench_finetune


@pytest.fixture
def data(tmp_path) -> Path:
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.jsonl").write_text('{"sentence": "a b", "label": 0}\n')
    (tmp_path / "run").mkdir()
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["--run", "bert"], "expected NAME=RUN"),
    (["--run", "a/b=run"], "expected NAME=RUN"),
    (["--run", "a=run", "--run", "a=run"], "a name is given twice"),
    (["--run", "a=missing"], "missing: no such pretraining run"),
    (["--run", "a=run", "--seeds", "1,x"], "comma-separated seeds"),
    (["--run", "a=run", "--seeds", "2,2"], "distinct"),
    (["--run", "a=run", "--epochs", "0"], "--epochs must be at least 1"),
])
def test_bad_arguments_exit_2_with_the_reason(data, monkeypatch, capsys, args, message):
    monkeypatch.chdir(data)
    with pytest.raises(SystemExit) as e:
        bench_finetune.parse_args([str(data), *args])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_missing_data_names_the_files_and_the_script(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    with pytest.raises(SystemExit) as e:
        bench_finetune.parse_args([str(tmp_path / "none"), "--run", f"a={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "none/train.jsonl" in err and "bench/get_fortunes.sh" in err


def test_defaults_and_the_printed_command(data):
    from bertprep.finetune.tune import FinetuneConfig

    a = bench_finetune.parse_args([str(data), "--run", f"bert={data / 'run'}", "--run", f"modern={data / 'run'}"])
    assert [n for n, _ in a.run] == ["bert", "modern"] and a.seeds == (1, 2, 3) and (a.epochs, a.lr) == (4, 1e-4)
    assert a.pooling == "cls"
    cfg = FinetuneConfig(checkpoint="r", train="t.jsonl", val="v.jsonl", out="o", lr=1e-4, seeds=(1, 2),
                         from_scratch=True)
    assert bench_finetune.command_line(cfg) == ("bertprep finetune --checkpoint r --train t.jsonl --val v.jsonl "
                                                "--out o --lr 0.0001 --seeds 1,2 --from-scratch")
    mean = FinetuneConfig(checkpoint="r", train="t.jsonl", val="v.jsonl", out="o", pooling="mean")
    assert bench_finetune.command_line(mean) == ("bertprep finetune --checkpoint r --train t.jsonl --val v.jsonl "
                                                 "--out o --pooling mean")


def test_table_has_the_gain_on_the_pretrained_row():
    def side(values):
        seeds = [{"seed": i, "epoch": 1, "val_acc": v, "test_acc": v} for i, v in enumerate(values)]
        return {"test_acc": bench_finetune.accuracy_spread(seeds), "wall_s": 1.0}

    results = {"bert": {"pretrained": side([0.60, 0.62, 0.64]), "scratch": side([0.50, 0.50, 0.50])}}
    text, gains = bench_finetune.report(results, (1, 2, 3))
    assert gains["bert"] == pytest.approx(12.0)
    pre, scratch = text.splitlines()[2:]
    assert "62.0 ± 2.0" in pre and "60.0 / 62.0 / 64.0" in pre and "+12.0" in pre
    assert "50.0 ± 0.0" in scratch and scratch.split()[-3] == "-"
