"""The reference tokenizing: what ids a sentence gets, defined by HuggingFace `tokenizers`.

A sentence's ids are exactly
    tok.encode_special_tokens = True          # "[MASK]" in the text is text: "[", "mask", "]"
    tok.no_truncation(); tok.no_padding()
    tok.encode(sentence, add_special_tokens=False).ids
for the run's tokenizer `tok`. `ReferenceEncoder` computes that, faster than one call per sentence:
32 sentences are joined into one string with MARKER after each. MARKER is a private-use string
registered, on a private copy of the tokenizer only, as a non-special added token: `tokenizers`
cuts the text at added tokens before normalizing, so each sentence is encoded exactly as alone,
and the marker's id (a new one, beyond every other) shows where to cut the ids apart. A group
whose text contains MARKER more often than it has sentences (a sentence wrote it) is encoded one
sentence at a time without the marker. The tokenizer saved next to the token store is untouched.
"""

from __future__ import annotations

from itertools import chain

import numpy as np
from tokenizers import AddedToken, Tokenizer

from bertprep.preprocess.sentences import split_sentences

MARKER = "\ue000\ue001"
GROUP = 32


def encoding_copy(tok: Tokenizer) -> Tokenizer:
    """A private copy of `tok` that encodes by the reference definition above."""
    copy = Tokenizer.from_str(tok.to_str())
    copy.no_truncation()
    copy.no_padding()
    copy.encode_special_tokens = True
    return copy


def reference_ids(tok: Tokenizer, sentence: str) -> list[int]:
    """One sentence's ids by the definition, one call: what tests compare both backends against."""
    return encoding_copy(tok).encode(sentence, add_special_tokens=False).ids


def _flat(id_lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
    ids = np.fromiter(chain.from_iterable(id_lists), dtype=np.int32, count=int(lengths.sum()))
    return ids, lengths


class ReferenceEncoder:
    """Sentences -> ids with `tokenizers`, by the reference definition."""

    name = "tokenizers"

    def __init__(self, tok: Tokenizer):
        self.plain = encoding_copy(tok)
        self.grouped = encoding_copy(tok)
        self.grouped.add_tokens([AddedToken(MARKER, special=False, normalized=False)])
        self.marker_id = self.grouped.token_to_id(MARKER)

    def encode_sentences(self, sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids of all sentences concatenated, int32; tokens per sentence, int64)."""
        groups = [sentences[i:i + GROUP] for i in range(0, len(sentences), GROUP)]
        texts = [MARKER.join(g) + MARKER for g in groups]
        clean = [t.count(MARKER) == len(g) for t, g in zip(texts, groups)]
        if all(clean):  # the usual case: cut all groups apart at once
            ids, _ = _flat([e.ids for e in self.grouped.encode_batch_fast(texts, add_special_tokens=False)])
            ends = np.flatnonzero(ids == self.marker_id)
            if len(ends) != len(sentences):  # cannot happen when the text counts matched: a bug
                raise RuntimeError(f"marker count {len(ends)} != {len(sentences)} sentences")
            return np.delete(ids, ends), np.diff(ends, prepend=-1) - 1
        encoded = iter(self.grouped.encode_batch_fast([t for t, ok in zip(texts, clean) if ok],
                                                      add_special_tokens=False))
        alone = iter(self.plain.encode_batch_fast([s for g, ok in zip(groups, clean) if not ok for s in g],
                                                  add_special_tokens=False))
        id_parts, length_parts = [], []
        for group, ok in zip(groups, clean):
            if ok:
                ids = np.asarray(next(encoded).ids, dtype=np.int32)
                ends = np.flatnonzero(ids == self.marker_id)
                if len(ends) != len(group):  # cannot happen when the text count matched: a bug
                    raise RuntimeError(f"marker count {len(ends)} != {len(group)} sentences")
                id_parts.append(np.delete(ids, ends))
                length_parts.append(np.diff(ends, prepend=-1) - 1)
            else:
                ids, lengths = _flat([next(alone).ids for _ in group])
                id_parts.append(ids)
                length_parts.append(lengths)
        if not id_parts:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        return np.concatenate(id_parts), np.concatenate(length_parts)

    def prepare(self, paragraphs: list[str], opens: bytes) -> tuple[list[str], np.ndarray]:
        """Sentence splitting, done in the reader thread: (sentences, sentence opens a document)."""
        sentences: list[str] = []
        starts: list[bool] = []
        pending = False
        for para, opens_doc in zip(paragraphs, opens):
            pending = pending or bool(opens_doc)
            for sentence in split_sentences(para):
                sentences.append(sentence)
                starts.append(pending)
                pending = False
        return sentences, np.asarray(starts, dtype=bool)

    def encode(self, prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, tokens per sentence, sentence opens a document) for one prepared batch."""
        sentences, starts = prepared
        ids, lengths = self.encode_sentences(sentences)
        return ids, lengths, starts

    def close(self) -> None:
        pass
