"""Fine-tuning and inference on a pretrained encoder: labelled data, the classifier, its checks,
`bertprep finetune` and `bertprep predict`. Imports trainer/ (the encoder, its loop pieces) and
shards/ (errors, atomic writes); nothing in trainer/ imports it."""
