"""`bertprep verify`: re-check shard files against their manifests, schema and value ranges.

For a directory, every shard manifest in it and every shard-named file; for a file, its own checks
plus its manifest's checksum when one sits beside it. The first problem raises an error naming
the file, so the CLI exits non-zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bertprep.shards import naming, schema
from bertprep.shards.atomic import sha256_file
from bertprep.shards.errors import ChecksumError, InputError, ShardFormatError
from bertprep.shards.manifest import read_manifest
from bertprep.shards.reader import open_shard

ROWS_PER_CHECK = 8192


def check_values(shard) -> int:
    """Value ranges of every example: ids in the vocab, layout and masks consistent. Returns the count."""
    m, where = shard.meta, str(shard.path)
    vocab, max_len, pad = m["vocab_size"], m["max_len"], m["special_ids"]["pad"]
    positions = np.arange(max_len)
    for start in range(0, shard.num_examples, ROWS_PER_CHECK):
        b = shard.slice(start, min(start + ROWS_PER_CHECK, shard.num_examples))

        def bad(what: str, rows: np.ndarray) -> ShardFormatError:
            return ShardFormatError(f"{where}: example {start + int(np.flatnonzero(rows)[0])}: {what}")

        length = b["length"].astype(np.int64)
        real = positions[None, :] < length[:, None]
        if (rows := (length < 2) | (length > max_len)).any():
            raise bad(f"length outside 2..{max_len}", rows)
        if (rows := (b["input_ids"] >= vocab).any(1)).any():
            raise bad(f"token id outside the vocab of {vocab}", rows)
        if (rows := ((b["input_ids"] != pad) & ~real).any(1)).any():
            raise bad("non-[PAD] token after the length", rows)
        if (rows := ((b["token_type_ids"] > 1) | ((b["token_type_ids"] != 0) & ~real)).any(1)).any():
            raise bad("segment id not 0/1 or set on padding", rows)
        k = b["num_masked"].astype(np.int64)
        if (rows := k > m["max_predictions"]).any():
            raise bad("num_masked above max_predictions", rows)
        slots = np.arange(m["max_predictions"])[None, :] < k[:, None]
        pos = b["masked_positions"].astype(np.int64)
        if (rows := ((pos >= length[:, None]) & slots).any(1)).any():
            raise bad("masked position beyond the length", rows)
        if (rows := ((np.diff(pos, axis=1) <= 0) & slots[:, 1:]).any(1)).any():
            raise bad("masked positions not strictly ascending", rows)
        if (rows := (((pos != 0) | (b["masked_ids"] != 0)) & ~slots).any(1)).any():
            raise bad("prediction slots after num_masked are not zero", rows)
        if (rows := ((b["masked_ids"] >= vocab) & slots).any(1)).any():
            raise bad("masked id outside the vocab", rows)
        if "nsp_label" in b and (rows := (b["nsp_label"] < 0) | (b["nsp_label"] > 1)).any():
            raise bad("NSP label not 0/1", rows)
        if "doc_starts" in b:
            _check_documents(b, length, m["special_ids"]["cls"], bad)
    return shard.num_examples


def _check_documents(b: dict, length: np.ndarray, cls: int, bad) -> None:
    """`pack` rows: 1..max_docs pieces, starting at slot 0, strictly ascending, each at a [CLS]
    before the length and at least 3 slots apart; unused slots 0."""
    n = b["num_docs"].astype(np.int64)
    starts = b["doc_starts"].astype(np.int64)
    if (rows := (n < 1) | (n > starts.shape[1])).any():
        raise bad(f"num_docs outside 1..{starts.shape[1]}", rows)
    used = np.arange(starts.shape[1])[None, :] < n[:, None]
    if (rows := starts[:, 0] != 0).any():
        raise bad("first document piece does not start at slot 0", rows)
    if (rows := ((np.diff(starts, axis=1) < 3) & used[:, 1:]).any(1)).any():
        raise bad("document pieces not ascending at least 3 slots apart", rows)
    if (rows := ((starts + 2 >= length[:, None]) & used).any(1)).any():
        raise bad("document piece starting too close to or beyond the length", rows)
    if (rows := ((starts != 0) & ~used).any(1)).any():
        raise bad("doc_starts slots after num_docs are not zero", rows)
    at_start = np.take_along_axis(b["input_ids"], starts, axis=1)
    if (rows := ((at_start != cls) & used).any(1)).any():
        raise bad("document piece not starting with [CLS]", rows)


def check_name(shard) -> None:
    """A shard's file name and its metadata must agree: a renamed file of another run is refused."""
    sn = naming.parse_shard_name(shard.path)
    if sn is None:
        return
    m = shard.meta
    for key, named in (("split", sn.split), ("label", sn.label), ("max_len", sn.max_len), ("seed", sn.seed)):
        if m[key] != named:
            raise ShardFormatError(f"{shard.path}: the file name says {key} {named!r}, its metadata {m[key]!r} "
                                   "(a renamed file of another run?)")


def check_against_manifest(shard, manifest: dict, entry: dict, manifest_path: Path) -> None:
    """Settings recorded in the manifest must be the shard's own (a swapped-in file of another run
    with a matching checksum still has another vocab or length)."""
    expected = dict(manifest["meta"], split=entry["split"])
    order = list(schema.REQUIRED_META)  # the telling differences (max_len, vocab_size) come first
    for key, value in sorted(expected.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        if shard.meta.get(key) != value:
            raise ShardFormatError(f"{shard.path}: {key} is {shard.meta.get(key)!r}, {manifest_path.name} says "
                                   f"{value!r} (a shard of another run?); re-run bertprep shard")


def _manifest_for(shard_path: Path) -> Path | None:
    """The manifest beside a shard file; None for a file without one (copied alone, say). A file of a
    run that has not finished (killed, or still writing) is refused: its `.unfinished` marker stands
    beside it and no manifest does."""
    sn = naming.parse_shard_name(shard_path)
    if sn is None:
        return None
    p = shard_path.parent / naming.manifest_name(sn.label, sn.max_len, sn.seed)
    if p.exists():
        return p
    marker = shard_path.parent / naming.unfinished_name(sn.label, sn.max_len, sn.seed)
    if marker.exists():
        raise ShardFormatError(f"{shard_path}: part of an unfinished shard run ({marker.name} beside it, no manifest: "
                               "the run was killed or is still writing); re-run bertprep shard")
    return None


def verify_manifest(path: Path) -> dict:
    """Every listed file present with its checksum, count and valid values; no unlisted part."""
    manifest = read_manifest(path)
    directory = path.parent
    listed = set()
    total = 0
    for entry in manifest["files"]:
        f = directory / entry["name"]
        listed.add(f.name)
        if not f.exists():
            raise InputError(f"{f}: listed in {path.name} but missing")
        actual = sha256_file(f)
        if actual != entry["sha256"]:
            raise ChecksumError(f"{f}: sha256 mismatch (manifest {entry['sha256'][:12]}…, file {actual[:12]}…); "
                                "re-run bertprep shard")
        shard = open_shard(f)
        if shard.num_examples != entry["examples"]:
            raise ShardFormatError(f"{f}: {shard.num_examples} examples, manifest says {entry['examples']}")
        check_name(shard)
        check_against_manifest(shard, manifest, entry, path)
        total += check_values(shard)
    prefix = path.name[: -len(".manifest.json")]
    for f in sorted(directory.iterdir()):
        sn = naming.parse_shard_name(f)
        if sn and f"{sn.label}_{sn.max_len}_{sn.seed}" == prefix and f.name not in listed:
            raise ShardFormatError(f"{f}: shard file not listed in {path.name} (left from another run?)")
    return {"files": len(listed), "examples": total}


def check_runs_complete(paths) -> None:
    """Shard files trained on together come from complete runs: for each manifest beside them,
    every file it lists for a split among `paths` must be present (a copy that lost a file is
    refused, not trained on short). Cheap: names only; `verify_paths` checks the bytes."""
    wanted: dict[Path, set[str]] = {}
    for path in map(Path, paths):
        manifest = _manifest_for(path)
        if manifest is not None:
            wanted.setdefault(manifest, set()).add(naming.parse_shard_name(path).split)
    for manifest, splits in sorted(wanted.items()):
        for entry in read_manifest(manifest)["files"]:
            f = manifest.parent / entry["name"]
            if entry["split"] in splits and not f.exists():
                raise InputError(f"{f}: listed in {manifest.name} but missing (an incomplete copy of the run?)")


def verify_paths(paths: list[Path]) -> dict:
    """Verify manifests, shard files or directories of them; returns counts of what was checked."""
    files = examples = 0
    for path in paths:
        path = Path(path)
        if path.is_dir():
            manifests = sorted(p for p in path.iterdir() if naming.is_manifest_name(p))
            shards = [p for p in sorted(path.iterdir()) if naming.is_shard_name(p)]
            if not manifests and not shards:
                raise InputError(f"{path}: no shards or shard manifests here")
            if shards and not manifests:
                raise ShardFormatError(f"{path}: shard files without a manifest (an incomplete run?)")
            for m in manifests:
                r = verify_manifest(m)
                files, examples = files + r["files"], examples + r["examples"]
        elif naming.is_manifest_name(path):
            r = verify_manifest(path)
            files, examples = files + r["files"], examples + r["examples"]
        else:
            if not path.exists():
                raise InputError(f"{path}: no such file")
            manifest = _manifest_for(path)
            shard = None
            if manifest is not None:
                m = read_manifest(manifest)
                entry = {e["name"]: e for e in m["files"]}.get(path.name)
                if entry is None:
                    raise ShardFormatError(f"{path}: not listed in {manifest.name}")
                actual = sha256_file(path)
                if actual != entry["sha256"]:
                    raise ChecksumError(f"{path}: sha256 mismatch (manifest {entry['sha256'][:12]}…, "
                                        f"file {actual[:12]}…); re-run bertprep shard")
                shard = open_shard(path)
                check_against_manifest(shard, m, entry, manifest)
            shard = shard or open_shard(path)
            check_name(shard)
            examples += check_values(shard)
            files += 1
    return {"files": files, "examples": examples}
