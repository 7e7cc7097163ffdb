"""Random generators derived from *where* work sits, never from the order it runs in.

`rng_for(seed, stage, split, chunk, dupe)` feeds the whole tuple to numpy's SeedSequence, so chunk
7 of the train split gets the same stream whichever worker runs it and in whatever order, and
seed 124 is not a shifted copy of seed 123 (as `seed + index` would make it).
"""

from __future__ import annotations

import numpy as np

STAGE_SPLIT = 1   # assigning documents to train/val/test
STAGE_EXAMPLES = 2  # packing and masking one chunk


def rng_for(seed: int, stage: int, *position: int) -> np.random.Generator:
    return np.random.default_rng([seed, stage, *position])
