"""WikiText-103 layout: ` = Title = ` starts a document, ` = = Sub = = ` headings are dropped, and
WikiText's number escapes (` @-@ `, ` @,@ `, ` @.@ `) are undone (`1 @,@ 000` -> `1,000`)."""

from __future__ import annotations

import re

TITLE_RE = re.compile(r"^ ?= (?!=)(.*[^=]) = ?$")
HEADING_RE = re.compile(r"^ ?(=\s?){2,}[^=].*?(\s?=){2,} ?$")
_ESCAPE_RE = re.compile(r" @([-,.])@ ")


def is_title(line: str) -> bool:
    """A top-level heading (` = Valkyria Chronicles III = `): the start of a new article."""
    return TITLE_RE.match(line) is not None


def is_subheading(line: str) -> bool:
    """A section heading (` = = Gameplay = = `, deeper levels too): kept out of the text."""
    return HEADING_RE.match(line) is not None


def unescape(line: str) -> str:
    return _ESCAPE_RE.sub(r"\1", line)


def looks_like_wikitext(lines: list[str]) -> bool:
    """Detect the layout from a file's first lines: a ` = Title = ` heading among them."""
    return any(is_title(line) for line in lines if line.strip())
