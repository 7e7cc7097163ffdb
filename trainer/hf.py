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


# --- ModernBERT (`--arch modern`) ----------------------------------------------------------------
# trainer/modern.py names its parameters as transformers' ModernBertForMaskedLM does, minus the
# `model.` prefix of the encoder; the decoder's weight is the tied token embedding.
MODERN_ENCODER = ("embeddings.", "layers.", "final_norm.")
MODERN_TIED = ("decoder.weight", "model.embeddings.tok_embeddings.weight")


def modern_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A modern model's state dict under ModernBertForMaskedLM's names, the tied decoder listed."""
    out = {}
    for key, value in state.items():
        if key == "decoder_bias":
            out["decoder.bias"] = value
        else:
            out[f"model.{key}" if key.startswith(MODERN_ENCODER) else key] = value
    out[MODERN_TIED[0]] = out[MODERN_TIED[1]]
    return out


def modern_from_hf(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ModernBertForMaskedLM (or bare ModernBertModel) state dict under our names."""
    if not any(k.startswith("model.") for k in hf_state):  # a bare ModernBertModel
        hf_state = {f"model.{k}": v for k, v in hf_state.items()}
    out = {}
    for key, value in hf_state.items():
        if key == MODERN_TIED[0]:
            source = hf_state.get(MODERN_TIED[1])
            if source is not None and not torch.equal(source, value):
                raise ConfigError(f"{key} differs from {MODERN_TIED[1]}; our decoder is tied to it")
            continue
        if key == "decoder.bias":
            out["decoder_bias"] = value
        elif key.startswith("model.") and key[6:].startswith(MODERN_ENCODER):
            out[key[6:]] = value
        elif key.startswith("head."):
            out[key] = value
        else:
            raise ConfigError(f"{key}: no counterpart in our modern encoder")
    return out


def modern_hf_config(cfg: ModelConfig, special_ids: dict) -> dict:
    """config.json of transformers' ModernBertConfig for a modern model of our config."""
    if (cfg.positions, cfg.mlp) != ("rope", "geglu"):
        raise ConfigError(f"a modern model with --positions {cfg.positions} and --mlp {cfg.mlp} (an ablation) has no "
                          "HuggingFace counterpart; ModernBERT has rotary positions and GeGLU")
    return {
        "model_type": "modernbert", "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden,
        "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads, "intermediate_size": cfg.ffn,
        "hidden_activation": "gelu", "classifier_activation": "gelu", "max_position_embeddings": cfg.max_len,
        "norm_eps": cfg.layer_norm_eps, "norm_bias": False, "mlp_bias": False, "attention_bias": False,
        "classifier_bias": False, "decoder_bias": True, "tie_word_embeddings": True,
        "embedding_dropout": cfg.dropout, "attention_dropout": cfg.dropout, "mlp_dropout": cfg.dropout,
        "initializer_range": cfg.init_std, "local_attention": cfg.window,
        "global_attn_every_n_layers": cfg.global_every,
        "layer_types": ["full_attention" if i % cfg.global_every == 0 else "sliding_attention"
                        for i in range(cfg.layers)],
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta},
                            "sliding_attention": {"rope_type": "default", "rope_theta": cfg.local_rope_theta}},
        "pad_token_id": special_ids["pad"], "cls_token_id": special_ids["cls"], "sep_token_id": special_ids["sep"],
        "bos_token_id": special_ids["cls"], "eos_token_id": special_ids["sep"], "sparse_prediction": False,
        "classifier_pooling": "cls", "classifier_dropout": 0.0,
    }
