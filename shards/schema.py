"""The shard schema as data: format version, the column table and the token-id dtype rule.

Every example is a row of fixed-width columns, so a reader slices a batch out of a memory map as
(n, max_len) numpy arrays with no per-example Python objects. A change to anything here that
alters the bytes must bump FORMAT_VERSION (tests/test_format.py holds golden bytes).
"""

from __future__ import annotations

import math

import numpy as np

from bertprep.shards.errors import ShardFormatError

FORMAT_NAME = "bertprep-shard"
FORMAT_VERSION = 2  # 2: `pack` shards add doc_starts and num_docs
METADATA_KEY = b"bertprep"

# name -> (width: "max_len" | "max_predictions" | "max_docs" | None for a scalar, dtype or "ids", meaning)
COLUMNS: dict[str, tuple[str | None, str, str]] = {
    "input_ids": ("max_len", "ids", "ids after masking, [PAD]-padded"),
    "token_type_ids": ("max_len", "uint8", "0 for segment A, 1 for B, 0 on padding"),
    "length": (None, "uint16", "real tokens including [CLS]/[SEP]"),
    "masked_positions": ("max_predictions", "uint16", "positions chosen for prediction, ascending, 0-padded"),
    "masked_ids": ("max_predictions", "ids", "original ids at those positions, 0-padded"),
    "num_masked": (None, "uint16", "how many of the slots are real"),
    "nsp_label": (None, "int8", "1 when B follows A, 0 when B is random (only with --nsp)"),
    "doc_starts": ("max_docs", "uint16", "slot of each document piece's [CLS], ascending, 0-padded (only `pack`)"),
    "num_docs": (None, "uint16", "how many document pieces the row holds (only `pack`)"),
}
NSP_COLUMN = "nsp_label"
PACK_COLUMNS = ("doc_starts", "num_docs")
PACK_STRATEGY = "pack"

# Keys every shard's metadata carries, so a shard describes itself.
REQUIRED_META = (
    "format", "format_version", "max_len", "max_predictions", "seed", "strategy", "mask_prob",
    "whole_word", "nsp", "vocab_size", "id_dtype", "special_ids", "tokenizer_sha256", "label", "split",
)


def id_dtype(vocab_size: int) -> np.dtype:
    """Token ids are uint16 while the vocab fits (<= 65536 ids), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def default_max_predictions(max_len: int, mask_prob: float) -> int:
    """Prediction slots when --max-predictions is not given: max_len * mask_prob rounded up to a
    multiple of 5, at most max_len. 20 at 128 tokens and 80 at 512 at the 0.15 rate, the values
    of google-research/bert and NVIDIA's BERT; never fewer than the largest count a row of max_len
    can get, round(max_len * mask_prob)."""
    return min(max_len, 5 * math.ceil(round(max_len * mask_prob, 9) / 5))


def max_docs(max_len: int) -> int:
    """Document pieces a `pack` row can hold: each takes at least 3 slots ([CLS] token [SEP])."""
    return max_len // 3


def column_names(meta: dict) -> list[str]:
    """The columns a shard of these settings holds, in file order: nsp_label only with NSP, the
    document boundaries only for `pack` shards."""
    packed = meta["strategy"] == PACK_STRATEGY
    return [c for c in COLUMNS if (c != NSP_COLUMN or meta["nsp"]) and (c not in PACK_COLUMNS or packed)]


def column_spec(name: str, meta: dict) -> tuple[int | None, np.dtype]:
    """(row width or None for a scalar column, numpy dtype) of a column under `meta`'s settings."""
    width_key, dtype, _ = COLUMNS[name]
    if width_key is None:
        width = None
    elif width_key == "max_docs":
        width = max_docs(int(meta["max_len"]))
    else:
        width = int(meta[width_key])
    return width, (np.dtype(meta["id_dtype"]) if dtype == "ids" else np.dtype(dtype))


SPECIAL_NAMES = ("pad", "unk", "cls", "sep", "mask")
SPLIT_NAMES = ("train", "val", "test")
MAX_WIDTH = (1 << 16) - 1  # lengths and positions are uint16


def check_meta(meta: dict, where: str) -> dict:
    """Refuse metadata of another format or version, missing a required key, or holding values of
    the wrong type or range (a hostile file must not reach numpy with `max_len: "64"`)."""
    if not isinstance(meta, dict):
        raise ShardFormatError(f"{where}: shard metadata is not a JSON object")
    if meta.get("format") != FORMAT_NAME:
        raise ShardFormatError(f"{where}: not a bertprep shard (format {meta.get('format')!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        advice = ("written by a newer bertprep: upgrade bertprep to read it"
                  if _is_int(version) and version > FORMAT_VERSION else "re-run `bertprep shard` with this version")
        raise ShardFormatError(
            f"{where}: shard format version {version}, this bertprep reads version {FORMAT_VERSION}; {advice}"
        )
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ShardFormatError(f"{where}: shard metadata lacks {', '.join(missing)}")
    problem = _meta_problem(meta)
    if problem:
        raise ShardFormatError(f"{where}: shard metadata field {problem}; not a valid bertprep shard")
    return meta


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _meta_problem(m: dict) -> str | None:
    """The first metadata value of the wrong type or out of range, described; None when all are fine."""
    for key, lo, hi in (("max_len", 2, MAX_WIDTH), ("max_predictions", 1, MAX_WIDTH), ("vocab_size", 5, 1 << 32),
                        ("seed", 0, (1 << 64) - 1)):
        if not _is_int(m[key]) or not lo <= m[key] <= hi:
            return f"{key} is {m[key]!r}, expected an integer in {lo}..{hi}"
    if m["max_predictions"] > m["max_len"]:
        return f"max_predictions is {m['max_predictions']}, above max_len {m['max_len']}"
    if m["id_dtype"] != id_dtype(m["vocab_size"]).name:
        return f"id_dtype is {m['id_dtype']!r}, expected {id_dtype(m['vocab_size']).name!r} for {m['vocab_size']} ids"
    sp = m["special_ids"]
    if not (isinstance(sp, dict) and sorted(sp) == sorted(SPECIAL_NAMES)
            and all(_is_int(v) and 0 <= v < m["vocab_size"] for v in sp.values())):
        return f"special_ids is {sp!r}, expected ids of {', '.join(SPECIAL_NAMES)} within the vocab"
    for key in ("nsp", "whole_word"):
        if not isinstance(m[key], bool):
            return f"{key} is {m[key]!r}, expected true or false"
    if isinstance(m["mask_prob"], bool) or not isinstance(m["mask_prob"], (int, float)) or not 0 < m["mask_prob"] < 1:
        return f"mask_prob is {m['mask_prob']!r}, expected a number in (0, 1)"
    if m["nsp"] and m["strategy"] == PACK_STRATEGY:
        return "nsp is true with strategy 'pack', which has no sentence pairs"
    if m["split"] not in SPLIT_NAMES:
        return f"split is {m['split']!r}, expected one of {', '.join(SPLIT_NAMES)}"
    for key in ("strategy", "label", "tokenizer_sha256"):  # descriptive: any string
        if not isinstance(m[key], str):
            return f"{key} is {m[key]!r}, expected a string"
    return None


def check_columns(columns: dict[str, np.ndarray], meta: dict, where: str) -> None:
    """Check that a batch of columns has exactly the shapes and dtypes the metadata implies."""
    names = column_names(meta)
    if sorted(columns) != sorted(names):
        raise ShardFormatError(f"{where}: columns {sorted(columns)} differ from the schema's {sorted(names)}")
    n = len(columns["length"])
    for name in names:
        width, dtype = column_spec(name, meta)
        arr = columns[name]
        shape = (n,) if width is None else (n, width)
        if arr.shape != shape or arr.dtype != dtype:
            raise ShardFormatError(
                f"{where}: column {name} is {arr.dtype}{list(arr.shape)}, schema says {dtype}{list(shape)}"
            )
