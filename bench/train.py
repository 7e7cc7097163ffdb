"""Training-step and loader throughput: our BERT next to HuggingFace `BertForMaskedLM`.

    python -m bench.train                        # tiny and mini, batch 32, seq 128, CPU (+ CUDA if present)
    python -m bench.train --shapes tiny --steps 20 --json out.json

Both models get the same weights (through trainer/hf.py), batch, sequence length, dropout, AdamW
(same decay groups), threads and precision (fp32 on CPU, bf16 autocast on CUDA); their steps are
timed alternately so a busy machine slows both alike, and the median step time is reported as
tokens/s (batch x seq). The difference measured is the design: HF computes vocabulary logits at all
T positions, ours only at the P positions the shards chose for prediction. On CUDA the model-FLOPs
utilisation of our step is shown too (matmul FLOPs, against the card's dense bf16 peak).

The loader part streams synthetic shards (4 files, seq 128, vocab 30522) through ShardStream and the
pinned-ring Prefetcher alone, with the shards' static masks and re-masked at --mask-prob (trainer/remask.py)
alternately, and reports samples/s next to what our training step consumes; then a
short `train()` run reports the share of step time spent waiting for data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bertprep.shards.reader import open_shards
from bertprep.trainer.config import PRESETS, train_config
from bertprep.trainer.hf import hf_config, to_hf
from bertprep.trainer.model import Bert, ModelConfig, flops_per_step, pretraining_loss
from bertprep.trainer.optim import param_groups
from bertprep.trainer.prefetch import Prefetcher
from bertprep.trainer.remask import MaskingConfig, Remasker, vocab_from
from bertprep.trainer.stream import ShardStream, StreamConfig
from bertprep.trainer.synthetic import write_synthetic_shards

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}  # dense, per GPU


def make_batch(B: int, T: int, P: int, V: int, device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    pos = torch.sort(torch.rand(B, T - 2, generator=g).argsort(1)[:, :P] + 1, dim=1).values
    ids = torch.randint(5, V, (B, T), generator=g)
    b = {"input_ids": ids, "token_type_ids": (torch.arange(T)[None] >= T // 2).long().expand(B, T).contiguous(),
         "length": torch.full((B,), T), "masked_positions": pos, "masked_ids": torch.randint(5, V, (B, P), generator=g),
         "num_masked": torch.full((B,), P)}
    labels = torch.full((B, T), -100)
    labels.scatter_(1, pos, b["masked_ids"])
    b["labels"], b["attention_mask"] = labels, torch.ones(B, T, dtype=torch.long)
    return {k: v.to(device) for k, v in b.items()}


def _adamw(model, device):
    """The trainer's optimizer for both: BERT's hyper-parameters and decay groups, fused."""
    return torch.optim.AdamW(param_groups(model, 0.01), lr=1e-4, betas=(0.9, 0.999), eps=1e-6, fused=True)


def bench_step(shape: str, *, B: int, T: int, P: int, V: int, steps: int, warmup: int, device) -> dict:
    import transformers

    layers, hidden, heads, ffn = PRESETS[shape]
    cfg = ModelConfig(vocab_size=V, max_len=512, layers=layers, hidden=hidden, heads=heads, ffn=ffn)
    torch.manual_seed(0)
    ours = Bert(cfg).to(device).train()
    theirs = transformers.BertForMaskedLM(transformers.BertConfig(**hf_config(cfg), attn_implementation="sdpa"))
    theirs.load_state_dict(to_hf(ours.state_dict()), strict=False)
    theirs.to(device).train()
    batch = make_batch(B, T, P, V, device)
    bf16 = device.type == "cuda"

    def ctx():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    opts = {"ours": _adamw(ours, device), "hf": _adamw(theirs, device)}

    def step_ours():
        with ctx():
            mlm, nsp = ours(batch["input_ids"], batch["token_type_ids"], batch["length"], batch["masked_positions"])
            loss, _ = pretraining_loss(mlm, nsp, batch)
        loss.backward()
        opts["ours"].step()
        opts["ours"].zero_grad(set_to_none=True)

    def step_hf():
        with ctx():
            loss = theirs(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                          attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        opts["hf"].step()
        opts["hf"].zero_grad(set_to_none=True)

    times, cpu = {"ours": [], "hf": []}, {"ours": [], "hf": []}
    for i in range(warmup + steps):
        for name, fn in (("ours", step_ours), ("hf", step_hf)):  # alternate: load hits both alike
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    out = {"shape": shape, "device": device.type, "batch": B, "seq": T, "predictions": P, "vocab": V,
           "threads": torch.get_num_threads(), "ours_step_s": med["ours"], "hf_step_s": med["hf"],
           "ours_tokens_per_s": B * T / med["ours"], "hf_tokens_per_s": B * T / med["hf"],
           "ours_samples_per_s": B / med["ours"], "speedup": med["hf"] / med["ours"],
           "ours_cpu_s": med_cpu["ours"], "hf_cpu_s": med_cpu["hf"], "cpu_speedup": med_cpu["hf"] / med_cpu["ours"]}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        if peak:
            out["ours_mfu"] = flops_per_step(cfg, B, T, P, last_layer_rows=1 + P) / med["ours"] / peak
            out["hf_mfu"] = flops_per_step(cfg, B, T, T) / med["hf"] / peak
    return out


def bench_loader(folder: Path, *, B: int, batches: int, mask_prob: float | None = None,
                 whole_word: bool = False) -> dict:
    """Samples/s of the shuffled stream through the ring, and the CPU time per sample of the reading
    thread's work alone; with `mask_prob`, every batch re-masked at that rate (80/10/10) on the way,
    as `--mask-prob` does (`whole_word`: with a vocab in which every other word id is a ## piece)."""
    shards = open_shards(sorted(folder.glob("train_*.arrow")))
    stream = ShardStream(shards, StreamConfig(batch_size=B, seed=1))
    remask = None
    if mask_prob is not None:
        meta = shards[0].meta
        words = [f"{'##' if i % 2 else ''}w{i}" if i >= 5 else f"[S{i}]" for i in range(meta["vocab_size"])]
        remask = Remasker(MaskingConfig(mask_prob=mask_prob, whole_word=whole_word),
                          vocab_from(meta, words if whole_word else None), seed=1)
    with Prefetcher(stream, torch.device("cpu"), ring=4, remask=remask) as feed:
        for _ in range(64):  # warm the page cache and the ring
            feed.next()
        t0 = time.perf_counter()
        for _ in range(batches):
            feed.next()
        dt = time.perf_counter() - t0
    c0 = time.process_time()  # the reading thread's work alone, in this thread: CPU seconds, robust to load
    for i in range(0, batches, 256):
        stream.batches(i, min(256, batches - i), remask)
    cpu = time.process_time() - c0
    return {"batch": B, "batches": batches, "loader_samples_per_s": batches * B / dt,
            "reader_cpu_us_per_sample": cpu / (batches * B) * 1e6,
            "files": len(shards), "examples": int(sum(s.num_examples for s in shards))}


def bench_data_wait(folder: Path, out: Path, *, B: int, steps: int, mask_prob: float | None = None) -> dict:
    from bertprep.trainer.loop import train

    cfg = train_config(shards=tuple(map(str, sorted(folder.glob("train_*.arrow")))), out=str(out), model="tiny",
                      batch_size=B, max_steps=steps, warmup_steps=min(10, steps), log_interval=steps, val_interval=0,
                      ckpt_interval=steps, quiet=True, tensorboard=False, mask_prob=mask_prob)
    s = train(cfg)
    return {"train_steps": steps, "data_wait_frac": s["data_wait_frac"], "elapsed_s": s["elapsed_s"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="tiny,mini", help="comma-separated presets; '' for the loader only")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--predictions", type=int, default=20, help="masked positions per example (0.15 x 128)")
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--loader-batches", type=int, default=3000)
    p.add_argument("--mask-prob", type=float, default=0.3, help="rate of the loader's re-masking variant")
    p.add_argument("--train-steps", type=int, default=60, help="steps of the data-wait run")
    p.add_argument("--no-cuda", action="store_true")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() and not a.no_cuda else [])
    results = {"steps": [], "loader": None}
    print(f"training step, batch {a.batch} x seq {a.seq}, {a.predictions} predictions/example, vocab {a.vocab}, "
          f"{torch.get_num_threads()} threads, median of {a.steps} steps")
    print(f"{'shape':<6} {'device':<6} {'ours tok/s':>12} {'HF tok/s':>12} {'ratio':>7} {'CPU-s ratio':>12} {'MFU':>6}")
    for dev in devices:
        for shape in filter(None, a.shapes.split(",")):
            r = bench_step(shape, B=a.batch, T=a.seq, P=a.predictions, V=a.vocab, steps=a.steps, warmup=a.warmup,
                           device=dev)
            results["steps"].append(r)
            mfu = f"{r['ours_mfu']:.1%}" if "ours_mfu" in r else "-"
            print(f"{shape:<6} {dev.type:<6} {r['ours_tokens_per_s']:>12,.0f} {r['hf_tokens_per_s']:>12,.0f} "
                  f"{r['speedup']:>6.2f}x {r['cpu_speedup']:>11.2f}x {mfu:>6}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "shards"
        write_synthetic_shards(folder, rows=[50_000] * 4, max_len=a.seq, vocab_size=a.vocab, batch=10_000)
        # static masks, re-masking and whole-word re-masking in turn, three rounds (the best of each
        # kept), so that the load of a shared machine hits them alike
        kinds = {"static": {}, "remask": dict(mask_prob=a.mask_prob),
                 "whole_word": dict(mask_prob=a.mask_prob, whole_word=True)}
        runs = [(k, bench_loader(folder, B=a.batch, batches=a.loader_batches, **kw))
                for _ in range(3) for k, kw in kinds.items()]
        best = {k: max((r for n, r in runs if n == k), key=lambda r: r["loader_samples_per_s"]) for k in kinds}
        loader = best["static"] | {"remask_prob": a.mask_prob}
        for k in ("remask", "whole_word"):
            loader[f"{k}_samples_per_s"] = best[k]["loader_samples_per_s"]
        for k in kinds:
            loader[f"{k}_reader_cpu_us_per_sample"] = min(r["reader_cpu_us_per_sample"] for n, r in runs if n == k)
        wait = bench_data_wait(folder, Path(tmp) / "run", B=a.batch, steps=a.train_steps)
        wait["remask_data_wait_frac"] = bench_data_wait(folder, Path(tmp) / "remask", B=a.batch, steps=a.train_steps,
                                                        mask_prob=a.mask_prob)["data_wait_frac"]
    loader |= wait
    results["loader"] = loader
    print(f"loader alone, batch {a.batch}, {loader['files']} files, ring of host buffers (best of 3 rounds):")
    print(f"{'masks':<28} {'samples/s':>10} {'ratio':>6} {'reader CPU us/sample':>20}")
    for k, label in (("static", "shards' static"), ("remask", f"re-masked at {a.mask_prob:g}"),
                     ("whole_word", f"re-masked at {a.mask_prob:g}, whole words")):
        rate = loader["loader_samples_per_s" if k == "static" else f"{k}_samples_per_s"]
        print(f"{label:<28} {rate:>10,.0f} {rate / loader['loader_samples_per_s']:>5.2f}x "
              f"{loader[f'{k}_reader_cpu_us_per_sample']:>20.2f}")
    print(f"static loader: {loader['loader_samples_per_s']:,.0f} samples/s", end="")
    if results["steps"]:
        consumed = max(r["ours_samples_per_s"] for r in results["steps"])
        loader["fastest_step_samples_per_s"] = consumed
        print(f" vs {consumed:,.0f} samples/s consumed by our fastest step above: "
              f"{loader['loader_samples_per_s'] / consumed:,.0f}x headroom", end="")
    print()
    print(f"data wait in a {a.train_steps}-step tiny train() run: {loader['data_wait_frac']:.2%} of its time; "
          f"with --mask-prob {a.mask_prob:g}: {loader['remask_data_wait_frac']:.2%}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
