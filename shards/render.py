"""Human-readable views of shard examples, for `bertprep inspect` and the trainer's samples.

Tokens are shown as WordPiece pieces separated by spaces, so what is printed is exactly what the
model sees; masked positions are marked with what happened there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bertprep.shards import naming
from bertprep.shards.atomic import sha256_file
from bertprep.shards.errors import InputError


def find_vocab(shard_path: Path, meta: dict, explicit: Path | None = None) -> list[str] | None:
    """The vocab for a shard: `explicit` (refused unless it is a readable vocab.txt of the shard's
    size), else the token store named in the run's manifest, accepted only when its tokenizer's
    sha256 is the one the shard records; None when none is found."""
    if explicit:
        return _explicit_vocab(Path(explicit), meta["vocab_size"])
    candidates = []
    sn = naming.parse_shard_name(shard_path)
    if sn:
        mpath = Path(shard_path).parent / naming.manifest_name(sn.label, sn.max_len, sn.seed)
        try:
            tokens_dir = json.loads(mpath.read_text(encoding="utf-8")).get("tokens_dir")
        except (OSError, ValueError):
            tokens_dir = None
        if isinstance(tokens_dir, str):
            candidates.append(Path(tokens_dir) / "vocab.txt")
        candidates.append(Path("tokens") / "vocab.txt")
    for vocab_path in candidates:
        if vocab_path and vocab_path.is_file():
            tok = vocab_path.with_name("tokenizer.json")
            if tok.is_file() and sha256_file(tok) == meta.get("tokenizer_sha256"):
                vocab = vocab_path.read_text(encoding="utf-8").split("\n")
                return vocab[: meta["vocab_size"]]
    return None


def _explicit_vocab(path: Path, size: int) -> list[str]:
    """A vocab.txt the user named: one token per line, as many lines as the shard's vocabulary."""
    try:
        text = path.read_text(encoding="utf-8")
    except (IsADirectoryError, FileNotFoundError, NotADirectoryError):
        raise InputError(f"--vocab {path}: no such vocab file (give the vocab.txt of the token store the "
                         "shards were made from)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--vocab {path}: cannot read it as UTF-8 text ({e.__class__.__name__})") from None
    words = text.split("\n")
    if words[-1] == "":  # the newline that ends the last line
        words.pop()
    if len(words) != size:
        raise InputError(f"--vocab {path}: {len(words):,} tokens, but the shards were made with a vocabulary of "
                         f"{size:,}; give the vocab.txt of the token store the shards were made from")
    return words


def token_text(vocab: list[str] | None, i: int) -> str:
    return vocab[i] if vocab is not None and 0 <= i < len(vocab) else f"<{i}>"


def render_example(row: dict[str, np.ndarray], meta: dict, vocab: list[str] | None, index: int) -> str:
    """One example: the masked input split into segments, and the targets at their positions."""
    length = int(row["length"])
    ids = row["input_ids"][:length].tolist()
    types = row["token_type_ids"][:length].tolist()
    k = int(row["num_masked"])
    positions = row["masked_positions"][:k].tolist()
    originals = row["masked_ids"][:k].tolist()
    mask_id = meta["special_ids"]["mask"]
    marks = {}
    for p, orig in zip(positions, originals):
        if ids[p] == mask_id:
            marks[p] = "[MASK]"
        elif ids[p] == orig:
            marks[p] = f"«{token_text(vocab, orig)}»"  # kept: still a target
        else:
            marks[p] = f"«{token_text(vocab, ids[p])}?»"  # replaced by a random token
    words = [marks.get(pos, token_text(vocab, tid)) for pos, tid in enumerate(ids)]
    head = f"example {index}: {length} tokens, {k} to predict"
    if "nsp_label" in row:
        head += f", NSP: {'B follows A (1)' if int(row['nsp_label']) == 1 else 'random B (0)'}"
    if "num_docs" in row:  # `pack`: one line per document piece
        starts = row["doc_starts"][:int(row["num_docs"])].tolist()
        head += f", {len(starts)} document piece(s) at {', '.join(map(str, starts))}"
        lines = [head] + [f"  doc {i + 1}: " + " ".join(words[a:b])
                          for i, (a, b) in enumerate(zip(starts, starts[1:] + [length]))]
    else:
        lines = [head, "  A: " + " ".join(w for w, seg in zip(words, types) if seg == 0)]
        if any(types):
            lines.append("  B: " + " ".join(w for w, seg in zip(words, types) if seg == 1))
    targets = ", ".join(f"{p}={token_text(vocab, o)}" for p, o in zip(positions, originals))
    lines.append(f"  targets: {targets}")
    return "\n".join(lines)
