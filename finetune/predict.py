"""`bertprep predict`: fill-mask with a pretraining checkpoint, class probabilities (and the
rating, where the run trained a rating head) with a fine-tuned one. The file is read once,
`weights_only=True`, and checked by its format's own loader (`trainer/checkpoint.py`,
`finetune/classifier.py`); sentences are encoded by the run's own tokenizer. A sentence-pair model
reads each input as `first sentence<TAB>second sentence`."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from bertprep.shards.errors import InputError, ShardFormatError
from bertprep.trainer import checkpoint as ckpt_io
from bertprep.trainer.artifacts import find_tokenizer, resolve_checkpoint, token_list
from bertprep.trainer.evaluation import top_guesses
from bertprep.finetune import checks
from bertprep.finetune.classifier import CLASSIFIER_FORMAT, encode_texts, encoding_tokenizer, load_classifier, run_heads
from bertprep.finetune.labelled import read_labelled
from bertprep.trainer.model import Bert


def fill_mask(model: Bert, tok: Tokenizer, sentences: list[str], top_k: int, vocab: list[str]) -> list[list[list[dict]]]:
    """For each sentence, for each [MASK] in order, the top-k tokens with probabilities, best first."""
    mask_id = tok.token_to_id("[MASK]")
    encodings = tok.encode_batch(sentences, add_special_tokens=True)
    out = []
    for sentence, enc in zip(sentences, encodings):
        ids = torch.tensor([enc.ids])
        positions = (ids[0] == mask_id).nonzero().flatten()
        if len(positions) == 0:
            raise InputError(f"no [MASK] in {sentence!r}: fill-mask needs at least one")
        batch = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "length": torch.tensor([ids.size(1)]),
                 "masked_positions": positions[None]}
        probs, top = top_guesses(model, batch, top_k)                          # (1, M, k)
        out.append([[{"token": vocab[i], "prob": round(float(p), 6)} for p, i in zip(pv.tolist(), iv.tolist())]
                    for pv, iv in zip(probs[0], top[0])])
    return out


def classify(path: Path, sentences: list[str], ckpt: dict | None = None) -> dict:
    """Class probabilities and/or ratings of a fine-tuned checkpoint, 32 sentences at a time."""
    model, ckpt = load_classifier(path, ckpt)
    tok = encoding_tokenizer(find_tokenizer(ckpt, path), ckpt["config"]["max_len"])
    texts, texts_b = sentences, None
    if ckpt.get("pair"):
        halves = [s.split("\t", 1) for s in sentences]
        bad = [s for s, h in zip(sentences, halves) if len(h) != 2]
        if bad:
            raise InputError(f"this model reads sentence pairs: give 'first<TAB>second' ({bad[0]!r} has no tab)")
        texts, texts_b = [h[0] for h in halves], [h[1] for h in halves]
    logits, rating = run_heads(model, encode_texts(tok, texts, texts_b), ckpt["data"]["special_ids"]["pad"], 32)
    ratings = [] if rating is None else [round(float(r), 6) for r in rating.tolist()]
    if logits is None:
        return {"kind": "rate", "results": ratings}
    probs = [[round(float(p), 6) for p in row] for row in logits.softmax(-1).tolist()]
    return {"kind": "classify", "results": probs, **({"ratings": ratings} if ratings else {})}


def predict(checkpoint: str | Path, sentences: list[str], top_k: int = 5) -> dict:
    """{"kind": "fill-mask", "results": ...}, {"kind": "classify", "results": [[p0, p1, ...], ...]}
    (+ "ratings": [r, ...] with a rating head) or {"kind": "rate", "results": [r, ...]}."""
    if not sentences:
        raise InputError("give at least one sentence (as arguments or with --file)")
    path = resolve_checkpoint(checkpoint)
    ckpt = ckpt_io.read_torch_file(path)  # refuses pickle payloads and truncated files in one line
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt == CLASSIFIER_FORMAT:
        return classify(path, sentences, ckpt)
    if fmt != ckpt_io.FORMAT:
        raise ShardFormatError(f"{path}: not a bertprep checkpoint")
    model = ckpt_io.build_model(ckpt_io.check(ckpt, path), path)
    tok = Tokenizer.from_file(str(find_tokenizer(ckpt, path)))  # [MASK] written in the text is the mask here
    tok.enable_truncation(model.cfg.max_len)
    return {"kind": "fill-mask", "results": fill_mask(model, tok, sentences, top_k, token_list(tok))}


def labelled_predictions(path: Path, data_file: str | Path, batch_size: int = 32,
                         device: torch.device | str = "cpu") -> list[dict]:
    """A fine-tuned checkpoint's predictions on a labelled file, a record per row as
    `predictions.jsonl` holds them (`finetune` writes them for its validation set, `report --val`
    for any file), read with the columns the run was trained on."""
    model, ckpt = load_classifier(path)
    ft = ckpt["config"]
    data = read_labelled(data_file, ft["text_column"], ft["label_column"] if ckpt["num_classes"] else None,
                         text_column_b=ft.get("text_column_b"), rating_column=(ckpt.get("rating") or {}).get("column"))
    tok = encoding_tokenizer(find_tokenizer(ckpt, path), ft["max_len"])
    logits, rating = run_heads(model.to(device), encode_texts(tok, data.texts, data.texts_b),
                               ckpt["data"]["special_ids"]["pad"], batch_size, device)
    return checks.prediction_records(data.texts, data.texts_b, data.labels,
                                     None if logits is None else logits.softmax(-1).numpy(), data.ratings,
                                     None if rating is None else rating.numpy())
