"""Open shard files of either container through one interface, and check that a set belongs together.

`open_shard(path)` gives an object with `path`, `meta` (the shard's settings), `num_examples`,
`columns`, `take(rows)` and `slice(start, stop)`, both returning a dict of numpy arrays
(`input_ids` (n, max_len), `token_type_ids` (n, max_len), `length` (n,), `masked_positions`
(n, max_predictions), `masked_ids` (n, max_predictions), `num_masked` (n,), `nsp_label` (n,)
when the shards have NSP, and `doc_starts` (n, max_len // 3) and `num_docs` (n,) in `pack`
shards). Arrow shards are memory-mapped; msgpack shards are decoded.
"""

from __future__ import annotations

from pathlib import Path

from bertprep.shards.arrow_ipc import ArrowShard
from bertprep.shards.errors import ShardFormatError
from bertprep.shards.msgpack_zstd import MsgpackShard
from bertprep.shards.schema import PACK_STRATEGY

# Settings that must agree across shards that are trained on together.
COMPATIBLE_KEYS = ("max_len", "max_predictions", "vocab_size", "id_dtype", "special_ids", "nsp", "tokenizer_sha256")


def open_shard(path: Path | str):
    path = Path(path)
    if not path.exists():
        raise ShardFormatError(f"{path}: no such shard file")
    if path.is_dir():
        raise ShardFormatError(f"{path}: is a directory, not a shard file")
    if path.name.endswith(".msgpack.zst"):
        return MsgpackShard(path)
    if path.name.endswith(".arrow"):
        return ArrowShard(path)
    raise ShardFormatError(f"{path}: not a shard file name (expected .arrow or .msgpack.zst)")


def check_compatible(shards: list, what: str = "shards", same_layout: bool = True) -> dict:
    """Refuse a set of shards whose settings differ; returns the shared settings. `same_layout`:
    also refuse `pack` shards beside others (one stream's batches share their columns; training
    shards validated on shards of another strategy pass False)."""
    if not shards:
        raise ShardFormatError(f"no {what} given")
    first = shards[0]
    for s in shards[1:]:
        for key in COMPATIBLE_KEYS:
            if s.meta.get(key) != first.meta.get(key):
                raise ShardFormatError(
                    f"{s.path}: {key} is {s.meta.get(key)!r} but {first.path} has {first.meta.get(key)!r}; "
                    f"{what} trained together must come from one tokenizer and one --max-len"
                )
        if same_layout and _packed(s) != _packed(first):
            raise ShardFormatError(
                f"{s.path}: strategy is {s.meta['strategy']!r} but {first.path} has {first.meta['strategy']!r}; "
                f"{what} trained together are either all `pack` shards (with document boundaries) or none"
            )
    return {k: first.meta[k] for k in COMPATIBLE_KEYS}


def _packed(shard) -> bool:
    return shard.meta["strategy"] == PACK_STRATEGY


def open_shards(paths) -> list:
    """Open many shard files (sorted by name for a stable order) and check they belong together."""
    shards = [open_shard(p) for p in sorted(Path(p) for p in paths)]
    check_compatible(shards)
    return shards
