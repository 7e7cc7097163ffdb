"""Dividing documents (never examples) into train/val/test, so no document leaks across splits."""

from __future__ import annotations

import numpy as np

from bertprep.preprocess.seeding import STAGE_SPLIT, rng_for
from bertprep.shards.errors import ConfigError
from bertprep.shards.naming import SPLITS


def parse_split(text: str) -> tuple[float, float, float]:
    """`0.98,0.01,0.01` -> fractions for train, val, test; they must be >= 0 and sum to 1."""
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"--split must be three numbers like 0.98,0.01,0.01, got {text!r}") from None
    if len(parts) != 3 or any(p < 0 for p in parts):
        raise ConfigError(f"--split must be three non-negative fractions (train,val,test), got {text!r}")
    if abs(sum(parts) - 1.0) > 1e-6:
        raise ConfigError(f"--split fractions must sum to 1, got {text!r} (sum {sum(parts):g})")
    if parts[0] == 0:
        raise ConfigError("--split gives the train split nothing")
    return parts  # type: ignore[return-value]


def assign_documents(num_documents: int, fractions: tuple[float, float, float], seed: int) -> dict[str, np.ndarray]:
    """Split name -> ascending document indices. A seeded permutation picks val and test documents;
    each split keeps corpus order so neighbouring documents stay together in its shards."""
    n_val = int(round(num_documents * fractions[1]))
    n_test = int(round(num_documents * fractions[2]))
    if fractions[1] > 0 and n_val == 0 and num_documents >= 3:
        n_val = 1
    if fractions[2] > 0 and n_test == 0 and num_documents >= 3:
        n_test = 1
    perm = rng_for(seed, STAGE_SPLIT).permutation(num_documents)
    val, test, train = perm[:n_val], perm[n_val:n_val + n_test], perm[n_val + n_test:]
    return {name: np.sort(docs) for name, docs in zip(SPLITS, (train, val, test))}


def chunk_documents(doc_ids: np.ndarray, doc_tokens: np.ndarray, chunk_tokens: int) -> list[np.ndarray]:
    """Cut a split's documents into consecutive chunks of about `chunk_tokens` tokens. Boundaries
    depend only on the data, so the output is the same for any number of workers."""
    if len(doc_ids) == 0:
        return []
    ends = np.cumsum(doc_tokens[doc_ids])
    cuts = np.searchsorted(ends, np.arange(chunk_tokens, ends[-1], chunk_tokens), side="left") + 1
    cuts = np.unique(cuts[(cuts > 0) & (cuts < len(doc_ids))])
    return np.split(doc_ids, cuts)
