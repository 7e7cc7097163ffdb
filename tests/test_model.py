"""The BERT model: output shapes, the padding mask, tied decoder weights, the loss over real
prediction slots only, presets, optimizer groups and schedule, and the HuggingFace rename table
(round trip always; equal outputs with `transformers` when it is installed)."""

from __future__ import annotations

import math

import pytest
import torch

from bertprep.shards.errors import ConfigError
from bertprep.trainer import hf
from bertprep.trainer.config import PRESETS, model_shape, train_config
from bertprep.trainer.model import IGNORE, Bert, ModelConfig, mlm_targets, pretraining_loss
from bertprep.trainer.optim import lr_factor, param_groups

V, T, P = 50, 16, 4




def tiny(**kw) -> ModelConfig:
    return ModelConfig(**({"vocab_size": V, "max_len": T, "layers": 2, "hidden": 32, "heads": 2, "ffn": 64} | kw))


def batch(B=3, nsp=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([T, T - 5, 6][:B])
    ids = torch.randint(5, V, (B, T), generator=g)
    ids[torch.arange(T)[None] >= lengths[:, None]] = 0
    b = {
        "input_ids": ids, "token_type_ids": (torch.arange(T)[None] >= lengths[:, None] // 2).long(), "length": lengths,
        "masked_positions": torch.tensor([[1, 2, 3, 0], [2, 5, 0, 0], [1, 0, 0, 0]])[:B],
        "masked_ids": torch.randint(5, V, (B, P), generator=g), "num_masked": torch.tensor([3, 2, 1])[:B],
    }
    if nsp:
        b["nsp_label"] = torch.tensor([1, 0, 1])[:B]
    return b


def run(model, b, positions=True):
    return model(b["input_ids"], b["token_type_ids"], b["length"], b["masked_positions"] if positions else None)


def test_output_shapes_with_and_without_nsp():
    b = batch()
    mlm, nsp = run(Bert(tiny(nsp=True)), b)
    assert mlm.shape == (3, P, V) and nsp.shape == (3, 2)
    mlm, nsp = run(Bert(tiny(nsp=False)), b)
    assert mlm.shape == (3, P, V) and nsp is None
    full, _ = run(Bert(tiny()), b, positions=False)
    assert full.shape == (3, T, V)


def test_gathered_logits_equal_full_logits_at_those_positions():
    model = Bert(tiny()).eval()
    b = batch()
    at, _ = run(model, b)
    full, _ = run(model, b, positions=False)
    expect = torch.gather(full, 1, b["masked_positions"][:, :, None].expand(-1, -1, V))
    torch.testing.assert_close(at, expect)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_padding_never_changes_real_positions(norm):
    model = Bert(tiny(norm=norm)).eval()
    b = batch()
    h1 = model.encode(b["input_ids"], b["token_type_ids"], b["length"])
    ids = b["input_ids"].clone()
    ids[torch.arange(T)[None] >= b["length"][:, None]] = 7  # garbage in the padding
    h2 = model.encode(ids, b["token_type_ids"], b["length"])
    real = torch.arange(T)[None] < b["length"][:, None]
    torch.testing.assert_close(h1[real], h2[real])
    assert not torch.allclose(h1[~real], h2[~real])  # padded positions do see their own input


def test_decoder_is_tied_to_token_embeddings():
    model = Bert(tiny()).eval()
    assert not any(p.shape == (V, 32) for n, p in model.named_parameters() if n != "embed.tok.weight")
    b = batch()
    b["input_ids"][b["input_ids"] == 9] = 8
    with torch.no_grad():
        model.embed.tok.weight[9] = 0.0   # the decoder row of token 9 is this embedding row
        model.mlm.bias[9] = 0.25
    mlm, _ = run(model, b)
    assert torch.all(mlm[..., 9] == 0.25)
    # A tied tensor is counted once, by the model and by the optimizer.
    groups = param_groups(model, 0.01)
    assert sum(p.numel() for g in groups for p in g["params"]) == model.num_params()


def test_loss_ignores_unused_slots_and_counts():
    b = batch(nsp=False)
    targets = mlm_targets(b["masked_ids"], b["num_masked"])
    assert (targets == IGNORE).sum() == 12 - 6
    model = Bert(tiny()).eval()
    mlm, nsp = run(model, b)
    loss, parts = pretraining_loss(mlm, nsp, b)
    assert int(parts["mlm_count"]) == 6
    manual = torch.nn.functional.cross_entropy(mlm[targets != IGNORE], targets[targets != IGNORE])
    torch.testing.assert_close(loss, manual)
    assert abs(loss.item() - math.log(V)) < 0.5  # BERT's init gives near-uniform predictions
    b["masked_ids"][0, 3] = 11  # an unused slot's content does not matter
    torch.testing.assert_close(pretraining_loss(mlm, nsp, b)[0], loss)


def test_nsp_adds_to_the_loss():
    model = Bert(tiny(nsp=True)).eval()
    b = batch()
    mlm, nsp = run(model, b)
    total, parts = pretraining_loss(mlm, nsp, b)
    no_nsp, _ = pretraining_loss(mlm, None, b)
    torch.testing.assert_close(total - no_nsp, torch.nn.functional.cross_entropy(nsp, b["nsp_label"]))
    assert int(parts["nsp_count"]) == 3


def test_presets_are_the_papers_shapes():
    assert {k: v[:2] for k, v in PRESETS.items()} == {
        "tiny": (2, 128), "mini": (4, 256), "small": (4, 512), "medium": (8, 512), "base": (12, 768), "large": (24, 1024),
        # ModernBERT-base and -large (22 x 768, 28 x 1024; GeGLU widths 1152 and 2624)
        "modern-tiny": (3, 128), "modern-mini": (6, 256), "modern-base": (22, 768), "modern-large": (28, 1024)}
    assert PRESETS["modern-base"][3] == 1152 and PRESETS["modern-large"][3] == 2624
    assert model_shape("modern-base", hidden=512)["ffn"] == 768  # GeGLU's 1.5x, not BERT's 4x
    assert model_shape("base") == {"layers": 12, "hidden": 768, "heads": 12, "ffn": 3072}
    assert model_shape("tiny", layers=3, hidden=64) == {"layers": 3, "hidden": 64, "heads": 1, "ffn": 256}
    with pytest.raises(ConfigError, match="--model"):
        model_shape("huge")
    with pytest.raises(ConfigError, match="multiple of --heads"):
        tiny(hidden=30, heads=4)


def test_config_errors_name_the_flag():
    with pytest.raises(ConfigError, match="--shards"):
        train_config()
    with pytest.raises(ConfigError, match="--min-lr"):
        train_config(shards=("x",), lr=1e-4, min_lr=1.0)
    with pytest.raises(ConfigError, match="--decay"):
        train_config(shards=("x",), decay="step")
    with pytest.raises(ConfigError, match="--batch-size"):
        train_config(shards=("x",), batch_size=0)


def test_no_weight_decay_on_biases_and_layernorm():
    model = Bert(tiny())
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("weight") and "norm" not in names[id(p)] for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {"mlm.bias", "embed.norm.weight", "layers.0.attn.q.bias"}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01


@pytest.mark.parametrize("decay", ["linear", "cosine", "1-sqrt"])
def test_schedule_warms_up_then_decays_to_min(decay):
    f = [lr_factor(s, warmup=10, max_steps=100, decay=decay, min_ratio=0.1) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[100] == pytest.approx(0.1)


def test_warmup_stable_decay_holds_the_peak_then_cools_down():
    """--stable 0.8: the peak from the end of warm-up for 80% of the remaining 90 steps (to step 82),
    then 1-sqrt down to the floor at the last step; the stretch and the cool-down are exact."""
    f = [lr_factor(s, warmup=10, max_steps=100, decay="1-sqrt", min_ratio=0.0, stable=0.8) for s in range(101)]
    assert f[10:83] == [1.0] * 73 and f[83] < 1.0
    assert f[91] == pytest.approx(1 - ((91 - 82) / 18) ** 0.5) and f[100] == 0.0


def test_hf_rename_table_round_trips_every_key():
    model = Bert(tiny(nsp=True))
    state = model.state_dict()
    theirs = hf.to_hf(state)
    assert theirs["cls.predictions.decoder.weight"] is theirs["bert.embeddings.word_embeddings.weight"]
    assert len(theirs) == len(state) + 2
    back = hf.from_hf(theirs)
    assert back.keys() == state.keys()
    assert all(back[k] is state[k] for k in state)
    with pytest.raises(ConfigError, match="no HuggingFace counterpart"):
        hf.to_hf(Bert(tiny(norm="pre")).state_dict())


@pytest.mark.parametrize("nsp", [True, False])
def test_hf_bert_computes_the_same_logits(nsp):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ours = Bert(tiny(nsp=nsp)).eval()
    config = transformers.BertConfig(**hf.hf_config(ours.cfg))
    cls = transformers.BertForPreTraining if nsp else transformers.BertForMaskedLM
    theirs = cls(config).eval()
    missing, unexpected = theirs.load_state_dict(hf.to_hf(ours.state_dict()), strict=False)
    assert not unexpected and all("position_ids" in k or "token_type_ids" in k for k in missing)
    b = batch()
    mask = (torch.arange(T)[None] < b["length"][:, None]).long()
    with torch.no_grad():
        out = theirs(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"], attention_mask=mask)
        mlm, nsp_logits = run(ours, b, positions=False)
    real = mask.bool()
    logits = out.prediction_logits if nsp else out.logits
    torch.testing.assert_close(mlm[real], logits[real], atol=1e-4, rtol=1e-4)
    if nsp:
        torch.testing.assert_close(nsp_logits, out.seq_relationship_logits, atol=1e-4, rtol=1e-4)
    assert hf.from_hf(theirs.state_dict()).keys() == ours.state_dict().keys()


def test_cpu_bf16_attention_is_sdpas_maths():
    """On CPU in bf16 attention runs as `attention_math` (faster there than the flash kernel): the
    same numbers as scaled_dot_product_attention, with a padding mask and without one, and a bf16
    model's logits equal the float32 model's to bf16 precision, padded batch or not."""
    import torch.nn.functional as F

    from bertprep.trainer.model import attention_math

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 5, 8, generator=g) for _ in range(3))
    mask = (torch.arange(5)[None] < torch.tensor([5, 3, 1])[:, None])[:, None, None, :]
    for m in (mask, None):
        torch.testing.assert_close(attention_math(q, k, v, m, 0.0), F.scaled_dot_product_attention(q, k, v, attn_mask=m))
    model = Bert(tiny(dropout=0.0)).eval()
    for b in (batch(), batch() | {"length": torch.full((3,), T)}):
        with torch.no_grad():
            ref, _ = run(model, b)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low, _ = run(model, b)
        assert low.dtype == torch.bfloat16
        assert (low.float() - ref).abs().max() < 0.03 * ref.abs().max()


def packed_pair(seed=0):
    """One row [CLS] a(5) [SEP] [CLS] b(6) [SEP] [PAD]...: two documents, pieces at 0 and 7, length 15."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(1, T, dtype=torch.long)
    ids[0, :15] = torch.cat([torch.tensor([2]), torch.randint(5, V, (5,), generator=g), torch.tensor([3, 2]),
                             torch.randint(5, V, (6,), generator=g), torch.tensor([3])])
    return ids, torch.tensor([15]), torch.tensor([[0, 7, 0, 0, 0]])


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_packed_documents_do_not_talk_to_each_other(norm):
    """No attention weight crosses a document: changing one document's tokens leaves the other's
    hidden states exactly as they were, and each document's hidden states are those it gets alone
    in a row (positions restart at its [CLS]), also through the last layer's gathered rows."""
    model = Bert(tiny(norm=norm, dropout=0.0)).eval()
    ids, length, starts = packed_pair()
    tt = torch.zeros_like(ids)
    other = ids.clone()
    other[0, 8:14] = torch.randint(5, V, (6,), generator=torch.Generator().manual_seed(9))  # document b only
    with torch.no_grad():
        h1 = model.encode(ids, tt, length, doc_starts=starts)                          # (1, T, C)
        h2 = model.encode(other, tt, length, doc_starts=starts)
        torch.testing.assert_close(h1[0, :7], h2[0, :7], rtol=0, atol=0)              # a: bit for bit
        assert not torch.allclose(h1[0, 7:15], h2[0, 7:15])                           # b did change
        mixed = model.encode(ids, tt, length)                                         # no boundaries: they mix
        assert not torch.allclose(mixed[0, :7], h1[0, :7])
        for lo, hi in ((0, 7), (7, 15)):  # each document alone, from position 0
            alone = model.encode(ids[:, lo:hi], tt[:, lo:hi], torch.tensor([hi - lo]))
            torch.testing.assert_close(h1[0, lo:hi], alone[0], rtol=1e-5, atol=1e-5)
        rows = torch.tensor([[3, 10, 12]])
        at, _ = model(ids, tt, length, rows, starts)                                 # last layer at rows only
        full, _ = model(ids, tt, length, None, starts)
        torch.testing.assert_close(at[0], full[0, rows[0]], rtol=1e-5, atol=1e-5)


def test_document_layout_numbers_pieces_and_restarts_positions():
    from bertprep.trainer.model import document_layout

    piece, pos = document_layout(torch.tensor([[0, 3, 7, 0], [0, 0, 0, 0]]), 10)
    assert piece.tolist() == [[1, 1, 1, 2, 2, 2, 2, 3, 3, 3], [1] * 10]
    assert pos.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0, 1, 2], list(range(10))]


def test_cpu_bf16_attention_with_document_masks():
    """The bf16 CPU path (`attention_math`) takes the (B, 1, T, T) document mask as SDPA does."""
    model = Bert(tiny(dropout=0.0)).eval()
    ids, length, starts = packed_pair()
    tt = torch.zeros_like(ids)
    with torch.no_grad():
        ref = model.encode(ids, tt, length, doc_starts=starts)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.encode(ids, tt, length, doc_starts=starts)
    assert (low.float() - ref)[0, :15].abs().max() < 0.05 * ref.abs().max()
