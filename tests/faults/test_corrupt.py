"""Corrupt and hostile files: a shard with a flipped byte, a truncated shard, a shard of another vocab
or length, a manifest that misses a file or lists a missing one, a manifest naming `../outside` or
an absolute path, malformed manifests and metadata, random byte flips: `verify` (and `inspect`)
refuse each with one line naming the file and the problem, never a traceback or a crash."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pyarrow as pa
import pytest

from bertprep.shards.atomic import sha256_file
from bertprep.shards.reader import open_shard
from conftest import PLAIN, run_cli

MANIFEST = "pydocs_64_1.manifest.json"


def make_shards(tokens, out, *extra, max_len=64):
    code = run_cli(["shard", "--tokens", tokens, "--out", out, "--max-len", max_len, "--seed", "1",
                    "--examples-per-shard", "200", *extra])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def built(token_store, tmp_path_factory):
    """Our run in both containers, a run at another length, and a run of another vocab whose files
    carry exactly our names (a token store of Shakespeare labelled 'pydocs')."""
    root = tmp_path_factory.mktemp("corrupt")
    other_tokens = root / "other_tokens"
    assert run_cli(["tokenize", PLAIN, "--out", other_tokens, "--vocab-size", "600", "--label", "pydocs"]) == 0
    return {
        "arrow": make_shards(token_store, root / "arrow"),
        "msgpack": make_shards(token_store, root / "msgpack", "--format", "msgpack"),
        "length": make_shards(token_store, root / "length", max_len=32),
        "vocab": make_shards(other_tokens, root / "vocab"),
    }


@pytest.fixture(params=["arrow", "msgpack"])
def shards(request, built, tmp_path):
    return shutil.copytree(built[request.param], tmp_path / request.param)


def refused(capsys, *args) -> str:
    """Run `bertprep ARGS` in-process; assert exit 2 with exactly one `error:` line and return it."""
    capsys.readouterr()
    code = run_cli(list(args))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), (code, err)
    return err


def first(shards, split="train"):
    return sorted(p for p in shards.iterdir() if p.name.startswith(split + "_"))[0]


def edit_manifest(shards, change) -> None:
    path = shards / MANIFEST
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


def test_a_flipped_byte_is_named(shards, capsys):
    f = first(shards)
    data = bytearray(f.read_bytes())
    data[len(data) // 3] ^= 0x04
    f.write_bytes(bytes(data))
    for target in (shards, shards / MANIFEST, f):
        err = refused(capsys, "verify", target)
        assert f.name in err and "sha256 mismatch" in err


def test_a_truncated_shard_is_named_with_and_without_its_manifest(shards, capsys):
    f = first(shards)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    err = refused(capsys, "verify", shards)
    assert f.name in err and "sha256 mismatch" in err
    (shards / MANIFEST).unlink()
    for command in ("verify", "inspect"):
        err = refused(capsys, command, f)
        assert f.name in err and ("truncated" in err or "unreadable" in err), err


@pytest.mark.parametrize("other", ["length", "vocab"])
def test_a_shard_of_another_run_is_refused_even_when_the_manifest_agrees(built, tmp_path, capsys, other):
    """A part file replaced by one of another --max-len or vocab, with the manifest entry edited to
    match its bytes, still disagrees with the manifest's settings (and its name with its metadata)."""
    shards = shutil.copytree(built["arrow"], tmp_path / "s")
    f = first(shards)
    foreign = first(built[other])
    shutil.copyfile(foreign, f)

    def agree(m):
        entry = next(e for e in m["files"] if e["name"] == f.name)
        entry["sha256"], entry["examples"] = sha256_file(f), open_shard(f).num_examples

    edit_manifest(shards, agree)
    setting = "max_len" if other == "length" else "vocab_size"
    err = refused(capsys, "verify", shards)
    assert f.name in err and setting in err, err
    if other == "length":  # without a manifest, the name still says 64
        (shards / MANIFEST).unlink()
        err = refused(capsys, "verify", f)
        assert f.name in err and "max_len" in err, err


def test_a_part_the_manifest_does_not_list_and_a_listed_part_that_is_missing(shards, capsys):
    f = first(shards)
    stray = f.with_name(f.name.replace("_00000", "_00042"))
    shutil.copyfile(f, stray)
    err = refused(capsys, "verify", shards)
    assert stray.name in err and "not listed" in err
    stray.unlink()
    f.unlink()
    err = refused(capsys, "verify", shards)
    assert f.name in err and "missing" in err


@pytest.mark.parametrize("name", ["../outside", "/etc/passwd", "../train_pydocs_64_1_00000.arrow",
                                  "/tmp/train_pydocs_64_1_00000.arrow", "sub/train_pydocs_64_1_00000.arrow", "",
                                  None, 7])
def test_a_manifest_naming_a_path_outside_its_directory_is_refused(shards, capsys, name):
    edit_manifest(shards, lambda m: m["files"][0].update(name=name))
    err = refused(capsys, "verify", shards)
    assert MANIFEST in err and "refuses file entry" in err


HOSTILE_MANIFESTS = {
    "not json": "{oops",
    "a list": "[1, 2]",
    "not utf-8": b"\xff\xfe{}",
    "no files": lambda m: m.pop("files"),
    "files not a list": lambda m: m.update(files={"a": 1}),
    "entry not a map": lambda m: m["files"].append("train_pydocs_64_1_00000.arrow"),
    "no sha256": lambda m: m["files"][0].pop("sha256"),
    "sha256 a number": lambda m: m["files"][0].update(sha256=12),
    "examples a string": lambda m: m["files"][0].update(examples="200"),
    "no examples": lambda m: m["files"][0].pop("examples"),
    "version 2": lambda m: m.update(format_version=2),
    "other format": lambda m: m.update(format="something-else"),
    "meta not a map": lambda m: m.update(meta=[1]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MANIFESTS))
def test_malformed_manifests_get_one_line(shards, capsys, case):
    change = HOSTILE_MANIFESTS[case]
    path = shards / MANIFEST
    if isinstance(change, str):
        path.write_text(change)
    elif isinstance(change, bytes):
        path.write_bytes(change)
    else:
        edit_manifest(shards, change)
    for target in (shards, path, first(shards)):
        err = refused(capsys, "verify", target)
        assert MANIFEST in err, err


HOSTILE_META = {
    "max_len a string": {"max_len": "64"},
    "max_len negative": {"max_len": -64},
    "max_len huge": {"max_len": 10**12},
    "special_ids a list": {"special_ids": [0, 1, 2, 3, 4]},
    "special_ids missing pad": {"special_ids": {"unk": 1}},
    "vocab_size null": {"vocab_size": None},
    "id_dtype object": {"id_dtype": "object"},
    "id_dtype float": {"id_dtype": "float64"},
    "id_dtype nonsense": {"id_dtype": "no-such-type"},
    "nsp a string": {"nsp": "yes"},
    "max_predictions a float": {"max_predictions": 9.5},
    "meta null": None,
}


@pytest.mark.parametrize("case", sorted(HOSTILE_META))
def test_hostile_shard_metadata_gets_one_line(built, tmp_path, capsys, case):
    """Metadata with wrong types or absurd values, in both containers, without a manifest to catch it."""
    import msgpack
    import zstandard

    src = open_shard(first(built["arrow"]))
    rows = src.slice(0, 5)
    meta = None if HOSTILE_META[case] is None else dict(src.meta, **HOSTILE_META[case])
    raw = json.dumps(meta).encode()
    # Arrow: the real columns, the hostile metadata
    table = pa.table({k: (pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1]) if v.ndim == 2
                          else pa.array(v)) for k, v in rows.items()})
    table = table.replace_schema_metadata({b"bertprep": raw})
    a = tmp_path / "train_pydocs_64_1_00000.arrow"
    with pa.ipc.new_file(str(a), table.schema) as w:
        w.write_table(table)
    # msgpack: the same hostile metadata in the header
    m = tmp_path / "train_pydocs_64_1_00000.msgpack.zst"
    packer = msgpack.Packer(use_bin_type=True)
    body = packer.pack({"format": "bertprep-shard", "format_version": 2, "meta": meta, "num_examples": 5})
    for i in range(5):
        body += packer.pack({k: v[i].tobytes() for k, v in rows.items()})
    m.write_bytes(zstandard.ZstdCompressor().compress(body))
    for f in (a, m):
        for command in ("verify", "inspect"):
            err = refused(capsys, command, f)
            assert f.name in err, err


FUZZ = r"""
import json, random, sys, traceback
from pathlib import Path
from bertprep.shards.errors import BertprepError
from bertprep.shards.reader import open_shard
from bertprep.shards.verify import verify_paths
src, work, seed, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
data = src.read_bytes()
outcomes = {"refused": 0, "accepted": 0}
for i in range(n):
    bad = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 8])):
        bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
    if rng.random() < 0.2:
        bad = bad[: rng.randrange(len(bad))]
    f = work / src.name
    f.write_bytes(bytes(bad))
    try:
        verify_paths([f])
        s = open_shard(f)
        s.slice(0, s.num_examples)
        outcomes["accepted"] += 1
    except BertprepError:
        outcomes["refused"] += 1
    except Exception:
        print(f"case {i}: not a BertprepError", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
print(json.dumps(outcomes))
"""


@pytest.mark.parametrize("fmt", ["arrow", "msgpack"])
def test_random_byte_flips_never_crash_the_reader(built, tmp_path, fmt):
    """Seeded random bit flips and truncations of a shard (no manifest to catch them): every read
    ends in acceptance or a BertprepError; never another exception, never a crash of the process."""
    src = first(built[fmt])
    r = subprocess.run([sys.executable, "-c", FUZZ, str(src), str(tmp_path), "12345", "300"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stderr}"
    outcomes = json.loads(r.stdout)
    # about a fifth of the cases are cut short, which no reader may accept
    assert outcomes["refused"] >= 30 and outcomes["refused"] + outcomes["accepted"] == 300, outcomes


HOSTILE_STORE = {
    "manifest not json": lambda d: (d / "manifest.json").write_text("{"),
    "no files": lambda d: _edit_store(d, lambda m: m.pop("files")),
    "files naming ../ids.bin": lambda d: _edit_store(d, lambda m: m["files"].update({"../ids.bin": "0" * 64})),
    "files a list": lambda d: _edit_store(d, lambda m: m.update(files=["ids.bin"])),
    "a data file unlisted": lambda d: _edit_store(d, lambda m: m["files"].pop("documents.bin")),
    "no counts": lambda d: _edit_store(d, lambda m: m.pop("counts")),
    "tokens a string": lambda d: _edit_store(d, lambda m: m["counts"].update(tokens="many")),
    "id_dtype object": lambda d: _edit_store(d, lambda m: m.update(id_dtype="object")),
    "id_dtype float64": lambda d: _edit_store(d, lambda m: m.update(id_dtype="float64")),
    "tokenizer a string": lambda d: _edit_store(d, lambda m: m.update(tokenizer="bert")),
    "special ids missing": lambda d: _edit_store(d, lambda m: m["tokenizer"].pop("special_ids")),
    "vocab_size huge": lambda d: _edit_store(d, lambda m: m["tokenizer"].update(vocab_size=10**9)),
    "label with a slash": lambda d: _edit_store(d, lambda m: m.update(label="../x")),
    "ids.bin truncated": lambda d: (d / "ids.bin").write_bytes((d / "ids.bin").read_bytes()[:1001]),
    "sentences.bin gone": lambda d: (d / "sentences.bin").unlink(),
    "vocab.txt gone": lambda d: (d / "vocab.txt").unlink(),
    "vocab.txt short": lambda d: (d / "vocab.txt").write_text("[PAD]\n[UNK]\n"),
}


def _edit_store(directory, change):
    path = directory / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


@pytest.mark.parametrize("case", sorted(HOSTILE_STORE))
def test_damaged_or_hostile_token_stores_get_one_line(token_store_copy, tmp_path, capsys, case):
    HOSTILE_STORE[case](token_store_copy)
    out = tmp_path / "out"
    refused(capsys, "shard", "--tokens", token_store_copy, "--out", out)
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]


class _OpensAFile:
    """Unpickling this calls open(path, "w"): evidence that a reader ran code from a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_in_an_arrow_shard_is_never_run(built, tmp_path, capsys):
    """An Arrow shard whose `input_ids` field declares the `arrow.py_extension_type` extension with
    a pickle (pyarrow before 14.0.1 unpickled it on open: CVE-2023-47248) is read as plain data."""
    import pickle

    marker = tmp_path / "ran"
    table = pa.ipc.open_file(pa.memory_map(str(first(built["arrow"])))).read_all()
    field = table.schema.field("input_ids").with_metadata({
        b"ARROW:extension:name": b"arrow.py_extension_type",
        b"ARROW:extension:metadata": pickle.dumps(_OpensAFile(marker)),
    })
    schema = table.schema.set(table.schema.get_field_index("input_ids"), field)
    f = tmp_path / first(built["arrow"]).name
    with pa.ipc.new_file(str(f), schema) as w:
        w.write_table(table.cast(schema))
    capsys.readouterr()
    for command in ("verify", "inspect"):
        assert run_cli([command, f]) in (0, 2)
    assert not marker.exists()
