"""`--arch modern` (trainer/modern.py): the encoder computes what transformers' ModernBertForMaskedLM
computes (local and global layers, padding, the last layer at the head's rows only); a trained
modern run exports to a directory transformers loads with no missing or unexpected weights and the
same logits, and a random transformers ModernBERT imports with the same logits; the trainer,
validation and fine-tuning take the architecture; bad combinations are one line."""

from __future__ import annotations

import json

import pytest
import torch

from bertprep.trainer import checkpoint as ckpt_io
from bertprep.trainer.hf import modern_from_hf, modern_hf_config, modern_to_hf
from bertprep.trainer.interchange import load_pretrained
from bertprep.trainer.model import ModelConfig
from bertprep.trainer.modern import ModernBert
from conftest import run_cli
from bertprep.trainer.config import train_config
from bertprep.trainer.loop import train

transformers = pytest.importorskip("transformers")
SPECIALS = dict(pad=0, unk=1, cls=2, sep=3, mask=4)


def pretrain(shards, out, steps, **kw):
    cfg = train_config(shards=tuple(map(str, shards)), model="modern-tiny", layers=3, hidden=64, heads=2, ffn=96,
                       max_steps=steps, batch_size=16, lr=1e-3, warmup_steps=2, val_interval=0, log_interval=steps,
                       ckpt_interval=steps, out=str(out), tensorboard=False, quiet=True, **kw)
    train(cfg)
    return out


def _config(**kw) -> ModelConfig:
    base = dict(vocab_size=300, max_len=256, layers=4, hidden=64, heads=4, ffn=96, dropout=0.0, arch="modern",
                norm="pre", window=16, layer_norm_eps=1e-5)
    return ModelConfig(**(base | kw))


def _hf_model(cfg: ModelConfig):
    kw = modern_hf_config(cfg, SPECIALS)
    kw.pop("model_type")
    return transformers.ModernBertForMaskedLM(transformers.ModernBertConfig(**kw)).eval()


def _hf_logits(hf, ids, lengths):
    att = (torch.arange(ids.size(1))[None] < lengths[:, None]).long()
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=att).logits, att.bool()


@pytest.mark.parametrize("layers,T,window", [(4, 40, 16), (3, 64, 128), (5, 70, 8)])
def test_logits_equal_transformers_modernbert(layers, T, window):
    torch.manual_seed(layers)
    cfg = _config(layers=layers, window=window)
    ours = ModernBert(cfg).eval()
    with torch.no_grad():  # away from the init, so every weight (norms included) matters
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf = _hf_model(cfg)
    hf.load_state_dict(modern_to_hf(ours.state_dict()))  # strict: every key on both sides
    ids = torch.randint(5, 300, (3, T))
    lengths = torch.tensor([T, T - 9, T // 3])
    theirs, real = _hf_logits(hf, ids, lengths)
    with torch.no_grad():
        mine, nsp = ours(ids, torch.zeros_like(ids), lengths)
        rows = torch.stack([torch.randperm(int(n))[:6].sort().values for n in lengths])
        at_rows, _ = ours(ids, torch.zeros_like(ids), lengths, rows)
    assert nsp is None
    assert (theirs - mine)[real].abs().max() < 1e-4
    assert (at_rows - torch.gather(theirs, 1, rows[:, :, None].expand(-1, -1, 300))).abs().max() < 1e-4


def test_the_local_window_is_what_makes_the_logits_equal():
    """A check that can fail: a window one token wider gives other logits than transformers'."""
    torch.manual_seed(0)
    cfg = _config()
    ours = ModernBert(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    wider = ModernBert(_config(window=cfg.window + 2)).eval()
    wider.load_state_dict(ours.state_dict())
    hf = _hf_model(cfg)
    hf.load_state_dict(modern_to_hf(ours.state_dict()))
    ids, lengths = torch.randint(5, 300, (2, 48)), torch.tensor([48, 30])
    theirs, real = _hf_logits(hf, ids, lengths)
    with torch.no_grad():
        assert (theirs - ours(ids, None, lengths)[0])[real].abs().max() < 1e-4
        assert (theirs - wider(ids, None, lengths)[0])[real].abs().max() > 1e-3


def test_names_round_trip():
    state = ModernBert(_config()).state_dict()
    hf = modern_to_hf(state)
    assert hf["decoder.weight"] is hf["model.embeddings.tok_embeddings.weight"]
    assert set(modern_from_hf(hf)) == set(state)


def test_trained_run_exports_and_transformers_loads_identical_logits(token_store, tmp_path):
    assert run_cli(["shard", "--tokens", token_store, "--out", tmp_path / "sh", "--max-len", "32", "--nsp"]) == 0
    run = pretrain(sorted((tmp_path / "sh").glob("train_*")), tmp_path / "run", 6)
    ck = ckpt_io.load(ckpt_io.newest(run))
    assert ck["model_config"]["arch"] == "modern" and not ck["model_config"]["nsp"]  # NSP labels go unused
    assert run_cli(["export", "--checkpoint", run, "--hf", tmp_path / "hf"]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention"]
    hf, info = transformers.ModernBertForMaskedLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    hf.eval()
    pre = load_pretrained(run)
    ours = ckpt_io.new_model(pre.model_config)
    ours.load_state_dict(pre.state)
    ours.eval()
    ids = torch.randint(5, pre.model_config.vocab_size, (3, 32))
    lengths = torch.tensor([32, 20, 7])
    theirs, real = _hf_logits(hf, ids, lengths)
    with torch.no_grad():
        mine, _ = ours(ids, torch.zeros_like(ids), lengths)
    assert (theirs - mine)[real].abs().max() < 1e-4
    again = load_pretrained(hf_dir=tmp_path / "hf")  # and back: the same weights, the same shape
    assert again.model_config == pre.model_config.__class__(**{**pre.model_config.to_dict(), "dropout": 0.0})
    assert all(torch.equal(again.state[k], v) for k, v in pre.state.items())
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.convert_tokens_to_ids("[MASK]") == pre.data["special_ids"]["mask"]


def test_a_random_transformers_modernbert_imports_trains_and_finetunes(token_store, tmp_path):
    vocab_size = len((token_store / "vocab.txt").read_text(encoding="utf-8").splitlines())
    cfg = _config(vocab_size=vocab_size, max_len=64, layers=3, window=8)
    torch.manual_seed(0)
    hf = _hf_model(cfg)
    hf.save_pretrained(tmp_path / "hf")
    for name in ("tokenizer.json", "vocab.txt"):
        (tmp_path / "hf" / name).write_bytes((token_store / name).read_bytes())
    pre = load_pretrained(hf_dir=tmp_path / "hf")
    assert pre.model_config.arch == "modern" and pre.model_config.window == 8
    ours = ckpt_io.new_model(pre.model_config)
    ours.load_state_dict(pre.state)
    ours.eval()
    ids, lengths = torch.randint(5, vocab_size, (2, 48)), torch.tensor([48, 11])
    theirs, real = _hf_logits(hf, ids, lengths)
    with torch.no_grad():
        assert (theirs - ours(ids, None, lengths)[0])[real].abs().max() < 1e-4
    assert run_cli(["shard", "--tokens", token_store, "--out", tmp_path / "sh", "--max-len", "32"]) == 0
    run = pretrain(sorted((tmp_path / "sh").glob("train_*")), tmp_path / "run", 3, init_from_hf=str(tmp_path / "hf"))
    assert ckpt_io.load(ckpt_io.newest(run))["model_config"]["window"] == 8  # the source's shape, not the flags'



def test_nsp_cannot_be_asked_of_the_modern_encoder(capsys, tmp_path):
    with pytest.raises(ValueError, match="next-sentence"):
        ModernBert(_config(nsp=True))
    with pytest.raises(Exception, match="even head width"):
        _config(hidden=60, heads=4)


@pytest.mark.parametrize("switch", [{"positions": "learned"}, {"mlp": "gelu", "ffn": 144}])
def test_ablation_switches_change_the_model_and_are_not_exported(switch):
    torch.manual_seed(0)
    cfg = _config(**switch)
    model = ModernBert(cfg).eval()
    names = set(model.state_dict())
    assert ("embeddings.pos_embeddings.weight" in names) == (cfg.positions == "learned")
    assert model.layers[0].mlp.Wi.weight.shape[0] == (2 * cfg.ffn if cfg.mlp == "geglu" else cfg.ffn)
    ids, lengths = torch.randint(5, 300, (2, 24)), torch.tensor([24, 13])
    with torch.no_grad():
        assert torch.isfinite(model(ids, None, lengths)[0]).all()
    with pytest.raises(Exception, match="no HuggingFace counterpart"):
        modern_hf_config(cfg, SPECIALS)


@pytest.mark.parametrize("window", [4, 128])
def test_packed_documents_do_not_talk_to_each_other(window):
    """The modern encoder on `pack` rows: changing one document leaves the other's hidden states
    bit for bit; each document's states are those it gets alone (RoPE restarting at its [CLS]), the
    sliding window applied within it; the last layer at gathered rows computes the same."""
    from test_model import V, packed_pair

    torch.manual_seed(0)
    model = ModernBert(_config(vocab_size=V, window=window)).eval()
    ids, length, starts = packed_pair()
    other = ids.clone()
    other[0, 8:14] = torch.randint(5, V, (6,), generator=torch.Generator().manual_seed(9))  # document b only
    with torch.no_grad():
        h1 = model.encode(ids, None, length, doc_starts=starts)
        h2 = model.encode(other, None, length, doc_starts=starts)
        torch.testing.assert_close(h1[0, :7], h2[0, :7], rtol=0, atol=0)
        assert not torch.allclose(h1[0, 7:15], h2[0, 7:15])
        assert not torch.allclose(model.encode(ids, None, length)[0, :7], h1[0, :7])  # without boundaries they mix
        for lo, hi in ((0, 7), (7, 15)):
            alone = model.encode(ids[:, lo:hi], None, torch.tensor([hi - lo]))
            torch.testing.assert_close(h1[0, lo:hi], alone[0], rtol=1e-5, atol=1e-5)
        rows = torch.tensor([[3, 10, 12]])
        at, _ = model(ids, None, length, rows, starts)
        full, _ = model(ids, None, length, None, starts)
        torch.testing.assert_close(at[0], full[0, rows[0]], rtol=1e-5, atol=1e-5)
