"""The CUDA paths, skipped without a GPU: the pinned ring's side-stream copies hand out exactly the
stream's batches on the device, and a short bf16 training run (fused AdamW) logs finite losses."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bertprep.shards.reader import open_shards
from bertprep.trainer.config import train_config
from bertprep.trainer.prefetch import Prefetcher
from bertprep.trainer.run import train
from bertprep.trainer.stream import ShardStream, StreamConfig
from bertprep.trainer.synthetic import write_synthetic_shards

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cuda_prefetcher_matches_the_stream(tmp_path):
    paths = write_synthetic_shards(tmp_path, rows=[200, 150], max_len=64, vocab_size=70000, nsp=True)
    stream = ShardStream(open_shards(paths), StreamConfig(batch_size=16, seed=2))
    with Prefetcher(stream, torch.device("cuda"), ring=3) as feed:
        for i in range(30):
            batch = feed.next()
            ref = stream.batch(i)
            for k, v in batch.items():
                assert v.is_cuda and v.dtype == torch.int64
                assert np.array_equal(v.cpu().numpy(), ref[k].astype(np.int64)), k  # uint32 ids too


def test_bf16_training_on_cuda(tmp_path):
    write_synthetic_shards(tmp_path / "s", rows=[256, 256], nsp=True)
    cfg = train_config(shards=tuple(map(str, sorted((tmp_path / "s").glob("train_*")))), out=str(tmp_path / "run"),
                      model="tiny", batch_size=16, max_steps=20, warmup_steps=2, lr=1e-3, log_interval=5,
                      val_interval=0, quiet=True, tensorboard=False)
    summary = train(cfg)
    assert summary["step"] == 20
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in recs if "loss" in r)


def test_packed_documents_do_not_talk_to_each_other_on_cuda():
    """The CUDA path of per-document attention (SDPA with a boolean mask: the memory-efficient
    kernel): one packed document's outputs ignore the other's tokens, in fp32 and under bf16."""
    from bertprep.trainer.model import Bert, ModelConfig

    torch.manual_seed(0)
    model = Bert(ModelConfig(vocab_size=50, max_len=16, hidden=64, heads=2, ffn=128, dropout=0.0)).cuda().eval()
    ids = torch.randint(5, 50, (1, 16), device="cuda")
    ids[0, [0, 7]], ids[0, [6, 14]], ids[0, 15] = 2, 3, 0
    other = ids.clone()
    other[0, 8:14] = torch.randint(5, 50, (6,), device="cuda")
    tt, length, starts = torch.zeros_like(ids), torch.tensor([15], device="cuda"), torch.tensor([[0, 7]], device="cuda")
    for dtype in (torch.float32, torch.bfloat16):
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            h1 = model.encode(ids, tt, length, doc_starts=starts)
            h2 = model.encode(other, tt, length, doc_starts=starts)
            alone = model.encode(ids[:, :7], tt[:, :7], torch.tensor([7], device="cuda"))
        torch.testing.assert_close(h1[0, :7], h2[0, :7], rtol=0, atol=1e-6)
        assert not torch.allclose(h1[0, 7:15], h2[0, 7:15])
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(h1[0, :7].float(), alone[0].float(), rtol=tol, atol=tol)
