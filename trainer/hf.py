"""The rename table between our state dict and HuggingFace `BertForPreTraining` / `BertForMaskedLM`.

Every tensor of a post-norm model maps to exactly one HF key of the same shape; HF's state dict
also lists the two tied tensors a second time (`cls.predictions.decoder.weight` is the word
embedding, `cls.predictions.decoder.bias` is `cls.predictions.bias`), which `to_hf` writes and
`from_hf` checks and drops. Pre-norm models (`--norm pre`) have no HF counterpart. This module never
imports `transformers`; it only speaks its key names.
"""

from __future__ import annotations

import re

import torch

from bertprep.shards.errors import ConfigError
from bertprep.trainer.model import ModelConfig

# ours -> HF, with {i} for the layer index.
RENAMES: list[tuple[str, str]] = [
    ("embed.tok.weight", "bert.embeddings.word_embeddings.weight"),
    ("embed.pos.weight", "bert.embeddings.position_embeddings.weight"),
    ("embed.seg.weight", "bert.embeddings.token_type_embeddings.weight"),
    ("embed.norm.{p}", "bert.embeddings.LayerNorm.{p}"),
    ("layers.{i}.attn.q.{p}", "bert.encoder.layer.{i}.attention.self.query.{p}"),
    ("layers.{i}.attn.k.{p}", "bert.encoder.layer.{i}.attention.self.key.{p}"),
    ("layers.{i}.attn.v.{p}", "bert.encoder.layer.{i}.attention.self.value.{p}"),
    ("layers.{i}.attn.proj.{p}", "bert.encoder.layer.{i}.attention.output.dense.{p}"),
    ("layers.{i}.attn_norm.{p}", "bert.encoder.layer.{i}.attention.output.LayerNorm.{p}"),
    ("layers.{i}.ffn.up.{p}", "bert.encoder.layer.{i}.intermediate.dense.{p}"),
    ("layers.{i}.ffn.down.{p}", "bert.encoder.layer.{i}.output.dense.{p}"),
    ("layers.{i}.ffn_norm.{p}", "bert.encoder.layer.{i}.output.LayerNorm.{p}"),
    ("mlm.dense.{p}", "cls.predictions.transform.dense.{p}"),
    ("mlm.norm.{p}", "cls.predictions.transform.LayerNorm.{p}"),
    ("mlm.bias", "cls.predictions.bias"),
    ("nsp.pooler.{p}", "bert.pooler.dense.{p}"),
    ("nsp.classifier.{p}", "cls.seq_relationship.{p}"),
]
# HF keys that repeat a tensor already listed: (tied key, the key it repeats).
TIED = [("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
        ("cls.predictions.decoder.bias", "cls.predictions.bias")]
# HF buffers that are not weights.
IGNORED_HF = re.compile(r"^bert\.embeddings\.(position_ids|token_type_ids)$")


def _pattern(template: str) -> re.Pattern:
    rx = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(f"^{rx}$")


_OURS = [(_pattern(a), b) for a, b in RENAMES]
_THEIRS = [(_pattern(b), a) for a, b in RENAMES]


def _rename(key: str, table) -> str | None:
    for rx, target in table:
        m = rx.match(key)
        if m:
            return target.format(**m.groupdict())
    return None


def hf_key(ours: str) -> str:
    name = _rename(ours, _OURS)
    if name is None:
        raise ConfigError(f"{ours}: no HuggingFace counterpart (pre-norm models cannot be exported)")
    return name


def to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict under HF names, tied tensors listed twice as HF lists them."""
    out = {hf_key(k): v for k, v in state.items()}
    for tied, source in TIED:
        out[tied] = out[source]
    return out


def from_hf(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An HF state dict under our names; refuses unknown keys and untied duplicates."""
    out = {}
    tied = dict(TIED)
    for key, value in hf_state.items():
        if IGNORED_HF.match(key):
            continue
        if key in tied:
            source = hf_state.get(tied[key])
            if source is not None and not torch.equal(source, value):
                raise ConfigError(f"{key} differs from {tied[key]}; our decoder is tied to it")
            continue
        ours = _rename(key, _THEIRS)
        if ours is None:
            raise ConfigError(f"{key}: no counterpart in our BERT")
        out[ours] = value
    return out


def hf_config(cfg: ModelConfig, pad_id: int = 0) -> dict:
    """Keyword arguments of `transformers.BertConfig` for a model of our config."""
    if cfg.norm != "post":
        raise ConfigError("only post-norm models (--norm post) have a HuggingFace BERT counterpart")
    return {
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden, "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads, "intermediate_size": cfg.ffn, "hidden_act": "gelu",
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
        "max_position_embeddings": cfg.max_len, "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.layer_norm_eps, "initializer_range": cfg.init_std, "pad_token_id": pad_id,
    }
