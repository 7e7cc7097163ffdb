"""Labelled sets for `bertprep finetune`: SST-2 parquet, GLUE TSV, CSV and JSONL read to the same
sentences and integer labels; non-integer labels and missing columns are refused naming the file."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertprep.finetune.labelled import read_labelled
from bertprep.shards.errors import InputError

SENTENCES = ["a gripping , funny film .", 'it "never" works , sadly', "three classes, too"]
LABELS = [1, 0, 2]


def write_all(tmp_path):
    pq.write_table(pa.table({"idx": [0, 1, 2], "sentence": SENTENCES, "label": LABELS}), tmp_path / "s.parquet")
    (tmp_path / "s.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{l}\n" for s, l in zip(SENTENCES, LABELS)))
    (tmp_path / "s.jsonl").write_text("".join(json.dumps({"sentence": s, "label": l}) + "\n"
                                              for s, l in zip(SENTENCES, LABELS)))
    return [tmp_path / n for n in ("s.parquet", "s.tsv", "s.jsonl")]


def test_every_layout_reads_to_the_same_set(tmp_path):
    for path in write_all(tmp_path):
        got = read_labelled(path)
        assert got.texts == SENTENCES and got.labels.dtype == np.int64 and got.labels.tolist() == LABELS, path


def test_other_column_names(tmp_path):
    (tmp_path / "x.jsonl").write_text(json.dumps({"text": "hello", "y": "3"}) + "\n")
    assert read_labelled(tmp_path / "x.jsonl", "text", "y").labels.tolist() == [3]


@pytest.mark.parametrize("bad, needle", [
    ("sentence\tlabel\ngood\tpositive\n", "row 1: label 'positive' is not an integer"),
    ("sentence\tlabel\ngood\t1.5\n", "is not an integer"),
    ("sentence\tlabel\ngood\t-1\n", "is not an integer >= 0"),
    ("text\tlabel\ngood\t1\n", "no column 'sentence'"),
    ("sentence\tlabel\n", "no rows"),
])
def test_bad_files_are_refused_naming_file_and_row(tmp_path, bad, needle):
    (tmp_path / "bad.tsv").write_text(bad)
    with pytest.raises(InputError, match="bad.tsv") as e:
        read_labelled(tmp_path / "bad.tsv")
    assert needle in str(e.value)


def test_pairs_and_ratings_are_read_beside_the_labels(tmp_path):
    (tmp_path / "p.tsv").write_text("premise\thypothesis\tlabel\tstars\na cat sat\tan animal sat\t1\t4.5\n"
                                    "it rained\tthe sun shone\t0\t1\n")
    got = read_labelled(tmp_path / "p.tsv", "premise", "label", text_column_b="hypothesis", rating_column="stars")
    assert got.texts == ["a cat sat", "it rained"] and got.texts_b == ["an animal sat", "the sun shone"]
    assert got.labels.tolist() == [1, 0] and got.ratings.dtype == np.float64 and got.ratings.tolist() == [4.5, 1.0]
    only = read_labelled(tmp_path / "p.tsv", "premise", None, rating_column="stars")
    assert only.labels is None and only.texts_b is None and len(only) == 2


@pytest.mark.parametrize("value", ["", "nan", "inf", "four", "true"])
def test_a_rating_that_is_not_a_finite_number_is_refused(tmp_path, value):
    (tmp_path / "r.jsonl").write_text(json.dumps({"sentence": "x", "label": 0, "stars": value}) + "\n")
    with pytest.raises(InputError, match=r"r.jsonl: row 1: 'stars' value .* is not a finite number"):
        read_labelled(tmp_path / "r.jsonl", rating_column="stars")
