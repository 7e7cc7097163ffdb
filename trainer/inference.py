"""`bertprep predict`: fill-mask with a pretraining checkpoint, class probabilities with a
fine-tuned one. Both load checkpoints with `weights_only=True` and use the run's own tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from bertprep.shards.errors import InputError, ShardFormatError
from bertprep.trainer import checkpoint as ckpt_io
from bertprep.trainer.artifacts import find_tokenizer, resolve_checkpoint
from bertprep.trainer.config import ModelConfig
from bertprep.trainer.finetune import CLASSIFIER_FORMAT, collate, encoding_tokenizer, load_classifier
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


def predict(checkpoint: str | Path, sentences: list[str], top_k: int = 5) -> dict:
    """{"kind": "fill-mask", "results": ...} or {"kind": "classify", "results": [[p0, p1, ...], ...]}."""
    if not sentences:
        raise InputError("give at least one sentence (as arguments or with --file)")
    path = resolve_checkpoint(checkpoint)
    if _kind(path) == "classifier":
        model, ckpt = load_classifier(path)
        tok = encoding_tokenizer(find_tokenizer(ckpt, path), ckpt["config"]["max_len"])
        seqs = [torch.tensor(e.ids).numpy() for e in tok.encode_batch(sentences, add_special_tokens=True)]
        batch = collate(seqs, ckpt["data"]["special_ids"]["pad"])
        with torch.no_grad():
            probs = model(batch["input_ids"], batch["token_type_ids"], batch["lengths"]).float().softmax(-1)
        return {"kind": "classify", "results": [[round(float(p), 6) for p in row] for row in probs.tolist()]}
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
