"""Pictures of runs: `bertprep plot` (curves from metrics.jsonl) and `bertprep report` (one
self-contained HTML page). Imports finetune/, trainer/ and shards/; only the CLI imports it."""
