"""A WikiText-103-sized corpus in WikiText's layout, built from the small real corpora we have.

    python -m bench.wikicorpus OUT [--mb 543] [--docs 100000] [--seed 0] [--source FILE ...]

WikiText-103 (543 MB, about 28k articles of 100M words, a 267k-word vocabulary) is not on this
machine; concatenating 70 copies of 7 MB of text would give a vocabulary of a 7 MB corpus, whose
word counts are all multiples of 70. Instead each document is a run of real paragraphs (the
Python docs in WikiText form and Shakespeare, tokenized the WikiText way: spaced punctuation,
` @-@ ` between hyphenated words, ` @,@ ` in numbers) taken from a random place in the pool, in
which 8% of the words are replaced by pseudo-words (syllable strings, 400k of them, drawn from a
Zipf law) and numbers are redrawn: a long tail of rare words, as in Wikipedia. ` = Title = `
opens each document, ` = = Section = = ` headings come every few paragraphs, and blank lines
surround both, as in WikiText. Deterministic for a seed; a different seed gives held-out text.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

SOURCES = (Path("/work/corpora/pydocs.wiki.tokens"), Path("/work/corpora/shakespeare.txt"))
_TOKEN_RE = re.compile(r"\d+(?:[.,]\d+)*|\w+(?:-\w+)*|[^\w\s]")
SYLLABLES = [c + v for c in "b c d f g h j k l m n p r s t v w z br ch dr gr kr pl sh st th tr".split()
             for v in "a e i o u ai ea ia io ou".split()]


def _wikitext_line(line: str) -> str:
    """A line of plain text tokenized as WikiText writes it (`well-known` -> `well @-@ known`)."""
    out = []
    for tok in _TOKEN_RE.findall(line):
        if tok[0].isdigit():
            tok = tok.replace(",", " @,@ ").replace(".", " @.@ ")
        elif "-" in tok and len(tok) > 1:
            tok = tok.replace("-", " @-@ ")
        out.append(tok)
    return " ".join(out)


def _pool(sources: list[Path]) -> list[str]:
    """Every paragraph of the sources as a WikiText line (headings and blank lines left out)."""
    paragraphs = []
    for path in sources:
        text = path.read_text(encoding="utf-8", errors="replace")
        wiki = " = " in text[:200]
        for line in text.splitlines():
            line = line.strip()
            if not line or (wiki and line.startswith("= ")):
                continue
            paragraphs.append(line if wiki else _wikitext_line(line))
    return paragraphs


def _pseudo_words(rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct syllable strings, two to four syllables each, in random order."""
    words: set[str] = set()
    syl = np.array(SYLLABLES)
    while len(words) < n:
        k = rng.integers(2, 5, size=n)
        parts = syl[rng.integers(0, len(syl), size=(n, 4))]
        words.update("".join(p[:j]) for p, j in zip(parts, k))
    return np.array(sorted(words)[:n], dtype=object)[rng.permutation(n)]


def make_corpus(out: Path, mb: float = 543, docs: int = 100_000, seed: int = 0,
                sources: list[Path] | None = None) -> Path:
    rng = np.random.default_rng([seed, 23])
    pool = _pool(sources or list(SOURCES))
    # The pool as word ids: one vocabulary of the pool's tokens, each paragraph a slice of `flat`.
    split = [p.split(" ") for p in pool]
    lengths = np.array([len(s) for s in split])
    words, flat = np.unique(np.concatenate([np.array(s, dtype=object) for s in split]).astype(str),
                            return_inverse=True)
    replaceable = np.char.isalpha(words)                     # only words are swapped
    is_number = np.char.isdigit(words)
    pseudo = _pseudo_words(rng, 400_000)
    ranks = np.arange(1, len(pseudo) + 1)
    cdf = np.cumsum(1.0 / (ranks + 20.0) ** 1.05)
    cdf /= cdf[-1]
    vocab = np.concatenate([words.astype(object), pseudo, np.array([str(i) for i in range(2100)], dtype=object)])
    num_base = len(words) + len(pseudo)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    target = mb * 1e6 / docs                                  # bytes per document
    with open(out, "w", encoding="utf-8") as f:
        for d in range(docs):
            title = " ".join(s.capitalize() for s in pseudo[np.searchsorted(cdf, rng.random(rng.integers(1, 4)))])
            f.write(f" = {title} = \n \n")
            size = target * rng.uniform(0.3, 1.7)
            i = int(rng.integers(0, len(pool)))
            written, since_heading = 0, 0
            while written < size:
                if since_heading >= rng.integers(3, 8):
                    head = pseudo[np.searchsorted(cdf, rng.random())].capitalize()
                    f.write(f" \n = = {head} = = \n \n")
                    since_heading = 0
                ids = flat[starts[i]:starts[i + 1]].copy()
                nums = is_number[ids]
                swap = replaceable[ids] & (rng.random(len(ids)) < 0.08)
                ids[swap] = len(words) + np.searchsorted(cdf, rng.random(int(swap.sum())))
                ids[nums] = num_base + rng.integers(0, 2100, size=int(nums.sum()))
                line = " " + " ".join(vocab[ids]) + " \n"
                f.write(line)
                written += len(line)
                since_heading += 1
                i = (i + 1) % len(pool)
            f.write(" \n")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.wikicorpus", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--mb", type=float, default=543, help="about this many MB (1e6 bytes)")
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0, help="another seed gives held-out text of the same kind")
    p.add_argument("--source", type=Path, nargs="*", help=f"real text to draw from [default: {' '.join(map(str, SOURCES))}]")
    args = p.parse_args(argv)
    path = make_corpus(args.out, args.mb, args.docs, args.seed, args.source)
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB, {args.docs:,} documents")


if __name__ == "__main__":
    main()
