"""The trainer: a BERT encoder in our own torch code, a streaming round-robin shard loader, the loop.

Entry points: `python trainer/run.py --shards shards/train_*` (or under `torchrun`), and from
Python `bertprep.trainer.run.train(cfg)` / `bertprep.trainer.run.evaluate(...)`. Reads shards
only through `bertprep.shards`; never imports `preprocess`.
"""
