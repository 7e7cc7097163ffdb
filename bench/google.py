"""bertprep's `segment` instances next to google-research/bert's own, built from the same documents.

    python -m bench.google CORPUS [--vocab-size 8000] [--max-len 128] [--seed 12345] [--google PATH]
    python -m bench.google --tokens DIR [...]

The corpus is tokenized once with `bertprep tokenize` (or --tokens names a token store); both sides
then read exactly the store's documents and sentences:

- **google**: `create_training_instances` of google-research/bert's create_pretraining_data.py,
  dupe factor 1, short_seq_prob 0.1, masked_lm_prob 0.15, max_predictions_per_seq 20 (its
  defaults), `random.Random(seed)`. Its input file is written from the store, one sentence per
  line as WordPiece pieces, a blank line between documents, and its tokenizer is a stand-in that
  splits a line at spaces: google reads the store's own pieces, so no tokenizer difference moves
  the figures. The code is loaded from --google, a checkout or a git directory of
  google-research/bert, with a stand-in `tensorflow` module for what it touches on import and in
  that function (tf.flags, tf.logging, tf.gfile); `six` (which its tokenization.py imports) must
  be installed: `.venv/bin/pip install six`.
- **bertprep**: `bertprep shard` with every document in train (`--split 1,0,0`), the same seed and
  length, its defaults otherwise, with and without `--nsp`; the shards are read back.

Printed: one markdown table, a column per side. "own-document tokens used" is the share of the
corpus's tokens that appear in an instance as A or as a real B (a random B's tokens are another
document's, copied); google drops what truncation cuts, bertprep carries it into the next example.
google has no mode without NSP.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import random
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

from bench.common import machine_line, table

GOOGLE_MIRROR = Path("/work/.mirror/google-research+bert/repo")


def google_source(where: Path, name: str) -> str:
    """A file of google-research/bert from a checkout or (at HEAD) from a git directory."""
    if (where / name).is_file():
        return (where / name).read_text(encoding="utf-8")
    return subprocess.run(["git", "--git-dir", str(where), "show", f"HEAD:{name}"], check=True,
                          capture_output=True, text=True).stdout


def fake_tensorflow() -> types.ModuleType:
    """What create_pretraining_data.py and tokenization.py use of TensorFlow on import and in
    create_training_instances: flag definitions (their defaults become FLAGS attributes), logging,
    and gfile's open and glob."""
    flags = types.SimpleNamespace(FLAGS=types.SimpleNamespace())

    def define(name, default, *_args, **_kw):
        setattr(flags.FLAGS, name, default)

    flags.DEFINE_string = flags.DEFINE_bool = flags.DEFINE_integer = flags.DEFINE_float = define
    flags.mark_flag_as_required = lambda *_a, **_k: None
    tf = types.ModuleType("tensorflow")
    tf.flags = flags
    tf.logging = types.SimpleNamespace(INFO=20, set_verbosity=lambda *_a: None, info=lambda *_a, **_k: None)
    tf.gfile = types.SimpleNamespace(GFile=lambda path, mode="r": open(path, mode, encoding="utf-8"), Glob=glob.glob)
    return tf


def load_google(where: Path) -> types.ModuleType:
    """google's create_pretraining_data module, imported from its source as it is."""
    if importlib.util.find_spec("six") is None:  # tokenization.py imports it
        raise SystemExit("error: bench.google needs six for google-research/bert's tokenization.py; "
                         "run .venv/bin/pip install six")
    sys.modules["tensorflow"] = fake_tensorflow()
    for name in ("tokenization", "create_pretraining_data"):
        module = types.ModuleType(name)
        module.__file__ = f"google-research/bert/{name}.py"
        sys.modules[name] = module
        exec(compile(google_source(where, f"{name}.py"), module.__file__, "exec"), module.__dict__)
    return sys.modules["create_pretraining_data"]


class PieceTokenizer:
    """google's FullTokenizer interface over text that already is WordPiece pieces."""

    def __init__(self, vocab: list[str]):
        self.vocab = {piece: i for i, piece in enumerate(vocab)}

    def tokenize(self, line: str) -> list[str]:
        return line.split()


def write_google_input(store, vocab: list[str], path: Path) -> int:
    """The store as google's input format; returns the number of tokens written."""
    ids, so, do = np.asarray(store.ids), np.asarray(store.sent_offsets), np.asarray(store.doc_offsets)
    words = np.array(vocab, dtype=object)
    with open(path, "w", encoding="utf-8") as f:
        for d in range(store.num_documents):
            for s in range(do[d], do[d + 1]):
                if so[s + 1] > so[s]:
                    f.write(" ".join(words[ids[so[s]:so[s + 1]]]) + "\n")
            f.write("\n")
    return int(so[do[-1]] - so[do[0]])


def google_columns(cpd, input_file: Path, vocab: list[str], max_len: int, seed: int) -> dict:
    rng = random.Random(seed)
    instances = cpd.create_training_instances([str(input_file)], PieceTokenizer(vocab), max_len, 1, 0.1, 0.15,
                                              20, rng)
    seg = [np.asarray(inst.segment_ids) for inst in instances]
    return {"length": np.array([s.size for s in seg]), "a_len": np.array([(s == 0).sum() - 2 for s in seg]),
            "b_len": np.array([(s == 1).sum() - 1 for s in seg]),
            "label": np.array([0 if inst.is_random_next else 1 for inst in instances]),
            "num_masked": np.array([len(inst.masked_lm_positions) for inst in instances])}


def bertprep_columns(tokens: Path, out: Path, max_len: int, seed: int, nsp: bool) -> dict:
    from bertprep.shards.reader import open_shard

    cmd = [sys.executable, "-m", "bertprep.cli", "shard", "--tokens", str(tokens), "--out", str(out),
           "--max-len", str(max_len), "--seed", str(seed), "--split", "1,0,0", "--overwrite"] + ["--nsp"] * nsp
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    parts = [open_shard(p) for p in sorted(out.glob("train_*"))]
    cols = [s.slice(0, s.num_examples) for s in parts]
    c = {k: np.concatenate([x[k] for x in cols]) for k in cols[0]}
    length, tt = c["length"].astype(np.int64), c["token_type_ids"]
    b = (tt == 1).sum(1)
    return {"length": length, "a_len": length - b - 2, "b_len": np.maximum(b - 1, 0),
            "label": c["nsp_label"].astype(np.int64) if nsp else None, "num_masked": c["num_masked"].astype(np.int64)}


def figures(c: dict, max_len: int, corpus_tokens: int) -> list[str]:
    n, length = c["length"].size, c["length"]
    label = c["label"]
    own = c["a_len"].sum() + (c["b_len"][label == 1].sum() if label is not None else 0)
    pair = c["a_len"] + c["b_len"]
    return [f"{(length == max_len).mean():.1%}", f"{np.median(length):g}", f"{1 - length.sum() / (n * max_len):.1%}",
            f"{n:,}", f"{own / corpus_tokens:.1%}", f"{c['num_masked'].mean():.2f}",
            f"{label.mean():.1%}" if label is not None else "-",
            f"{(c['a_len'] / pair).mean():.1%}" if label is not None else "-"]


ROWS = ["instances at full length", "median real tokens", "padding share", "instances for the corpus",
        "own-document tokens used", "masked tokens per instance", "NSP is-next share", "A's share of the pair"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", nargs="?", type=Path, help="text corpus (tokenized first with bertprep tokenize)")
    ap.add_argument("--tokens", type=Path, help="an existing token store instead of a corpus")
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--spread", type=int, default=5, metavar="N",
                    help="also run both NSP sides with seeds 1..N and print the range of their length figures")
    ap.add_argument("--google", type=Path, default=GOOGLE_MIRROR,
                    help="checkout or git directory of github.com/google-research/bert")
    args = ap.parse_args(argv)
    if (args.corpus is None) == (args.tokens is None):
        ap.error("give a CORPUS or --tokens DIR")
    cpd = load_google(args.google)
    from bertprep.shards.tokenstore import open_token_store

    with tempfile.TemporaryDirectory(prefix="bench-google-") as tmp:
        tmp = Path(tmp)
        tokens = args.tokens
        if tokens is None:
            tokens = tmp / "tokens"
            subprocess.run([sys.executable, "-m", "bertprep.cli", "tokenize", str(args.corpus), "--out", str(tokens),
                            "--vocab-size", str(args.vocab_size)], check=True, stdout=subprocess.DEVNULL)
        store = open_token_store(tokens)
        vocab = (tokens / "vocab.txt").read_text(encoding="utf-8").splitlines()
        corpus_tokens = write_google_input(store, vocab, tmp / "google_input.txt")
        sides = {"google (NSP)": google_columns(cpd, tmp / "google_input.txt", vocab, args.max_len, args.seed)}
        for nsp in (True, False):
            sides[f"bertprep segment ({'NSP' if nsp else 'no NSP'})"] = bertprep_columns(
                tokens, tmp / f"shards-{nsp}", args.max_len, args.seed, nsp)
        # google draws its short target once per document, so a few documents decide its figures.
        spread = {"google (NSP)": [], "bertprep segment (NSP)": []}
        for seed in range(1, args.spread + 1):
            spread["google (NSP)"].append(google_columns(cpd, tmp / "google_input.txt", vocab, args.max_len, seed))
            spread["bertprep segment (NSP)"].append(bertprep_columns(tokens, tmp / "shards-spread", args.max_len,
                                                                     seed, True))
    print(machine_line())
    print(f"corpus: {args.corpus or tokens}: {store.num_documents:,} documents, {corpus_tokens:,} tokens; "
          f"max_len {args.max_len}, seed {args.seed}")
    cols = {name: figures(c, args.max_len, corpus_tokens) for name, c in sides.items()}
    rows = [[label if i else f"{label} ({args.max_len})", *(cols[n][i] for n in cols)] for i, label in enumerate(ROWS)]
    print(table(rows, ["", *cols]))
    for name, runs in spread.items():
        if runs:
            full = [(c["length"] == args.max_len).mean() for c in runs]
            pad = [1 - c["length"].sum() / (c["length"].size * args.max_len) for c in runs]
            print(f"{name}, seeds 1..{len(runs)}: full length {min(full):.1%} to {max(full):.1%}, "
                  f"padding {min(pad):.1%} to {max(pad):.1%}")


if __name__ == "__main__":
    main()
