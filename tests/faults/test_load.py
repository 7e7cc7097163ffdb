"""Load, scaled down for `make test` (bench/load.py runs the full 10M/50M-token and 300 MB figures):
the memory `shard` and `tokenize` hold stays flat when their input grows eight-fold."""

from __future__ import annotations

from faultkit import PLAIN, bertprep, repeat_file, scaled_store

MIB = 1 << 20


def test_shard_memory_stays_flat_as_the_token_store_grows(token_store, tmp_path):
    """Anonymous memory summed over the shard process and its workers (memory-mapped input pages
    are the kernel's to drop, so they are not counted) for 0.7M and 5.6M tokens."""
    peaks = {}
    # The sampler (every 20 ms) can only miss a peak, never invent one, and a short run on a loaded
    # machine is where it misses: the small store, the baseline, is measured twice.
    for copies, runs in ((20, 2), (160, 1)):
        store = scaled_store(token_store, tmp_path / f"tokens{copies}", copies)
        for i in range(runs):
            r = bertprep("shard", "--tokens", store, "--out", tmp_path / f"shards{copies}-{i}", "--workers", "2",
                         "--max-len", "128", "--whole-word", "--nsp")
            assert r.code == 0, r.err
            peaks[copies] = max(peaks.get(copies, 0), r.peak_anon)
    small, big = peaks[20], peaks[160]
    assert big < small * 1.25 + 32 * MIB, f"shard: {small / MIB:.0f} MiB for 0.7M tokens, {big / MIB:.0f} MiB for 5.6M"


def test_tokenize_memory_stays_flat_as_the_corpus_grows(token_store, tmp_path):
    peaks = {}
    for copies in (200, 1600):  # 11 MB and 86 MB of Shakespeare (the reader's buffers are full at both)
        corpus = repeat_file(PLAIN, tmp_path / f"plain{copies}.txt", copies)
        r = bertprep("tokenize", corpus, "--out", tmp_path / f"tokens{copies}", "--vocab", token_store / "vocab.txt")
        assert r.code == 0, r.err
        peaks[copies] = r.peak_rss
        corpus.unlink()
    small, big = peaks[200], peaks[1600]
    assert big < small * 1.25 + 32 * MIB, f"tokenize: {small / MIB:.0f} MiB for 11 MB, {big / MIB:.0f} MiB for 86 MB"
