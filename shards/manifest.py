"""The manifest of a shard run, `{label}_{maxlen}_{seed}.manifest.json`: written last, it lists every
file with its example count and sha256, the options, and statistics. A run without its manifest is
incomplete. Readers trust no path in it: entries must be plain shard file names in its directory.
"""

from __future__ import annotations

from pathlib import Path

from bertprep.shards.atomic import read_format_json, write_json
from bertprep.shards.errors import ShardFormatError
from bertprep.shards.naming import parse_shard_name

FORMAT_NAME = "bertprep-shard-manifest"
FORMAT_VERSION = 1


def write_manifest(path: Path, body: dict) -> dict:
    manifest = dict(body, format=FORMAT_NAME, format_version=FORMAT_VERSION)
    write_json(path, manifest)
    return manifest


def read_manifest(path: Path) -> dict:
    manifest = read_format_json(path, FORMAT_NAME, FORMAT_VERSION, "shard manifest")
    files = manifest.get("files")
    if not isinstance(files, list):
        raise ShardFormatError(f"{path}: manifest has no file list")
    for entry in files:
        name = entry.get("name") if isinstance(entry, dict) else None
        # Only bare shard names: '../outside' or '/etc/passwd' must never be opened through a manifest.
        if not isinstance(name, str) or Path(name).name != name or parse_shard_name(name) is None:
            raise ShardFormatError(f"{path}: refuses file entry {name!r} (not a shard file name in this directory)")
        sha, examples = entry.get("sha256"), entry.get("examples")
        if not (isinstance(sha, str) and isinstance(examples, int) and not isinstance(examples, bool) and examples >= 0
                and entry.get("split") == parse_shard_name(name).split):
            raise ShardFormatError(f"{path}: file entry {name!r} lacks a valid sha256, example count or split")
    if not isinstance(manifest.get("meta"), dict):
        raise ShardFormatError(f"{path}: manifest has no shard settings (meta)")
    return manifest
