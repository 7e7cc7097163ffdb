"""The on-disk formats of bertprep: token store, shards, manifests. The one place that knows the bytes.

Nothing in this package imports torch, so the CLI stays fast to start.
"""
