"""The native tokenizing backend gives exactly the ids of the reference (`tokenizers`): byte-identical
token stores on the shipped corpora and on an adversarial one, the same ids per line for
hypothesis-generated text, literal special-token text kept as text by both, and the reference's
sentence grouping equal to encoding each sentence alone."""

from __future__ import annotations

import random
import unicodedata

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, normalizers, pre_tokenizers

from bertprep.preprocess import native
from bertprep.preprocess.reference import MARKER, ReferenceEncoder, encoding_copy, reference_ids
from bertprep.preprocess.sentences import split_sentences
from bertprep.preprocess.vocab import load_tokenizer_json, load_vocab_txt
from conftest import PLAIN, WIKI, run_cli

STORE_FILES = ("ids.bin", "sentences.bin", "documents.bin", "tokenizer.json", "vocab.txt", "manifest.json")
# Pieces that broke a compiled BERT tokenizer before: literal specials, the reference's own marker,
# format and zero-width characters, combining marks, case mappings that grow, non-BMP text.
TRICKY = ["[MASK]", "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[mask]", MARKER, "\ue000", "\u00ad", "\ufeff", "\u200b",
          "\u200d", "\u2060", "e\u0301", "\u0308\u0323", "a\u0345", "\u0130", "\u03a3\u0391\u03a3", "\u1e9e", "\u212a.",
          "\u00a0", "\u3000", "\u2028", "\x1c", "\x85", "\t", "\r", "\x00", "\x7f", "\ufffd", "\U0001F600",
          "\U0001F3F4\U000E0067\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F", "\U00020000", "\U00031350",
          "\u4e2d\u6587\u5b57", "\ud55c\uad6d\uc5b4", "\u0e20\u0e32\u0e29\u0e32", "\u0939\u093f\u0928\u094d\u0926\u0940",
          "\u05e2\u05b4\u05d1\u05b0\u05e8\u05b4\u05d9\u05ea", "\u0627\u0644\u0639\u064e\u0631\u064e\u0628", "\uff21\uff22",
          "Mr. Smith", "e.g. This", "U.S. Army", "end.\u201d Then", "\u201cQuoted.\u201d", "(A. B.)", "1. 2. 3.",
          "x" * 101, "y" * 100, "z" * 99 + "\u00e9", "Ab" * 60, "\u00e9" * 101]


@pytest.fixture(scope="module")
def tok(token_store) -> Tokenizer:
    return load_tokenizer_json(token_store / "tokenizer.json")


@pytest.fixture(scope="module")
def cased_tok(token_store) -> Tokenizer:
    return load_vocab_txt(token_store / "vocab.txt", lowercase=False)


def adversarial_text(seed: int, paragraphs: int) -> str:
    """Paragraphs of random Unicode over many scripts, mixed with TRICKY pieces and real words."""
    rng = random.Random(seed)
    words = WIKI.read_text(encoding="utf-8").split()[:5000]
    ranges = [(0x20, 0x7F), (0xA0, 0x250), (0x300, 0x370), (0x370, 0x530), (0x590, 0x700), (0x900, 0xE80),
              (0x1100, 0x1200), (0x1E00, 0x2000), (0x2000, 0x2070), (0x3000, 0x3100), (0x4E00, 0x4F00),
              (0xAC00, 0xAD00), (0xFE00, 0xFF70), (0x1F300, 0x1F700), (0x20000, 0x20100), (0xE0000, 0xE0080)]

    def chunk() -> str:
        r = rng.random()
        if r < 0.35:
            return rng.choice(words)
        if r < 0.55:
            return rng.choice(TRICKY)
        if r < 0.8:
            lo, hi = rng.choice(ranges)
            return "".join(chr(rng.randrange(lo, hi)) for _ in range(rng.randrange(1, 12)))
        return rng.choice([" ", "  ", ". ", "? ", "! ", " . ", "\t", '." ', "!) ", ". A", ". 1", " \u2003 "])

    lines = [" ".join(words[:1500])]  # NUL bytes in the first block would mark the file binary
    for _ in range(paragraphs):
        text = "".join(chunk() for _ in range(rng.randrange(1, 60)))
        lines.append(text.replace("\n", " "))
        if rng.random() < 0.2:
            lines.append("")
    return "\n".join(lines) + "\n"


def assert_same_store(a, b):
    for name in STORE_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def tokenize_both(tmp_path, corpus, *extra):
    outs = []
    for backend in ("tokenizers", "native"):
        out = tmp_path / backend
        code = run_cli(["tokenize", corpus, "--out", out, "--backend", backend, *extra])
        assert code == 0
        outs.append(out)
    return outs


def test_native_extension_is_built_and_takes_bert_tokenizers(tok, cased_tok):
    assert native.unsupported(tok) is None and native.unsupported(cased_tok) is None


@pytest.mark.parametrize("corpus", [WIKI, PLAIN], ids=["wikitext", "plain"])
def test_backends_write_identical_stores_on_the_shipped_corpora(tmp_path, token_store, corpus):
    a, b = tokenize_both(tmp_path, corpus, "--vocab", token_store / "vocab.txt")
    assert_same_store(a, b)


@pytest.mark.parametrize("case", ["--lowercase", "--cased"])
def test_backends_write_identical_stores_on_an_adversarial_corpus(tmp_path, case):
    corpus = tmp_path / "adversarial.txt"
    corpus.write_text(adversarial_text(seed=1 if case == "--cased" else 2, paragraphs=1500), encoding="utf-8")
    # the vocab is trained on this corpus, so it holds pieces of many scripts
    a, b = tokenize_both(tmp_path, corpus, "--vocab-size", "3000", case, "--workers", "2")
    assert_same_store(a, b)
    assert run_cli(["tokenize", corpus, "--out", tmp_path / "one", "--vocab-size", "3000", case, "--workers", "1"]) == 0
    assert_same_store(b, tmp_path / "one")


def native_lines(tok, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    enc = native.NativeEncoder(tok, threads=1)
    ids, lengths, _ = enc.encode(enc.prepare(lines, bytes(len(lines))))
    return ids, lengths


def reference_lines(tok, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The definition, one call per sentence."""
    ref = encoding_copy(tok)
    per_sentence = [ref.encode(s, add_special_tokens=False).ids for line in lines for s in split_sentences(line)]
    return (np.asarray([i for ids in per_sentence for i in ids], dtype=np.int32),
            np.asarray([len(ids) for ids in per_sentence], dtype=np.int64))


text_strategy = st.lists(
    st.one_of(st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
              st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF), max_size=20),
              st.sampled_from(TRICKY), st.sampled_from([" ", ". ", "? ", "! ", " A", " 1", ". B", "  "])),
    min_size=1, max_size=25).map("".join).map(str.strip).filter(bool)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(text_strategy, min_size=1, max_size=4), st.booleans())
def test_native_ids_equal_the_reference_per_line(tok, cased_tok, lines, cased):
    t = cased_tok if cased else tok
    got_ids, got_lengths = native_lines(t, lines)
    want_ids, want_lengths = reference_lines(t, lines)
    np.testing.assert_array_equal(got_lengths, want_lengths)
    np.testing.assert_array_equal(got_ids, want_ids)


sentence_strategy = st.lists(st.sampled_from(
    ["Mr", "dr", "E.g", "U.S", "A", "b", "\u00c9t", "\u212a", "\u0130", "word", "1", "ab" * 13, ".", ".", "!", "?",
     '"', "'", "(", ")", "[", "]", "\u201c", "\u201d", "\u2018", "\u2019", " ", " ", "  ", "\u00a0", "\u2003",
     "\x1c", "\t"]), min_size=1, max_size=40).map("".join).map(str.strip).filter(bool)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(sentence_strategy, min_size=1, max_size=4))
def test_native_sentence_splitting_equals_the_python_rule(tok, lines):
    """Abbreviations, initials, quotes and brackets around `.!?`, Unicode whitespace and non-ASCII
    words before a `.` (which the C code hands back to Python)."""
    got_ids, got_lengths = native_lines(tok, lines)
    want_ids, want_lengths = reference_lines(tok, lines)
    np.testing.assert_array_equal(got_lengths, want_lengths)
    np.testing.assert_array_equal(got_ids, want_ids)


def test_literal_special_tokens_are_text_in_both_backends(tok):
    words = {i: w for w, i in tok.get_vocab().items()}
    line = "Press [MASK] now. Then [CLS] and [SEP] and [PAD] too."
    for enc in (native.NativeEncoder(tok), ReferenceEncoder(tok)):
        ids, lengths, _ = enc.encode(enc.prepare([line], b"\x01"))
        tokens = [words[i] for i in ids.tolist()]
        assert len(lengths) == 2, enc.name  # a literal [SEP] does not end a sentence
        assert ids[:lengths[0]].tolist() == reference_ids(tok, "Press [MASK] now.")
        assert tokens.count("[") == 4 and tokens.count("]") == 4, enc.name
        assert tok.decode(ids[:lengths[0]].tolist()).replace(" ##", "").replace(" ", "") == "press[mask]now."
        assert not {"[MASK]", "[CLS]", "[SEP]", "[PAD]"} & set(tokens), enc.name


def test_reference_groups_equal_one_sentence_at_a_time(tok):
    sentences = ["Plain one.", f"Has the marker {MARKER} inside.", "x\ue000", "\ue001y", "", "[SEP] alone."] * 20
    ids, lengths = ReferenceEncoder(tok).encode_sentences(sentences)
    want = [reference_ids(tok, s) for s in sentences]
    assert lengths.tolist() == [len(w) for w in want]
    assert ids.tolist() == [i for w in want for i in w]


def test_char_table_agrees_with_tokenizers_one_character_at_a_time(tok):
    cmap = np.frombuffer(native.char_tables(tok)[0], dtype="<u4")
    pool = np.frombuffer(native.char_tables(tok)[1], dtype="<u4")
    rng = random.Random(0)
    sample = list(range(0x250)) + rng.sample(range(0x250, native.CMAP_LIMIT), 3000)
    pretok = pre_tokenizers.BertPreTokenizer()
    for c in sample:
        e = int(cmap[c])
        tag = e & 3
        if tag == native.TAG_SLOW:
            continue
        out = tok.normalizer.normalize_str(chr(c))
        if tag == native.TAG_GONE:
            assert out == "", hex(c)
            continue
        items = [e >> 2 & 3 | (e >> 8) << 8] if tag == native.TAG_ONE else [
            (int(i) >> 24) | (int(i) & 0xFFFFFF) << 8 for i in pool[e >> 8:(e >> 8) + (e >> 4 & 15)]]
        assert "".join(chr(i >> 8) for i in items) == out, hex(c)
        for i in items:
            pieces = len(pretok.pre_tokenize_str(f"a{chr(i >> 8)}a"))
            assert {native.CL_WORD: 1, native.CL_SPACE: 2, native.CL_PUNCT: 3}[i & 3] == pieces, hex(c)
        assert not any(unicodedata.combining(x) for x in out)


def test_other_pipelines_fall_back_to_tokenizers_with_a_note(tmp_path, token_store, capsys):
    tok = Tokenizer.from_file(str(token_store / "tokenizer.json"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    assert "normalizer is Sequence" in native.unsupported(tok)
    path = tmp_path / "nfkc.json"
    tok.save(str(path))
    a, b = tokenize_both(tmp_path, PLAIN, "--tokenizer", path)
    assert_same_store(a, b)
    assert "native backend not used" in capsys.readouterr().err


def test_a_changed_sentence_rule_disables_the_native_splitter(tok, monkeypatch):
    import re

    from bertprep.preprocess import sentences

    monkeypatch.setattr(sentences, "_BOUNDARY_RE", re.compile(r"([.!?;]+)\s+(?=[A-Z])"))
    assert "sentences.py" in native.unsupported(tok)
