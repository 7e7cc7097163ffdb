#!/bin/bash
# A four-topic English classification task for `python -m bench.finetune`, harder than the shipped
# two-source one: the quotations of fortune-mod's computers / politics / science / songs-poems files
# (labels 0..3 in that order) from Debian's `fortunes` package, each fortune's lines joined by single
# spaces, kept at 20-600 characters, duplicates dropped (the first file keeps one), shuffled with
# Python's random.Random(0) and split 70/15/15 into OUT/{train,val,test}.jsonl ("sentence", "label";
# 1,930 / 414 / 414 rows, the same on every run).
# Also OUT/pretrain.txt, unlabelled text in the task's register for pretraining (`bertprep tokenize`'s
# plain layout): every other file of the package and the task's own training quotations, one document
# per file, one fortune per line; a fortune that is a validation or test quotation is left out
# (the model must not have read the sentences it is scored on), as are repeats and ascii-art.
# Usage: bench/get_fortunes.sh [OUT]   (default OUT: /tmp/fortunes; nothing is fetched twice)
set -euo pipefail
OUT=$(readlink -f "${1:-/tmp/fortunes}")
mkdir -p "$OUT/.cache" && cd "$OUT/.cache"
ls fortunes_*.deb >/dev/null 2>&1 || apt-get download fortunes
rm -rf x && dpkg-deb -x fortunes_*.deb x
python3 - x/usr/share/games/fortunes "$OUT" <<'EOF'
import json, random, sys
from pathlib import Path

src, out = Path(sys.argv[1]), Path(sys.argv[2])
rows, seen = [], set()
for label, name in enumerate(["computers", "politics", "science", "songs-poems"]):
    for fortune in (src / name).read_text(encoding="utf-8").split("\n%\n"):  # a line holding only %
        text = " ".join(fortune.split())
        # under 20 characters: empty or a bare punchline; over 600 (about 128 tokens, fine-tuning's
        # input length): a story that would be cut off
        if 20 <= len(text) <= 600 and text not in seen:
            seen.add(text)
            rows.append({"sentence": text, "label": label})
random.Random(0).shuffle(rows)
n_val = n_test = round(0.15 * len(rows))
n_train = len(rows) - n_val - n_test
splits = {"train": rows[:n_train], "val": rows[n_train:n_train + n_val], "test": rows[n_train + n_val:]}
for split, part in splits.items():
    (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
print(f"{out}: " + ", ".join(f"{split} {len(part):,}" for split, part in splits.items())
      + f" quotations; per label {[sum(r['label'] == k for r in rows) for k in range(4)]}")

held_out = {r["sentence"] for r in splits["val"] + splits["test"]}
docs, kept = [], set()
for path in sorted(p for p in src.iterdir() if p.is_file() and not p.is_symlink() and p.suffix != ".dat"):
    if path.name == "ascii-art":  # pictures, not prose
        continue
    lines = []
    for fortune in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
        text = " ".join(fortune.split())
        if text and text not in held_out and text not in kept:
            kept.add(text)
            lines.append(text)
    if lines:
        docs.append("\n".join(lines))
(out / "pretrain.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
print(f"{out}/pretrain.txt: {len(kept):,} fortunes in {len(docs)} documents, "
      f"{sum(map(len, kept)) / 1e6:.2f} M characters; no validation or test quotation")
EOF
