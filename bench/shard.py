"""Benchmark `bertprep shard` against the HuggingFace `datasets` + `transformers` MLM data path.

    python -m bench.shard CORPUS [--max-len 128] [--tokenizer tokenizer.json] [--scale 4] [--profile]
    python -m bench.shard --tokens DIR [--max-len 128] [--scale 4]

bertprep's side is the whole `run_shard`: opening (and checksumming) the token store, packing,
masking and writing Arrow shards. The HuggingFace side is what run_mlm.py does with the same text:
`datasets.load_dataset('text')`, `.map` with a `PreTrainedTokenizerFast` made from the store's
tokenizer.json, `.map(group_texts)` into max-len blocks, then `DataCollatorForLanguageModeling
(mlm_probability=0.15)` over every example in batches of --batch. Offline only: nothing is fetched
from the hub. Each side runs in its own process so peak RSS is its own.

Given a CORPUS, the token store is made first with `bertprep tokenize` (a vocab is trained, untimed,
unless --tokenizer names one) and that tokenize run is timed too, so the report also shows
bertprep text-to-shards against the HF path, which starts from text. Given --tokens DIR, the text
is the store's recorded input. With --scale K, bertprep also shards a store of K copies of the
documents to show that its memory does not grow with the store.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import (best_of, cpu_seconds, machine_line, mb, report_result, run_side, scaled_store, table,
                          versions)

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}


def side_bertprep(args) -> None:
    from bertprep.preprocess.sharding import ShardConfig, run_shard
    from bertprep.shards import options

    cfg = options.build(ShardConfig, dict(tokens=args.tokens, out=args.out, max_len=args.max_len, seed=1,
                                          workers=args.workers, overwrite=True, progress=False))
    t0, c0 = time.perf_counter(), cpu_seconds()
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        result = prof.runcall(run_shard, cfg)
        print("cProfile of run_shard (parent process; workers' packing and masking show as waits):")
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    else:
        result = run_shard(cfg)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    splits = result["manifest"]["splits"].values()
    report_result({"examples": sum(s["examples"] for s in splits), "tokens": sum(s["real_tokens"] for s in splits),
                   "seconds": seconds, "cpu_s": cpu})


def side_hf(args) -> None:
    """run_mlm.py's path, stage by stage, in one process."""
    from itertools import chain

    import datasets
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

    datasets.disable_progress_bars()
    block = args.max_len
    files = [str(p) for p in args.text]

    def group_texts(examples):  # run_mlm.py's: concatenate everything, cut into blocks, drop the rest
        joined = {k: list(chain(*examples[k])) for k in examples}
        total = len(joined["input_ids"]) // block * block
        return {k: [v[i:i + block] for i in range(0, total, block)] for k, v in joined.items()}

    t0, c0 = time.perf_counter(), cpu_seconds()
    tok = PreTrainedTokenizerFast(tokenizer_file=str(args.tokenizer), unk_token="[UNK]", sep_token="[SEP]",
                                  pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    # A fresh cache per run: a second run would otherwise load the first one's tokenized blocks.
    args.out.mkdir(parents=True, exist_ok=True)
    cache = tempfile.mkdtemp(prefix="hf-cache-", dir=args.out)
    ds = datasets.load_dataset("text", data_files=files, split="train", cache_dir=cache)
    t_load = time.perf_counter()
    ds = ds.map(lambda b: tok(b["text"], return_special_tokens_mask=True), batched=True, remove_columns=["text"],
                num_proc=args.hf_num_proc)
    t_tok = time.perf_counter()
    ds = ds.map(group_texts, batched=True, num_proc=args.hf_num_proc)
    t_group = time.perf_counter()
    collator = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=0.15, return_tensors="pt")
    examples = tokens = 0
    for start in range(0, len(ds), args.batch):
        rows = ds[start:start + args.batch]  # what a DataLoader hands the collator: one dict per example
        batch = collator([dict(zip(rows, values)) for values in zip(*rows.values())])
        examples += len(batch["input_ids"])
        tokens += int(batch["attention_mask"].sum())
    t_end = time.perf_counter()
    shutil.rmtree(cache, ignore_errors=True)
    report_result({"examples": examples, "tokens": tokens, "seconds": t_end - t0, "cpu_s": cpu_seconds() - c0,
                   "stages": {"load": t_load - t0, "tokenize": t_tok - t_load, "group": t_group - t_tok,
                              "collate": t_end - t_group}})


def measure(side: str, args, tokens: Path, tmp: Path, text: list[Path] | None = None, profile=False) -> dict:
    common = ["--side", side, "--tokens", str(tokens), "--max-len", str(args.max_len), "--workers",
              str(args.workers), "--out", str(tmp / side)]
    if side == "hf":
        extra = ["--batch", str(args.batch), "--tokenizer", str(tokens / "tokenizer.json"),
                 *(["--hf-num-proc", str(args.hf_num_proc)] if args.hf_num_proc else []),
                 *[a for p in text for a in ("--text", str(p))]]
        r = run_side("shard", common + extra, env=OFFLINE)
    else:
        r = run_side("shard", common + (["--profile"] if profile else []))
    return dict(r, examples_per_s=r["examples"] / r["seconds"])


def make_store(args, tmp: Path) -> tuple[Path, dict | None]:
    """The token store to shard, and the timed tokenize run that made it (None when given one)."""
    if args.tokens:
        return args.tokens, None
    tokenizer = args.tokenizer
    if tokenizer is None:
        from bench.tokenize import train_vocab

        tokenizer = train_vocab(args.corpus, args.vocab_size, args.workers, tmp / "vocab")
    store = tmp / "store"
    r = run_side("tokenize", ["--side", "bertprep", str(args.corpus), "--tokenizer", str(tokenizer),
                              "--workers", str(args.workers), "--out", str(store)])
    return store, r


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.shard", description=__doc__.split("\n\n")[0])
    p.add_argument("corpus", type=Path, nargs="?", help="text corpus to tokenize first (or give --tokens)")
    p.add_argument("--tokens", type=Path, help="an existing token store (its recorded input is the HF side's text)")
    p.add_argument("--max-len", type=int, default=128, help="tokens per example / HF block size")
    p.add_argument("--workers", type=int, default=0, help="bertprep worker processes; 0 = all cores")
    p.add_argument("--tokenizer", type=Path, help="fixed tokenizer.json when tokenizing CORPUS (skips training)")
    p.add_argument("--vocab-size", type=int, default=30522, help="vocab trained on CORPUS when no --tokenizer")
    p.add_argument("--batch", type=int, default=1000, help="examples per HF collator call")
    p.add_argument("--hf-num-proc", type=int, default=None, help="datasets .map num_proc (run_mlm default: none)")
    p.add_argument("--scale", type=int, default=4, help="also shard a store of K copies (0 = skip)")
    p.add_argument("--repeat", type=int, default=1, help="runs per side, alternating; the fastest is reported")
    p.add_argument("--profile", action="store_true", help="print a cProfile of bertprep's run_shard")
    p.add_argument("--side", choices=["bertprep", "hf"], help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--text", type=Path, action="append", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side == "bertprep":
        return side_bertprep(args)
    if args.side == "hf":
        return side_hf(args)
    if (args.corpus is None) == (args.tokens is None):
        p.error("give either a CORPUS or --tokens DIR")

    print(machine_line())
    print(versions("numpy", "pyarrow", "tokenizers", "datasets", "transformers", "torch"))
    with tempfile.TemporaryDirectory(prefix="bench-shard-") as tmp_name:
        tmp = Path(tmp_name)
        store, tok_run = make_store(args, tmp)
        manifest = json.loads((store / "manifest.json").read_text(encoding="utf-8"))
        text = [Path(i["path"]) for i in manifest["run"]["inputs"]]
        n_tokens = manifest["counts"]["tokens"]
        print(f"text: {', '.join(map(str, text))} ({mb(sum(p.stat().st_size for p in text))}); token store "
              f"{n_tokens:,} tokens, {manifest['counts']['documents']:,} documents; --max-len {args.max_len}; "
              f"bertprep workers: {args.workers or os.cpu_count()}")
        runs: dict[str, list[dict]] = {"bertprep": [], "hf": []}
        for i in range(args.repeat):
            runs["bertprep"].append(measure("bertprep", args, store, tmp, profile=args.profile and i == 0))
            runs["hf"].append(measure("hf", args, store, tmp, text))
        best = {side: best_of(rs, "examples_per_s") for side, rs in runs.items()}
        hf, bp = best["hf"], best["bertprep"]
        names = {"bertprep": "bertprep shard (token store -> shards)",
                 "hf": "HF datasets+transformers (text -> masked batches)"}
        rows = [[names[s], f"{r['examples']:,}", f"{r['tokens']:,}", f"{r['seconds']:.2f}", f"{r['cpu_s']:.2f}",
                 f"{r['examples_per_s']:,.0f}", mb(r["peak_rss"]), mb(r["peak_anon_tree"]),
                 f"{r['examples_per_s'] / hf['examples_per_s']:.1f}x"] for s, r in best.items()]
        if tok_run:
            seconds = tok_run["seconds"] + bp["seconds"]
            rows.insert(1, ["bertprep tokenize + shard (text -> shards)", f"{bp['examples']:,}", f"{bp['tokens']:,}",
                            f"{seconds:.2f}", f"{tok_run['cpu_s'] + bp['cpu_s']:.2f}", f"{bp['examples'] / seconds:,.0f}",
                            mb(max(tok_run["peak_rss"], bp["peak_rss"])),
                            mb(max(tok_run["peak_anon_tree"], bp["peak_anon_tree"])),
                            f"{bp['examples'] / seconds / hf['examples_per_s']:.1f}x"])
        print()
        print(table(rows, ["side", "examples", "real tokens", "seconds", "CPU s", "examples/s", "peak RSS",
                           "peak anon (all procs)", "vs HF"]))
        st = hf["stages"]
        print(f"\nHF stages: load {st['load']:.1f}s, tokenize {st['tokenize']:.1f}s, group {st['group']:.1f}s "
              f"({hf['examples'] / (st['load'] + st['tokenize'] + st['group']):,.0f} examples/s to here), "
              f"collate {st['collate']:.1f}s ({hf['examples'] / st['collate']:,.0f} examples/s)")
        print(f"bertprep shard / HF = {bp['examples_per_s'] / hf['examples_per_s']:.1f}x examples/s (target >= 10x); "
              f"real tokens/s {bp['tokens'] / bp['seconds'] / (hf['tokens'] / hf['seconds']):.1f}x "
              "(bertprep's segment examples are padded at document ends and short targets, HF's are full 128-token "
              "blocks)")

        if args.scale > 1:
            big = scaled_store(store, tmp / f"store-x{args.scale}", args.scale)
            r = measure("bertprep", args, big, tmp)
            print(f"\npeak memory vs token store size (bertprep shard):\n" + table([
                [f"{n_tokens:,} tokens", f"{bp['examples']:,}", f"{bp['examples_per_s']:,.0f}", mb(bp["peak_rss"]),
                 mb(bp["peak_pss_tree"]), mb(bp["peak_anon_tree"])],
                [f"{n_tokens * args.scale:,} tokens ({args.scale} copies)", f"{r['examples']:,}",
                 f"{r['examples_per_s']:,.0f}", mb(r["peak_rss"]), mb(r["peak_pss_tree"]), mb(r["peak_anon_tree"])],
            ], ["token store", "examples", "examples/s", "peak RSS", "peak PSS (all procs)", "peak anon (all procs)"]))
            print("RSS and PSS include the memory-mapped token store's pages as workers read them (file pages the "
                  "kernel may drop); anonymous memory is what the processes hold.")


if __name__ == "__main__":
    main()
