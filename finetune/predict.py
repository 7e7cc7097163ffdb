"""`bertprep predict`: fill-mask with a pretraining checkpoint, class probabilities (and the
rating, where the run trained a rating head) with a fine-tuned one. Both load checkpoints with
`weights_only=True` and use the run's own tokenizer. A sentence-pair model reads each input as
`first sentence<TAB>second sentence`."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from bertprep.shards.errors import InputError, ShardFormatError
from bertprep.trainer import checkpoint as ckpt_io
from bertprep.trainer.artifacts import find_tokenizer, resolve_checkpoint
from bertprep.trainer.model import ModelConfig
from bertprep.finetune.classifier import CLASSIFIER_FORMAT, collate, encode_texts, encoding_tokenizer, load_classifier
from bertprep.trainer.model import Bert


def _kind(path: Path) -> str:
    ckpt = ckpt_io.read_torch_file(path)  # refuses pickle payloads and truncated files in one line
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt == CLASSIFIER_FORMAT:
        return "classifier"
    if fmt == ckpt_io.FORMAT:
        return "mlm"
    raise ShardFormatError(f"{path}: not a bertprep checkpoint")


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
        with torch.no_grad():
            logits, _ = model(ids, torch.zeros_like(ids), torch.tensor([ids.size(1)]), positions[None])
        probs = logits[0].float().softmax(-1)                                   # (M, V)
        top = probs.topk(min(top_k, probs.size(-1)), dim=-1)
        out.append([[{"token": vocab[i], "prob": round(float(p), 6)} for p, i in zip(pv.tolist(), iv.tolist())]
                    for pv, iv in zip(top.values, top.indices)])
    return out


def classify(path: Path, sentences: list[str]) -> dict:
    """Class probabilities and/or ratings of a fine-tuned checkpoint, 32 sentences at a time."""
    model, ckpt = load_classifier(path)
    tok = encoding_tokenizer(find_tokenizer(ckpt, path), ckpt["config"]["max_len"])
    texts, texts_b = sentences, None
    if ckpt.get("pair"):
        halves = [s.split("\t", 1) for s in sentences]
        bad = [s for s, h in zip(sentences, halves) if len(h) != 2]
        if bad:
            raise InputError(f"this model reads sentence pairs: give 'first<TAB>second' ({bad[0]!r} has no tab)")
        texts, texts_b = [h[0] for h in halves], [h[1] for h in halves]
    seqs = encode_texts(tok, texts, texts_b)
    probs, ratings = [], []
    with torch.no_grad():
        for start in range(0, len(seqs), 32):
            batch = collate(seqs[start:start + 32], ckpt["data"]["special_ids"]["pad"])
            logits, rating = model.heads(batch["input_ids"], batch["token_type_ids"], batch["lengths"])
            if logits is not None:
                probs += [[round(float(p), 6) for p in row] for row in logits.float().softmax(-1).tolist()]
            if rating is not None:
                ratings += [round(float(r), 6) for r in rating.float().tolist()]
    if not probs:
        return {"kind": "rate", "results": ratings}
    return {"kind": "classify", "results": probs, **({"ratings": ratings} if ratings else {})}


def predict(checkpoint: str | Path, sentences: list[str], top_k: int = 5) -> dict:
    """{"kind": "fill-mask", "results": ...}, {"kind": "classify", "results": [[p0, p1, ...], ...]}
    (+ "ratings": [r, ...] with a rating head) or {"kind": "rate", "results": [r, ...]}."""
    if not sentences:
        raise InputError("give at least one sentence (as arguments or with --file)")
    path = resolve_checkpoint(checkpoint)
    if _kind(path) == "classifier":
        return classify(path, sentences)
    ckpt = ckpt_io.load(path)
    model = Bert(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    tok = Tokenizer.from_file(str(find_tokenizer(ckpt, path)))  # [MASK] written in the text is the mask here
    tok.enable_truncation(model.cfg.max_len)
    vocab = [""] * tok.get_vocab_size()
    for token, i in tok.get_vocab().items():
        vocab[i] = token
    return {"kind": "fill-mask", "results": fill_mask(model, tok, sentences, top_k, vocab)}
