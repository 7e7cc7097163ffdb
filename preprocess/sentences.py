"""A rule-based sentence splitter, documented so that users can predict where examples break.

Rule: a sentence ends at `.`, `!` or `?` (runs of them, optionally followed by closing quotes or
brackets) when whitespace follows and the next word starts with an upper-case letter, a digit or
an opening quote/bracket before one. A `.` does not end a sentence after a known abbreviation
(Mr., Dr., e.g., etc. ...) or a single letter (an initial such as `J. Smith`, or `U.S.`). Works on
WikiText's spaced punctuation (`word . Next`) as on normal text. Text that is all lower-case
splits only at lines, since the rule relies on capitals.
"""

from __future__ import annotations

import re

_BOUNDARY_RE = re.compile(r"""([.!?]+["'\u201d\u2019)\]]*)\s+(?=["'\u201c\u2018(\[]?[A-Z0-9])""")
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e cf al inc ltd co corp no nos fig figs vol vols ed eds "
    "jan feb mar apr jun jul aug sep sept oct nov dec gen col lt sgt capt rev mt ft approx dept est".split()
)


def _ends_with_abbreviation(text: str, end: int) -> bool:
    """Whether the word just before position `end` (the `.`) is an abbreviation or an initial."""
    head = text[max(0, end - 24):end].rstrip()
    if not head:
        return False
    word = head.rsplit(None, 1)[-1].lstrip("(\"'").lower()
    return len(word) == 1 and word.isalpha() or word.rstrip(".") in ABBREVIATIONS or (
        "." in word and all(len(p) <= 1 for p in word.split("."))  # u.s, e.g as one token
    )


def split_sentences(paragraph: str) -> list[str]:
    """Split one paragraph (a line of text) into sentences, whitespace-trimmed, none empty."""
    sentences = []
    start = 0
    for m in _BOUNDARY_RE.finditer(paragraph):
        if m.group(1)[0] == "." and len(m.group(1)) == 1 and _ends_with_abbreviation(paragraph, m.start()):
            continue
        piece = paragraph[start:m.end(1)].strip()
        if piece:
            sentences.append(piece)
        start = m.end()
    tail = paragraph[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences
