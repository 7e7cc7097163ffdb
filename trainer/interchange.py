"""HuggingFace interchange: `bertprep export` writes a directory `transformers` loads as
`BertForMaskedLM` (or `BertForPreTraining` when NSP was trained), or `ModernBertForMaskedLM` for an
`--arch modern` model; `--init-from-hf DIR` reads any of them.

Weights travel as safetensors (never pickle); names go through `trainer/hf.py`'s rename table.
Export reads the checkpoint through `trainer/checkpoint.py` (seal and shapes checked, so the
directory's config.json and weights agree); import checks the weights against config.json.
`transformers` itself is never imported here: only its file layout is spoken.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from bertprep.shards.atomic import atomic_write, write_json
from bertprep.shards.errors import ConfigError, InputError, ShardFormatError
from bertprep.trainer import checkpoint as ckpt_io
from bertprep.trainer.artifacts import find_tokenizer, keep_tokenizer, load_checkpoint
from bertprep.trainer.hf import from_hf, hf_config, modern_from_hf, modern_hf_config, modern_to_hf, to_hf
from bertprep.trainer.model import ModelConfig

SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}


@dataclass(frozen=True)
class Pretrained:
    """An encoder ready to load: where it came from, its shape, weights (our names) and tokenizer."""

    source: str
    model_config: ModelConfig
    state: dict
    tokenizer: Path
    data: dict  # vocab_size, max_len, special_ids, nsp, tokenizer_sha256 (as a pretraining checkpoint keeps)


def _lowercase(tokenizer_json: Path) -> bool:
    norm = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("normalizer") or {}
    return bool(norm.get("lowercase", False))


def export_hf(checkpoint: str | Path, out: str | Path) -> dict:
    """Write config.json, model.safetensors, vocab.txt, tokenizer.json and the tokenizer configs."""
    from safetensors.torch import save as safetensors_bytes

    path, ckpt = load_checkpoint(checkpoint)  # refuses weights that disagree with the recorded shape
    mcfg = ckpt_io.model_config(ckpt, path)
    data = ckpt["data"]
    if mcfg.arch == "modern":
        config, arch, hf_state = modern_hf_config(mcfg, data["special_ids"]), "ModernBertForMaskedLM", \
            modern_to_hf(ckpt["model"])
    else:
        config = {**hf_config(mcfg, data["special_ids"]["pad"]), "model_type": "bert"}  # refuses pre-norm models
        arch, hf_state = ("BertForPreTraining" if mcfg.nsp else "BertForMaskedLM"), to_hf(ckpt["model"])
    # safetensors refuses tensors that share memory: the tied decoder entries are stored as copies.
    state = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in hf_state.items()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = find_tokenizer(ckpt, path)
    keep_tokenizer(tok, out)
    with atomic_write(out / "model.safetensors") as f:
        f.write(safetensors_bytes(state, metadata={"format": "pt"}))
    write_json(out / "config.json", {**config, "architectures": [arch]})
    write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "BertTokenizer", "do_lower_case": _lowercase(tok), "model_max_length": mcfg.max_len,
        **{f"{k}_token": v for k, v in SPECIALS.items()}})
    write_json(out / "special_tokens_map.json", {f"{k}_token": v for k, v in SPECIALS.items()})
    return {"out": str(out), "architecture": arch, "tensors": len(state), "step": int(ckpt["step"])}


def _read_weights(directory: Path) -> dict:
    st, pt = directory / "model.safetensors", directory / "pytorch_model.bin"
    if st.is_file():
        from safetensors.torch import load_file

        try:
            return load_file(str(st))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise ShardFormatError(f"{st}: unreadable safetensors file ({e})") from None
    if pt.is_file():
        return ckpt_io.read_torch_file(pt)  # weights_only: never runs code from the file
    raise InputError(f"{directory}: no model.safetensors or pytorch_model.bin")


def load_hf(directory: str | Path) -> Pretrained:
    """A HuggingFace BERT directory (BertModel, BertForMaskedLM or BertForPreTraining weights) as our
    encoder. Heads the directory lacks (a bare BertModel has no MLM head) keep their fresh init."""
    directory = Path(directory)
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{directory}: no config.json (not a HuggingFace model directory)") from None
    except ValueError as e:
        raise ShardFormatError(f"{directory / 'config.json'}: not valid JSON ({e})") from None
    if config.get("model_type") == "modernbert":
        mcfg, state = _modern_from_hf(directory, config)
        return _with_tokenizer(directory, mcfg, state)
    if config.get("model_type", "bert") != "bert" or config.get("hidden_act", "gelu") != "gelu":
        raise ConfigError(f"{directory}: a {config.get('model_type')} model with {config.get('hidden_act')} "
                          "activations; bertprep reads BERT and ModernBERT models with gelu")
    hf_state = _read_weights(directory)
    if not any(k.startswith("bert.") for k in hf_state):  # a bare BertModel: prefix its keys
        hf_state = {f"bert.{k}": v for k, v in hf_state.items()}
    nsp = "cls.seq_relationship.weight" in hf_state and "bert.pooler.dense.weight" in hf_state
    hf_state = {k: v for k, v in hf_state.items() if nsp or not k.startswith("bert.pooler.")}
    try:
        mcfg = ModelConfig(vocab_size=config["vocab_size"], max_len=config["max_position_embeddings"],
                           layers=config["num_hidden_layers"], hidden=config["hidden_size"],
                           heads=config["num_attention_heads"], ffn=config["intermediate_size"],
                           dropout=config.get("hidden_dropout_prob", 0.1), nsp=nsp,
                           type_vocab_size=config.get("type_vocab_size", 2),
                           layer_norm_eps=config.get("layer_norm_eps", 1e-12),
                           init_std=config.get("initializer_range", 0.02))
    except (KeyError, TypeError) as e:
        raise ShardFormatError(f"{directory / 'config.json'}: not a BERT config "
                               f"({e.__class__.__name__}: {e})") from None
    state = from_hf(hf_state)
    ckpt_io.check_shapes(state, ckpt_io.expected_shapes(ckpt_io.model_class(mcfg), mcfg), directory)
    return _with_tokenizer(directory, mcfg, state)


# ModernBertConfig settings bertprep's modern encoder has no switch for: (key, the value it must have).
MODERN_FIXED = (("hidden_activation", "gelu"), ("classifier_activation", "gelu"), ("mlp_bias", False),
                ("attention_bias", False), ("norm_bias", False), ("decoder_bias", True))


def _modern_from_hf(directory: Path, config: dict) -> tuple[ModelConfig, dict]:
    """A ModernBERT directory's config and weights as our `--arch modern` encoder."""
    other = [f"{k}={config[k]!r}" for k, want in MODERN_FIXED if k in config and config[k] != want]
    if other:
        raise ConfigError(f"{directory}: a ModernBERT with {', '.join(other)}; bertprep's modern encoder has "
                          + ", ".join(f"{k}={v!r}" for k, v in MODERN_FIXED))
    try:
        layers, every = config["num_hidden_layers"], config.get("global_attn_every_n_layers", 3)
        types = config.get("layer_types") or ["full_attention" if i % every == 0 else "sliding_attention"
                                               for i in range(layers)]
        if types != ["full_attention" if i % every == 0 else "sliding_attention" for i in range(layers)]:
            raise ConfigError(f"{directory}: layer_types is not 'full_attention every {every} layers'; bertprep's "
                              "modern encoder places its global layers so")
        rope = config.get("rope_parameters") or {}
        theta = {t: (rope.get(t) or {}).get("rope_theta", d)
                 for t, d in (("full_attention", config.get("global_rope_theta", 160_000.0)),
                              ("sliding_attention", config.get("local_rope_theta", 10_000.0)))}
        mcfg = ModelConfig(vocab_size=config["vocab_size"], max_len=config["max_position_embeddings"], layers=layers,
                           hidden=config["hidden_size"], heads=config["num_attention_heads"],
                           ffn=config["intermediate_size"], dropout=config.get("mlp_dropout", 0.0), nsp=False,
                           norm="pre", arch="modern", layer_norm_eps=config.get("norm_eps", 1e-5),
                           init_std=config.get("initializer_range", 0.02), window=config.get("local_attention", 128),
                           global_every=every, rope_theta=float(theta["full_attention"]),
                           local_rope_theta=float(theta["sliding_attention"]))
    except (KeyError, TypeError, AttributeError) as e:
        raise ShardFormatError(f"{directory / 'config.json'}: not a ModernBERT config "
                               f"({e.__class__.__name__}: {e})") from None
    state = modern_from_hf(_read_weights(directory))
    ckpt_io.check_shapes(state, ckpt_io.expected_shapes(ckpt_io.model_class(mcfg), mcfg), directory)
    return mcfg, state


def _with_tokenizer(directory: Path, mcfg: ModelConfig, state: dict) -> Pretrained:
    """`Pretrained` for a HF directory's weights, with its tokenizer (tokenizer.json, or built from vocab.txt)."""
    nsp = mcfg.nsp
    tok = directory / "tokenizer.json"
    if not tok.is_file():
        if not (directory / "vocab.txt").is_file():
            raise InputError(f"{directory}: no tokenizer.json or vocab.txt")
        from tokenizers.implementations import BertWordPieceTokenizer

        settings = directory / "tokenizer_config.json"
        lower = json.loads(settings.read_text(encoding="utf-8")).get("do_lower_case", True) if settings.is_file() else True
        # built beside, never inside, the user's directory; finetune/train copy it into their run
        tok = Path(tempfile.mkdtemp(prefix="bertprep-hf-")) / "tokenizer.json"
        BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=lower).save(str(tok))
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tok)).get_vocab(with_added_tokens=True)
    missing = [t for t in SPECIALS.values() if t not in vocab]
    if missing:
        raise InputError(f"{tok}: vocabulary lacks the special tokens {' '.join(missing)} that BERT needs")
    specials = {k: vocab[t] for k, t in SPECIALS.items()}
    from bertprep.shards.atomic import sha256_file

    data = {"vocab_size": mcfg.vocab_size, "max_len": mcfg.max_len, "special_ids": specials, "nsp": nsp,
            "tokenizer_sha256": sha256_file(tok)}
    return Pretrained(str(directory), mcfg, state, tok, data)


def load_pretrained(checkpoint: str | Path | None = None, hf_dir: str | Path | None = None) -> Pretrained:
    """The encoder of a bertprep pretraining checkpoint (a file or run directory) or of a HF directory."""
    if (checkpoint is None) == (hf_dir is None):
        raise ConfigError("give exactly one of --checkpoint and --init-from-hf")
    if hf_dir is not None:
        return load_hf(hf_dir)
    path, ckpt = load_checkpoint(checkpoint)
    return Pretrained(str(path), ckpt_io.model_config(ckpt, path), ckpt["model"], find_tokenizer(ckpt, path),
                      ckpt["data"])


def load_encoder(pre: Pretrained, model) -> list[str]:
    """Load `pre.state` into a `Bert`; returns the names left at their fresh init (heads the source
    lacked). Any other mismatch is an error."""
    result = model.load_state_dict(pre.state, strict=False)
    bad = [k for k in result.missing_keys if not k.startswith(model.MLM_HEAD)] + list(result.unexpected_keys)
    if bad:
        raise ShardFormatError(f"{pre.source}: weights do not fit the model ({', '.join(bad[:3])} ...)")
    return list(result.missing_keys)
