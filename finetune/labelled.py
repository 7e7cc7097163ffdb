"""Labelled sentence sets for fine-tuning: SST-2's parquet layout, GLUE-style TSV and JSONL.

`read_labelled(path, text_column, label_column, text_column_b=..., rating_column=...)` returns the
sentences (and the second sentence of each pair), their integer labels and their ratings (a number
per row, the target of a regression head). Labels must be integers in 0..MAX_LABEL (up to 10,000
classes: the head has a row per class up to the largest label, so one stray label of 10^9 would
otherwise allocate a 10^9-class head), ratings finite numbers; anything else is refused with the
file, the row and the value, because a silently mis-parsed label set trains a useless classifier.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertprep.shards.errors import InputError

MAX_LABEL = 9_999  # labels 0..9999: at most 10,000 classes


@dataclass(frozen=True)
class Labelled:
    texts: list[str]
    labels: np.ndarray | None            # (N,) int64, >= 0; None when no label column was asked for
    texts_b: list[str] | None = None     # the second sentence of each pair
    ratings: np.ndarray | None = None    # (N,) float64, finite: a regression target

    def __len__(self) -> int:
        return len(self.texts)


def _layout(path: Path) -> str:
    name = path.name.lower()
    for suffix, kind in ((".parquet", "parquet"), (".tsv", "tsv"), (".jsonl", "jsonl"), (".json", "jsonl"),
                         (".csv", "csv")):
        if name.endswith(suffix):
            return kind
    raise InputError(f"{path}: unknown layout; name it .parquet, .tsv, .csv or .jsonl")


def _rows(path: Path, kind: str) -> tuple[list[str], list[dict]]:
    """(column names, rows as dicts) of a labelled file."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a file that is not parquet
            raise InputError(f"{path}: not a readable parquet file ({e.__class__.__name__})") from None
        return table.column_names, table.to_pylist()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    if kind == "jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{n}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise InputError(f"{path}:{n}: a JSON object per line is expected")
                rows.append(row)
        columns = sorted({k for r in rows for k in r})
        return columns, rows
    reader = csv.DictReader(text.splitlines(), delimiter="\t" if kind == "tsv" else ",",
                            quoting=csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL)
    return list(reader.fieldnames or []), list(reader)


def _label(path: Path, n: int, label) -> int:
    if isinstance(label, bool) or not isinstance(label, (int, str, float)):
        raise InputError(f"{path}: row {n}: label {label!r} is not an integer")
    try:
        value = int(label) if not isinstance(label, float) or label.is_integer() else None
    except ValueError:
        value = None
    if value is None or value < 0:
        raise InputError(f"{path}: row {n}: label {label!r} is not an integer >= 0")
    if value > MAX_LABEL:
        raise InputError(f"{path}: row {n}: label {label!r} is past the largest label {MAX_LABEL} "
                         f"(at most {MAX_LABEL + 1:,} classes)")
    return value


def _rating(path: Path, n: int, column: str, rating) -> float:
    value = None
    if isinstance(rating, (int, float, str)) and not isinstance(rating, bool):
        try:
            value = float(rating)
        except ValueError:
            pass
    if value is None or not np.isfinite(value):
        raise InputError(f"{path}: row {n}: {column!r} value {rating!r} is not a finite number")
    return value


def read_labelled(path: Path | str, text_column: str = "sentence", label_column: str | None = "label", *,
                  text_column_b: str | None = None, rating_column: str | None = None) -> Labelled:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    columns, rows = _rows(path, _layout(path))
    wanted = [(c, flag) for c, flag in ((text_column, "--text-column"), (text_column_b, "--text-column-b"),
                                         (label_column, "--label-column"), (rating_column, "--regression-column"))
              if c is not None]
    for col, flag in wanted:
        if col not in columns:
            raise InputError(f"{path}: no column {col!r} (columns: {', '.join(map(str, columns)) or 'none'}); "
                             f"name the right one with {flag}")
    if not rows:
        raise InputError(f"{path}: no rows")
    texts, texts_b, labels, ratings = [], [], [], []
    for n, row in enumerate(rows, 1):
        for col, out in ((text_column, texts), (text_column_b, texts_b)):
            if col is not None:
                text = row.get(col)
                if not isinstance(text, str):
                    raise InputError(f"{path}: row {n}: {col!r} is not text ({text!r})")
                out.append(text)
        if label_column is not None:
            labels.append(_label(path, n, row.get(label_column)))
        if rating_column is not None:
            ratings.append(_rating(path, n, rating_column, row.get(rating_column)))
    return Labelled(texts, np.asarray(labels, dtype=np.int64) if label_column is not None else None,
                    texts_b if text_column_b is not None else None,
                    np.asarray(ratings, dtype=np.float64) if rating_column is not None else None)
