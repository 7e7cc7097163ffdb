"""The parts of `python -m bench.gpu` that run in a child process of their own: the environment
probe, and HuggingFace `BertForMaskedLM`'s training step, the peer our trainer is measured against.

    python -m bench.gpu_worker probe
    python -m bench.gpu_worker hf --shards DIR/train_* --batch 256 --steps 30 [--compile] [--device cpu]

Each prints one JSON object as its last stdout line. A child process per measurement keeps a
crash, a hang or an out-of-memory in one from touching the others (and from holding GPU memory).
The HF model is built from a `BertConfig` of the shape, never `from_pretrained`: nothing downloads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

OOM_EXIT = 3  # the batch does not fit: the parent tries the next smaller one


def probe(matmul_size: int) -> dict:
    """What this environment is: torch build, devices, whether torch is the system's, transformers."""
    out = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "torch_file": torch.__file__, "venv_prefix": sys.prefix,
           # a CUDA torch kept from the system python: `make install` made the venv see site-packages
           "torch_from_system": not os.path.abspath(torch.__file__).startswith(os.path.abspath(sys.prefix) + os.sep),
           "cuda_available": torch.cuda.is_available(), "device_count": torch.cuda.device_count(), "devices": []}
    try:
        import transformers
        out["transformers"] = transformers.__version__
    except ImportError as e:
        out["transformers"] = None
        out["transformers_error"] = str(e)
    if torch.cuda.is_available():
        out["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        out["bf16_matmul_tflops"] = matmul_tflops(torch.device("cuda", 0), matmul_size)
    return out


def matmul_tflops(device: torch.device, n: int) -> float:
    """Achieved dense bf16 TFLOP/s of an n x n x n matmul: the peak a device without a table entry is scored against."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    reps, t0 = 20, time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def hf_batches(paths: list[str], batch: int, count: int, device: torch.device) -> list[dict]:
    """`count` batches of the shards' rows in HF's form: attention_mask from the lengths, labels at
    the masked positions only (-100 elsewhere, as DataCollatorForLanguageModeling makes them)."""
    from bertprep.shards.reader import open_shards

    shard = open_shards(paths)[0]
    out = []
    for i in range(count):
        rows = (np.arange(batch) + i * batch) % shard.num_examples
        c = shard.take(rows)
        T = c["input_ids"].shape[1]
        labels = np.full(c["input_ids"].shape, -100, dtype=np.int64)
        real = np.arange(c["masked_positions"].shape[1])[None, :] < c["num_masked"][:, None].astype(np.int64)
        r = np.repeat(np.arange(batch)[:, None], real.shape[1], 1)
        labels[r[real], c["masked_positions"].astype(np.int64)[real]] = c["masked_ids"].astype(np.int64)[real]
        b = {"input_ids": c["input_ids"].astype(np.int64), "token_type_ids": c["token_type_ids"].astype(np.int64),
             "attention_mask": (np.arange(T)[None, :] < c["length"][:, None]).astype(np.int64), "labels": labels}
        out.append({k: torch.from_numpy(v).to(device) for k, v in b.items()})
    return out


def hf_step(args) -> dict:
    """HF's training step: `--warmup` untimed steps (compilation, autotuning), then `--steps` timed
    ones between two device syncs; the optimizer (fused AdamW, decay groups) and clipping are the trainer's."""
    import transformers

    device = torch.device(args.device)
    config = transformers.BertConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, intermediate_size=args.ffn, max_position_embeddings=512, type_vocab_size=2,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, layer_norm_eps=1e-12, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).to(device).train()
    step_model = torch.compile(model) if args.compile else model
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.999), eps=1e-6, fused=True)  # the trainer's
    bf16 = device.type == "cuda"
    batches = hf_batches(args.shards, args.batch, 8, device)  # on the device already: no input cost for HF

    def step(b):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = step_model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(args.warmup):
        step(batches[i % len(batches)])
    sync()
    t0 = time.perf_counter()
    for i in range(args.steps):
        loss = step(batches[i % len(batches)])
    final = float(loss)  # syncs
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    T = batches[0]["input_ids"].shape[1]
    return {"batch": args.batch, "seq": T, "steps": args.steps, "step_s": dt, "tokens_per_s": args.batch * T / dt,
            "loss": final, "compile": args.compile, "device": device.type, "transformers": transformers.__version__,
            "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_worker")
    sub = p.add_subparsers(dest="what", required=True)
    pr = sub.add_parser("probe")
    pr.add_argument("--matmul-size", type=int, default=8192)
    hf = sub.add_parser("hf")
    hf.add_argument("--shards", nargs="+", required=True)
    hf.add_argument("--batch", type=int, required=True)
    hf.add_argument("--steps", type=int, default=30)
    hf.add_argument("--warmup", type=int, default=10)
    hf.add_argument("--compile", action="store_true")
    hf.add_argument("--device", default="cuda")
    for name, default in (("layers", 12), ("hidden", 768), ("heads", 12), ("ffn", 3072), ("vocab", 30522)):
        hf.add_argument(f"--{name}", type=int, default=default)
    args = p.parse_args(argv)
    if args.what == "probe":
        result = probe(args.matmul_size)
    else:
        try:
            result = hf_step(args)
        except torch.cuda.OutOfMemoryError as e:  # torch.OutOfMemoryError on torch >= 2.5: the same class
            print(f"error: out of memory at batch {args.batch}: {str(e).splitlines()[0]}", file=sys.stderr)
            return OOM_EXIT
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
