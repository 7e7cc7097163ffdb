"""`bertprep finetune --pooling`: what the class head reads. Mean pooling averages the real tokens
only (padding changes nothing); a modern classifier computes what transformers'
ModernBertForSequenceClassification computes with the same `classifier_pooling`, its pretrained
MLM head transform included; BERT's [CLS] goes through the NSP pooler; a checkpoint records its
pooling, and one written before pooling was recorded (version 3) reads as [CLS] without the head."""

from __future__ import annotations

import pytest
import torch

from bertprep.finetune.classifier import Classifier, load_classifier, save_classifier
from bertprep.shards.errors import ShardFormatError
from bertprep.trainer import checkpoint as ckpt_io
from bertprep.trainer.model import ModelConfig

SPECIALS = dict(pad=0, unk=1, cls=2, sep=3, mask=4)
DATA = {"vocab_size": 300, "special_ids": SPECIALS}


def _config(arch: str, **kw) -> ModelConfig:
    base = dict(vocab_size=300, max_len=64, layers=3, hidden=32, heads=2, ffn=64, dropout=0.0, arch=arch)
    base |= dict(norm="pre", window=8) if arch == "modern" else {}
    return ModelConfig(**(base | kw))


def _classifier(arch: str, pooling: str, **kw) -> Classifier:
    torch.manual_seed(0)
    model = Classifier(_config(arch, **kw), 3, 0.0, pooling=pooling).eval()
    with torch.no_grad():  # away from the init, so that every weight (norms, biases) matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _batch(T: int = 20, pad_to: int | None = None):
    torch.manual_seed(1)
    lengths = torch.tensor([T, T - 7, 5])
    ids = torch.randint(5, 300, (3, pad_to or T))
    ids[torch.arange(ids.size(1))[None] >= lengths[:, None]] = SPECIALS["pad"]
    ids[:, 0] = SPECIALS["cls"]
    return ids, lengths


@pytest.mark.parametrize("arch", ["bert", "modern"])
def test_mean_pooling_averages_the_real_tokens_only(arch):
    model = _classifier(arch, "mean")
    ids, lengths = _batch()
    wide = torch.cat([ids, torch.zeros(3, 12, dtype=ids.dtype)], 1)  # 12 more padding columns
    with torch.no_grad():
        logits, _ = model(ids, torch.zeros_like(ids), lengths)
        padded, _ = model(wide, torch.zeros_like(wide), lengths)
        h = model.bert.encode(ids, torch.zeros_like(ids), lengths)
        by_hand = torch.stack([h[b, : int(n)].mean(0) for b, n in enumerate(lengths)])
        if arch == "modern":
            by_hand = model.bert.head(by_hand)
        by_hand = model.head(by_hand)
        cls_logits, _ = _classifier(arch, "cls")(ids, torch.zeros_like(ids), lengths)
    assert (logits - padded).abs().max() < 1e-5
    assert (logits - by_hand).abs().max() < 1e-5
    assert (logits - cls_logits).abs().max() > 1e-3  # the choice matters


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_modern_classifier_equals_transformers_sequence_classification(pooling):
    transformers = pytest.importorskip("transformers")
    from bertprep.trainer.hf import modern_hf_config, modern_to_hf

    ours = _classifier("modern", pooling)
    kw = modern_hf_config(ours.bert.cfg, SPECIALS)
    kw.pop("model_type")
    hf = transformers.ModernBertForSequenceClassification(
        transformers.ModernBertConfig(**(kw | dict(num_labels=3, classifier_pooling=pooling)))).eval()
    state = {k: v for k, v in modern_to_hf(ours.bert.state_dict()).items()
             if k.startswith(("model.", "head."))}  # the MLM decoder stays behind
    state |= {"classifier.weight": ours.head.weight, "classifier.bias": ours.head.bias}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    ids, lengths = _batch(T=30)
    att = (torch.arange(ids.size(1))[None] < lengths[:, None]).long()
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=att).logits
        mine, _ = ours(ids, torch.zeros_like(ids), lengths)
    assert (theirs - mine).abs().max() < 1e-4


def test_bert_cls_goes_through_the_nsp_pooler():
    model = _classifier("bert", "cls", nsp=True)
    ids, lengths = _batch()
    with torch.no_grad():
        logits, _ = model(ids, torch.zeros_like(ids), lengths)
        h = model.bert.encode(ids, torch.zeros_like(ids), lengths)[:, 0]
        by_hand = model.head(torch.tanh(model.bert.nsp.pooler(h)))
    assert (logits - by_hand).abs().max() < 1e-5


def _save(model: Classifier, path, **extra):
    save_classifier(path, model.state_dict(), model_config=model.bert.cfg, num_classes=3, rating=None, pair=False,
                    pooling=model.pooling, pool_head=model.pool_head, data=DATA, config={}, **extra)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_a_checkpoint_keeps_its_pooling(tmp_path, pooling):
    model = _classifier("modern", pooling)
    _save(model, tmp_path / "best.pt")
    again, _ = load_classifier(tmp_path / "best.pt")
    assert (again.pooling, again.pool_head) == (pooling, True)
    ids, lengths = _batch()
    with torch.no_grad():
        assert torch.equal(model(ids, None, lengths)[0], again(ids, None, lengths)[0])


def test_a_version_3_checkpoint_reads_as_cls_without_the_head(tmp_path):
    model = _classifier("modern", "cls")
    _save(model, tmp_path / "v4.pt")
    ck = torch.load(tmp_path / "v4.pt", weights_only=True)
    for key in ("sha256", "pooling", "pool_head"):
        del ck[key]
    torch.save(ckpt_io.seal(ck | {"version": 3}), tmp_path / "v3.pt")
    old, _ = load_classifier(tmp_path / "v3.pt")
    assert (old.pooling, old.pool_head) == ("cls", False)
    for bad in ({"version": 2}, {"pooling": "max"}):
        torch.save(ckpt_io.seal(torch.load(tmp_path / "v4.pt", weights_only=True) | bad), tmp_path / "bad.pt")
        with pytest.raises(ShardFormatError):
            load_classifier(tmp_path / "bad.pt")
