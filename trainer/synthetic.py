"""Synthetic shards with a learnable structure, for tests, the benchmark and smoke runs.

Each example is `[CLS] A [SEP] B [SEP]` where A counts cyclically through one band of 8 word ids
from a random start, and B either goes on counting in that band (NSP label 1) or starts afresh in a
random band (label 0). About 15% of the tokens are chosen for prediction with BERT's 80/10/10 rule.
The band can be read off any context (bag of words: loss ~ ln 8 quickly) and the exact token off
its neighbours, so a model that learns the pattern drives the MLM loss towards zero. Written with
the real `ArrowShardWriter`, so the trainer reads exactly what it reads from `bertprep shard`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bertprep.shards.arrow_ipc import ArrowShardWriter
from bertprep.shards.naming import ShardName
from bertprep.shards.schema import FORMAT_NAME, FORMAT_VERSION, default_max_predictions, id_dtype

SPECIALS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
FIRST_WORD = 5
BAND = 8  # words of an example come from one band of 8 ids, counted through cyclically


def synthetic_meta(*, max_len: int, vocab_size: int, nsp: bool, split: str = "train", label: str = "syn",
                   seed: int = 1, max_predictions: int | None = None) -> dict:
    return {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "max_len": max_len,
        "max_predictions": max_predictions or default_max_predictions(max_len, 0.15), "seed": seed,
        "strategy": "segment",
        "mask_prob": 0.15, "whole_word": False, "nsp": nsp, "vocab_size": vocab_size,
        "id_dtype": id_dtype(vocab_size).name, "special_ids": dict(SPECIALS), "tokenizer_sha256": "0" * 64,
        "label": label, "split": split,
    }


def synthetic_columns(rng: np.random.Generator, n: int, meta: dict) -> dict[str, np.ndarray]:
    T, P, V = meta["max_len"], meta["max_predictions"], meta["vocab_size"]
    bands = max(1, (V - FIRST_WORD) // BAND)
    length = rng.integers(max(5, T // 2), T + 1, size=n)                           # (n,)
    a_len = np.maximum(1, (length - 3) // 2)
    pos = np.arange(T)[None, :]                                                     # (1, T)
    band_a, start_a = rng.integers(0, bands, size=n), rng.integers(0, BAND, size=n)
    label = rng.integers(0, 2, size=n) if meta["nsp"] else np.ones(n, dtype=np.int64)
    band_b = np.where(label == 1, band_a, rng.integers(0, bands, size=n))
    start_b = np.where(label == 1, start_a + a_len, rng.integers(0, BAND, size=n))
    in_a = (pos >= 1) & (pos <= a_len[:, None])
    in_b = (pos >= a_len[:, None] + 2) & (pos < length[:, None] - 1)
    word_a = FIRST_WORD + band_a[:, None] * BAND + (start_a[:, None] + pos - 1) % BAND
    word_b = FIRST_WORD + band_b[:, None] * BAND + (start_b[:, None] + pos - a_len[:, None] - 2) % BAND
    ids = np.zeros((n, T), dtype=np.int64)
    ids[in_a] = word_a[in_a]
    ids[in_b] = word_b[in_b]
    ids[:, 0] = SPECIALS["cls"]
    ids[pos == a_len[:, None] + 1] = SPECIALS["sep"]
    ids[pos == length[:, None] - 1] = SPECIALS["sep"]
    segments = in_b | (pos == length[:, None] - 1)
    # Prediction slots: min(P, max(1, round(0.15 * words in the example))) random word positions.
    words_here = in_a | in_b
    k = np.minimum(P, np.maximum(1, np.round(0.15 * words_here.sum(1)))).astype(np.int64)
    keys = np.where(words_here, rng.random((n, T)), 2.0)
    slot = np.arange(P)[None, :]
    real = slot < k[:, None]                                                        # (n, P)
    first = np.where(real, np.argsort(keys, axis=1)[:, :P], T)   # non-words sort last (key 2)
    chosen = np.where(real, np.sort(first, axis=1), 0)                              # ascending, 0-padded
    masked_ids = np.where(real, np.take_along_axis(ids, chosen, 1), 0)
    roll = rng.random((n, P))
    replacement = np.where(roll < 0.8, SPECIALS["mask"],
                           np.where(roll < 0.9, rng.integers(FIRST_WORD, V, size=(n, P)), masked_ids))
    rows = np.repeat(np.arange(n)[:, None], P, 1)
    ids[rows[real], chosen[real]] = replacement[real]
    dt = np.dtype(meta["id_dtype"])
    cols = {
        "input_ids": ids.astype(dt), "token_type_ids": segments.astype(np.uint8), "length": length.astype(np.uint16),
        "masked_positions": chosen.astype(np.uint16), "masked_ids": masked_ids.astype(dt),
        "num_masked": k.astype(np.uint16),
    }
    if meta["nsp"]:
        cols["nsp_label"] = label.astype(np.int8)
    return cols


def write_synthetic_shards(folder: Path | str, *, rows: list[int], max_len: int = 32, vocab_size: int = 64,
                           nsp: bool = False, split: str = "train", label: str = "syn", seed: int = 1,
                           batch: int = 1000) -> list[Path]:
    """One Arrow shard per entry of `rows` (that many examples each), named by the shard grammar."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = synthetic_meta(max_len=max_len, vocab_size=vocab_size, nsp=nsp, split=split, label=label, seed=seed)
    split_code = {"train": 0, "val": 1, "test": 2}[split]
    paths = []
    for part, n in enumerate(rows):
        path = folder / ShardName(split, label, max_len, seed, part, "arrow").filename
        rng = np.random.default_rng([seed, split_code, part])
        w = ArrowShardWriter(path, meta)
        for lo in range(0, n, batch):
            w.write(synthetic_columns(rng, min(batch, n - lo), meta))
        w.close()
        paths.append(path)
    return paths
