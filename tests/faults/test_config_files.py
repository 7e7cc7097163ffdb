"""Settings files and contradicting flags: a `trainer/run.py --config` file or a recipe holding a
value of the wrong type (a float or a boolean where an integer is meant, text for a number), a key
in both spellings, or bytes that are not text is refused with one line naming the key or the file;
`finetune --seed` with `--seeds`, and an empty `--seeds`, are refused; a label past the class
limit is refused before any head is built."""

from __future__ import annotations

import pytest

from bertprep.finetune.labelled import MAX_LABEL, read_labelled
from bertprep.shards.errors import ConfigError, InputError
from bertprep.trainer import run as trainer_run
from bertprep.trainer.recipes import load_recipe
from conftest import one_line

BAD_CONFIGS = [
    ("max-steps = 1.5\n", "max-steps must be an integer, got 1.5"),
    ("max-steps = true\n", "max-steps must be an integer, got True"),
    ('lr = "fast"\n', "lr must be a number, got 'fast'"),
    ("compile = 1\n", "compile must be true or false, got 1"),
    ("max-steps = 10\nmax_steps = 20\n", "'max-steps' and 'max_steps' are the same setting"),
    ("lr = nan\n", "lr must be a finite number"),
    ("batch-size = 0\n", "batch-size must be in 1..65536, got 0"),
    ('model = "huge"\n', "model must be one of tiny"),
    ("shards = 3\n", "shards must be a list, got 3"),
    ("shards = [3]\n", "shards must be text, got 3"),
]


@pytest.mark.parametrize("text,why", BAD_CONFIGS, ids=[t.strip() for t, _ in BAD_CONFIGS])
def test_a_bad_config_value_is_one_line_naming_the_key(tmp_path, capsys, text, why):
    path = tmp_path / "run.toml"
    path.write_text(text)
    assert trainer_run.main(["--config", str(path), "--shards", "train.arrow"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --config {path}: ") and "\n" not in err and why in err, err


@pytest.mark.parametrize("data", [b"\xff\xfe\x00binary\x00", b"lr = 1e-3 # caf\xe9\n"], ids=["binary", "latin-1"])
def test_a_config_file_that_is_not_text_is_one_line_naming_it(tmp_path, capsys, data):
    path = tmp_path / "run.toml"
    path.write_bytes(data)
    assert trainer_run.main(["--config", str(path), "--shards", "train.arrow"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --config {path}: ") and "\n" not in err, err


def test_a_config_directory_is_one_line(tmp_path, capsys):
    assert trainer_run.main(["--config", str(tmp_path), "--shards", "train.arrow"]) == 2
    assert str(tmp_path) in capsys.readouterr().err


PHASE = "[[phase]]\nmax-len = 128\nmax-steps = 10\n"
BAD_RECIPES = [
    ("[train]\nbatch-size = 2.0\n" + PHASE, "[train]: batch-size must be an integer, got 2.0"),
    ("[train]\nlr = 1e-3\nlr = 2e-3\n" + PHASE, None),  # TOML itself refuses a key given twice
    ("[train]\nwarmup-steps = 5\nwarmup_steps = 6\n" + PHASE, "'warmup-steps' and 'warmup_steps' are the same"),
    ("[data]\nvocab-size = \"big\"\n" + PHASE, "[data] vocab-size must be an integer, got 'big'"),
    ("[data]\nnsp = 1\n" + PHASE, "[data] nsp must be true or false, got 1"),
    ("[[phase]]\nmax-len = 128\nmax-steps = true\n", "phase 1: max-steps must be an integer, got True"),
    ("[[phase]]\nmax-len = 128.0\nmax-steps = 10\n", "phase 1: max-len must be an integer, got 128.0"),
    ("[[phase]]\nmax-len = 128\nmax-steps = 10\nlr = inf\n", "phase 1: lr must be a finite number"),
]


@pytest.mark.parametrize("text,why", BAD_RECIPES, ids=range(len(BAD_RECIPES)))
def test_a_bad_recipe_value_is_refused_naming_the_key(tmp_path, text, why):
    path = tmp_path / "mine.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_recipe(str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    if why:
        assert why in str(e.value), str(e.value)


def test_a_recipe_file_that_is_not_text_is_refused(tmp_path, capsys):
    path = tmp_path / "mine.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert trainer_run.main(["--recipe", str(path), "--shards", "train.arrow"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(path) in err and "\n" not in err, err


@pytest.mark.parametrize("seed", ["0", "7"])  # 0 is --seed's default: given on the command line, still refused
def test_seed_with_seeds_is_refused(capsys, seed):
    err = one_line(capsys, ["finetune", "--train", "t.tsv", "--val", "v.tsv", "--seed", seed, "--seeds", "1,2"])
    assert "--seed" in err and "--seeds" in err


def test_an_empty_seeds_is_refused(capsys):
    assert "--seeds" in one_line(capsys, ["finetune", "--train", "t.tsv", "--val", "v.tsv", "--seeds", ""])


def test_a_label_past_the_class_limit_is_refused(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text(f"sentence\tlabel\ngood\t1\nhuge\t{10**9}\n")
    with pytest.raises(InputError, match=r"row 2: label '1000000000' is past the largest label 9999"):
        read_labelled(path)
    path.write_text(f"sentence\tlabel\ngood\t1\nlast\t{MAX_LABEL}\n")
    assert read_labelled(path).labels.max() == MAX_LABEL


def test_a_vocab_directory_is_named_as_the_vocab(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text here.\n")
    err = one_line(capsys, ["tokenize", str(corpus), "--vocab", str(tmp_path), "--out", str(tmp_path / "out")])
    assert f"--vocab {tmp_path}: is a directory; give the vocab.txt file itself" in err, err
    assert not (tmp_path / "out").exists()
