"""bertprep: prepare BERT pretraining data and stream it into a training loop.

The package is laid out by stage: `preprocess` (text -> tokens -> examples), `shards` (every byte
on disk), `trainer` (model, streaming loader, loop). `cli.py` is the thin command-line shell.
"""

__version__ = "0.1.0"
