"""Vocab training (`preprocess/sampling.py`, `vocab.train_tokenizer`): the words the C side makes are
the words `tokenizers` makes; the vocab trained from words files is the vocab `tokenizers` trains
on the text (a small reference here); --vocab-sample-mb picks whole documents from every input,
spread evenly, the same for every run and worker count; its bounds are checked; and on a cluster
the workers read the sample, not the driver."""

from __future__ import annotations

import gzip
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import trainers

from bertprep.preprocess import sampling, wikitext
from bertprep.preprocess.corpus import DOC_BREAK, ReadStats, read_corpus
from bertprep.preprocess.vocab import SPECIAL_TOKENS, VocabConfig, bert_pipeline, train_tokenizer
from conftest import PLAIN, WIKI, one_line, run_cli

TRICKY = ["Héllo WÖRLD naïve café", "日本語のテキスト and 中文", "a\u2028b\u00a0c\td", "x\u0301\u0327y ﬁne",
          "emoji 🙂🙃 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ctrl\x01\x1fchars\ufffd", "Ǆ ǅ ß İ", "end.", "(a)[b]{c}--d"]


def reference_words(paragraphs: list[str], lowercase: bool) -> list[str]:
    tok = bert_pipeline(lowercase)
    return [w for p in paragraphs for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(p))]


@pytest.mark.parametrize("lowercase", [True, False])
def test_words_are_the_words_tokenizers_makes(lowercase):
    paragraphs = TRICKY + [p for p in read_corpus(WIKI, "wikitext", ReadStats()) if p is not DOC_BREAK][:300]
    maker = sampling.WordMaker(lowercase)
    text = maker.words(paragraphs).decode("utf-8")
    assert sorted(text.split()) == sorted(reference_words(paragraphs, lowercase))
    assert max(map(len, text.split("\n"))) < sampling.LINE_BYTES + 5000
    assert set(map(chr, maker.code_points())) == set("".join(paragraphs))


def reference_vocab(paragraphs: list[str], cfg: VocabConfig) -> list[str]:
    """What bertprep trained before words files: tokenizers on the text itself, `##c` pinned."""
    tok = bert_pipeline(cfg.lowercase)
    raw = sorted(set("".join(paragraphs)))
    chars = sorted(set(tok.normalizer.normalize_str("".join(raw))) - set(" \t\n\r"))
    pinned = list(SPECIAL_TOKENS) + [f"##{c}" for c in chars]
    trainer = trainers.WordPieceTrainer(vocab_size=max(cfg.vocab_size, len(pinned) + len(chars)),
                                        min_frequency=cfg.min_frequency, special_tokens=pinned,
                                        continuing_subword_prefix="##", show_progress=False)
    tok.train_from_iterator(iter(paragraphs), trainer=trainer)
    vocab = tok.get_vocab()
    return sorted(vocab, key=vocab.get)


def test_the_vocab_is_the_one_tokenizers_trains_on_the_text(tmp_path):
    paragraphs = TRICKY * 3 + [p for path, fmt in ((WIKI, "wikitext"), (PLAIN, "text"))
                               for p in read_corpus(path, fmt, ReadStats()) if p is not DOC_BREAK]
    cfg = VocabConfig(vocab_size=800)
    points, _ = sampling.write_words([sampling.SampleChunk(str(WIKI), "wikitext"), sampling.SampleChunk(str(PLAIN), "text")],
                                     tmp_path / "w.txt", cfg.lowercase)
    extra = tmp_path / "x.txt"
    extra.write_bytes(sampling.WordMaker(True).words(TRICKY * 3))
    tok = train_tokenizer([tmp_path / "w.txt", extra], sorted(set(points) | set(map(ord, "".join(TRICKY)))), cfg)
    vocab = tok.get_vocab()
    assert sorted(vocab, key=vocab.get) == reference_vocab(paragraphs, cfg)


def wiki_copies(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "big.wiki.tokens"
    path.write_bytes(WIKI.read_bytes() * n)
    return path


def test_the_sample_is_whole_documents_evenly_spread_and_seeded(tmp_path):
    big = wiki_copies(tmp_path, 20)                      # 3.3 MB, 6,000 documents
    size = big.stat().st_size
    chunks, total, planned = sampling.plan_sample([(big, "wikitext")], 1 << 20)
    assert total == size and abs(planned - (1 << 20)) < 0.05 * (1 << 20)
    assert chunks == sampling.plan_sample([(big, "wikitext")], 1 << 20)[0]          # the same every time
    assert chunks != sampling.plan_sample([(big, "wikitext")], 1 << 20, seed=1)[0]  # seeded
    data = big.read_bytes()
    spans = [c.span for c in chunks]
    assert all(a < b <= c for (a, b), (c, _) in zip(spans, spans[1:]))             # in order, never overlapping
    for a, b in spans:                                   # whole documents: a title opens each, and the next
        assert wikitext.is_title(data[a:data.index(b"\n", a)].decode())
        assert b == size or wikitext.is_title(data[b:data.index(b"\n", b)].decode())
    starts = np.array([a for a, _ in spans])           # spread: no gap much over a grid step
    step = (1 << 20) / len(spans) * size / (1 << 20)
    assert starts[0] < 2 * step and size - starts[-1] < 2 * step and np.diff(starts).max() < 2 * step


def test_every_input_gives_its_share_streamed_ones_too(tmp_path):
    big = wiki_copies(tmp_path, 8)
    gz = tmp_path / "plain.txt.gz"
    lines = PLAIN.read_text(encoding="utf-8").splitlines()
    gz.write_bytes(gzip.compress("".join("\n".join(lines[i % 400:i % 400 + 5]) + "\n\n"
                                         for i in range(3000)).encode()))       # 3,000 short documents
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"document {i} " + "word " * 50}) + "\n" for i in range(4000)))
    inputs = [(big, "wikitext"), (gz, "text"), (jsonl, "jsonl")]
    chunks, total, planned = sampling.plan_sample(inputs, total_share := 600_000)
    assert {c.path for c in chunks} == {str(p) for p, _ in inputs}
    stats = ReadStats()
    kept = {p: 0 for p, _ in inputs}
    for chunk in chunks:
        for doc in sampling._documents(chunk, stats, None):
            kept[Path(chunk.path)] += sum(len(p) + 1 for p in doc)
    sizes = [sampling.text_size(p, f) for p, f in inputs]
    for (path, _), size in zip(inputs, sizes):          # each input about its share of the sample
        assert abs(kept[path] / (total_share * size / total) - 1) < 0.25, path.name
    gz_docs = list(sampling._documents(next(c for c in chunks if c.path == str(gz)), ReadStats(), None))
    whole = [d for d in sampling._documents(sampling.SampleChunk(str(gz), "text"), ReadStats(), None)]
    assert 0 < len(gz_docs) < len(whole) and all(d in whole for d in gz_docs)   # whole documents of it


def test_a_small_input_beside_a_large_one_still_gives_text(tmp_path):
    big = wiki_copies(tmp_path, 20)
    for seed in range(5):
        chunks, _, _ = sampling.plan_sample([(big, "wikitext"), (PLAIN, "text")], 300_000, seed=seed)
        assert any(c.path == str(PLAIN) for c in chunks), seed


def test_a_corpus_no_larger_than_the_sample_is_read_whole(tmp_path):
    chunks, total, planned = sampling.plan_sample([(WIKI, "wikitext"), (PLAIN, "text")], 10 << 20)
    assert [(c.span, c.grid) for c in chunks] == [(None, None)] * 2 and planned == total
    chunks, _, planned = sampling.plan_sample([(WIKI, "wikitext")], 0)
    assert chunks == [sampling.SampleChunk(str(WIKI), "wikitext")]


def test_sampled_vocab_is_the_same_bytes_for_any_worker_count(tmp_path, capsys):
    big = wiki_copies(tmp_path, 12)
    outs = []
    for workers in (1, 2, 1):
        out = tmp_path / f"w{workers}-{len(outs)}"
        assert run_cli(["tokenize", big, "--out", out, "--vocab-size", "600", "--vocab-sample-mb", "0.5",
                        "--workers", workers]) == 0
        outs.append(out)
    assert "sample of 2.0 MB, --vocab-sample-mb 0.5" in capsys.readouterr().out
    for name in ("tokenizer.json", "vocab.txt", "ids.bin"):
        assert len({(o / name).read_bytes() for o in outs}) == 1, name
    full = tmp_path / "full"
    assert run_cli(["tokenize", big, "--out", full, "--vocab-size", "600", "--vocab-sample-mb", "0"]) == 0
    assert (full / "vocab.txt").read_bytes() != (outs[0] / "vocab.txt").read_bytes()
    assert not [p for o in outs for p in o.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("value, said", [("-1", "--vocab-sample-mb must be in [0, 16777216]"),
                                         ("nan", "--vocab-sample-mb"), ("lots", "--vocab-sample-mb")])
def test_vocab_sample_mb_bounds(tmp_path, capsys, value, said):
    err = one_line(capsys, ["tokenize", PLAIN, "--out", tmp_path / "t", "--vocab-sample-mb", value])
    assert said in err and not (tmp_path / "t").exists()


def test_on_a_cluster_the_workers_read_the_sample(tmp_path, monkeypatch, capsys):
    pytest.importorskip("distributed")
    big = wiki_copies(tmp_path, 12)
    common = ["tokenize", big, "--vocab-size", "600", "--vocab-sample-mb", "0.5"]
    assert run_cli([*common, "--out", tmp_path / "here"]) == 0

    def driver_reads(*args, **kwargs):
        raise AssertionError("the driver read the vocab sample")

    monkeypatch.setattr(sampling, "write_words", driver_reads)  # this process only: workers are others
    assert run_cli([*common, "--out", tmp_path / "cluster", "--cluster", "local:2", "--chunk-mb", "0.2"]) == 0
    assert "sample of" in capsys.readouterr().out
    for name in ("tokenizer.json", "vocab.txt", "ids.bin", "sentences.bin", "documents.bin"):
        assert (tmp_path / "here" / name).read_bytes() == (tmp_path / "cluster" / name).read_bytes(), name
    assert not [p for p in (tmp_path / "cluster").iterdir() if p.name.endswith(".tmp")]


def test_the_vocab_step_shows_a_bar_on_a_terminal_only(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for progress, tty, shown in ((True, True, True), (True, False, False), (False, True, False)):
        err = Terminal() if tty else io.StringIO()
        monkeypatch.setattr(sys, "stderr", err)
        sampling.train_vocab(VocabConfig(vocab_size=300), [(PLAIN, "text")], tmp_path, None, progress, 1 << 26)
        assert ("vocab: reading" in err.getvalue()) == shown, (progress, tty)
    assert not list(tmp_path.iterdir())  # the words file is gone
