"""Packing: `bertprep shard --strategy pack` next to `segment`, and the per-document attention's
two implementations next to each other.

    python -m bench.pack                          # tiny, batch 32, seq 128, CPU
    python -m bench.pack --shapes tiny mini --steps 30 --json out.json

1. The shipped corpus (data/pydocs.wiki.tokens, an 8k vocab as in `make demo`) is sharded at 128
   tokens with both strategies: padding and packing efficiency from their manifests.
2. Training steps of the same model (same weights, AdamW, fp32 on CPU) on real batches of each,
   timed alternately so a busy machine slows both alike: real (non-[PAD]) tokens per second, the
   median over steps. `pack` batches go through the block-diagonal masks and restarted positions.
3. The attention alone at the masks of real `pack` batches: SDPA with a boolean (B, 1, T, T) mask
   against compiled FlexAttention with a BlockMask built per batch (as training must: every batch
   has its own boundaries); the compile time is reported apart. Forward only: torch 2.13's
   FlexAttention has no backward on CPU (NotImplementedError), so on CPU it cannot train at all;
   SDPA's forward + backward is shown beside.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.train import _adamw
from bertprep.shards.reader import open_shards
from bertprep.trainer.config import PRESETS
from bertprep.trainer.model import Bert, ModelConfig, document_layout, pretraining_loss
from bertprep.trainer.stream import ShardStream, StreamConfig

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "data" / "pydocs.wiki.tokens"


def bertprep(*args) -> None:
    subprocess.run([sys.executable, "-m", "bertprep.cli", *map(str, args)], check=True, stdout=subprocess.DEVNULL)


def make_shards(tmp: Path, max_len: int) -> dict[str, Path]:
    tokens = tmp / "tokens"
    bertprep("tokenize", CORPUS, "--out", tokens, "--vocab-size", 8000, "--overwrite")
    out = {}
    for strategy in ("segment", "pack"):
        out[strategy] = tmp / strategy
        bertprep("shard", "--tokens", tokens, "--out", out[strategy], "--max-len", max_len, "--seed", 123,
                 "--split", "0.9,0.05,0.05", "--strategy", strategy, "--overwrite")
    return out


def batches(folder: Path, B: int, n: int) -> list[dict[str, torch.Tensor]]:
    shards = open_shards(sorted(folder.glob("train_*.arrow")))
    stream = ShardStream(shards, StreamConfig(batch_size=B, seed=1))
    return [{k: torch.from_numpy(v.astype("int64")) for k, v in cols.items()} for _, _, cols in stream.batches(0, n)]


def bench_steps(shape: str, data: dict[str, list], *, vocab: int, T: int, steps: int, warmup: int) -> dict:
    layers, hidden, heads, ffn = PRESETS[shape]
    torch.manual_seed(0)
    base = Bert(ModelConfig(vocab_size=vocab, max_len=T, layers=layers, hidden=hidden, heads=heads, ffn=ffn)).train()
    models = {k: copy.deepcopy(base) for k in data}
    opts = {k: _adamw(m, "cpu") for k, m in models.items()}
    rates: dict[str, list[float]] = {k: [] for k in data}
    for i in range(warmup + steps):
        for k, model in models.items():  # alternate: load hits both alike
            b = data[k][i % len(data[k])]
            t0 = time.perf_counter()
            mlm, nsp = model(b["input_ids"], b["token_type_ids"], b["length"], b["masked_positions"],
                             b.get("doc_starts"))
            loss, _ = pretraining_loss(mlm, nsp, b, accuracy=False)
            loss.backward()
            opts[k].step()
            opts[k].zero_grad(set_to_none=True)
            if i >= warmup:
                rates[k].append(int(b["length"].sum()) / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"shape": shape, "threads": torch.get_num_threads(), "segment_real_tokens_per_s": med["segment"],
            "pack_real_tokens_per_s": med["pack"], "ratio": med["pack"] / med["segment"]}


def bench_attention(data: list[dict], *, heads: int, D: int, steps: int) -> dict:
    """One attention at the masks of real pack batches: SDPA boolean vs FlexAttention, forward."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, T = data[0]["input_ids"].shape
    g = torch.Generator().manual_seed(0)
    qkv = [torch.randn(B, heads, T, D, generator=g) for _ in range(3)]
    flex = torch.compile(flex_attention, dynamic=False)

    def sdpa(b):
        piece, _ = document_layout(b["doc_starts"], T)
        keep = torch.arange(T)[None] < b["length"][:, None]
        mask = ((piece[:, :, None] == piece[:, None, :]) & keep[:, None, :])[:, None]
        return F.scaled_dot_product_attention(*qkv, attn_mask=mask)

    def flexed(b):
        piece, _ = document_layout(b["doc_starts"], T)
        length = b["length"]

        def same_doc(bi, h, q, kv):
            return (piece[bi, q] == piece[bi, kv]) & (kv < length[bi])

        block = create_block_mask(same_doc, B, None, T, T, device="cpu")
        return flex(*qkv, block_mask=block)

    def sdpa_train(b):
        for t in qkv:
            t.requires_grad_(True)
        sdpa(b).sum().backward()
        for t in qkv:
            t.requires_grad_(False)
            t.grad = None

    t0 = time.perf_counter()
    flexed(data[0])  # the compile
    compile_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {"sdpa": [], "flex": [], "sdpa_fwd_bwd": []}
    for i in range(2 + steps):
        for name, fn in (("sdpa", sdpa), ("flex", flexed), ("sdpa_fwd_bwd", sdpa_train)):
            t0 = time.perf_counter()
            fn(data[i % len(data)])
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return {"batch": B, "seq": T, "heads": heads, "head_dim": D, "sdpa_ms": med["sdpa"], "flex_ms": med["flex"],
            "flex_over_sdpa": med["flex"] / med["sdpa"], "sdpa_fwd_bwd_ms": med["sdpa_fwd_bwd"],
            "flex_compile_s": compile_s}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.pack", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=["tiny"], choices=list(PRESETS))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    results: dict = {"steps": [], "shards": {}}
    with tempfile.TemporaryDirectory(prefix="bench-pack-") as tmp:
        folders = make_shards(Path(tmp), args.max_len)
        for strategy, folder in folders.items():
            m = json.loads(next(folder.glob("*.manifest.json")).read_text())
            results["shards"][strategy] = {"examples": sum(s["examples"] for s in m["splits"].values()),
                                           "padding_fraction": m["padding_fraction"],
                                           "packing_efficiency": m["packing_efficiency"]}
            print(f"{strategy:8s} {results['shards'][strategy]['examples']:6,} examples, padding "
                  f"{100 * m['padding_fraction']:.2f}%, packing efficiency {100 * m['packing_efficiency']:.2f}%")
        data = {k: batches(f, args.batch_size, 8) for k, f in folders.items()}
        vocab = open_shards(sorted(folders["pack"].glob("train_*.arrow")))[0].meta["vocab_size"]
        for shape in args.shapes:
            r = bench_steps(shape, data, vocab=vocab, T=args.max_len, steps=args.steps, warmup=args.warmup)
            results["steps"].append(r)
            print(f"{shape}: real tokens/s segment {r['segment_real_tokens_per_s']:,.0f}, pack "
                  f"{r['pack_real_tokens_per_s']:,.0f} = {r['ratio']:.2f}x ({r['threads']} threads)")
        heads = PRESETS[args.shapes[0]][2]
        a = results["attention"] = bench_attention(data["pack"], heads=heads, D=64, steps=args.steps)
        print(f"attention forward (B {a['batch']}, T {a['seq']}, {heads} heads x 64): SDPA boolean mask "
              f"{a['sdpa_ms']:.2f} ms, FlexAttention {a['flex_ms']:.2f} ms = {a['flex_over_sdpa']:.2f}x SDPA's time "
              f"(compile {a['flex_compile_s']:.1f} s); SDPA forward + backward {a['sdpa_fwd_bwd_ms']:.2f} ms, "
              "FlexAttention: no backward on CPU")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
