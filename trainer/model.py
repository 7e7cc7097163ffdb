"""BERT, top to bottom in one file: embeddings, encoder blocks, the MLM and NSP heads, the loss.

In the spirit of nanoGPT's model.py. Shapes: B batch, T sequence length, C hidden, H heads,
D = C / H head width, F feed-forward width, P prediction slots per example, V vocabulary.

Differences from a textbook BERT that matter for speed, none for the maths:
- the MLM head runs only at the P positions the shards chose for prediction (gathered before the
  transform), not at all T positions: at small widths the (T, V) decoder dominates the step;
- the padding mask goes to `scaled_dot_product_attention` as a boolean (B, 1, 1, T) mask built on
  the device from the example lengths, so no float mask is ever copied from the host.

Every weight has exactly one HuggingFace `BertForPreTraining` / `BertForMaskedLM` counterpart of
the same shape (`trainer/hf.py` holds the rename table); q, k and v stay separate for that reason.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bertprep.trainer.config import ModelConfig

IGNORE = -100  # target of an unused prediction slot


class Embeddings(nn.Module):
    """Token + position + segment embeddings, LayerNorm (post-norm only), dropout."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.pos = nn.Embedding(cfg.max_len, cfg.hidden)
        self.seg = nn.Embedding(cfg.type_vocab_size, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, input_ids, token_type_ids):
        T = input_ids.size(1)
        pos = torch.arange(T, device=input_ids.device)                             # (T,)
        x = self.tok(input_ids) + self.pos(pos)[None] + self.seg(token_type_ids)   # (B, T, C)
        return self.drop(self.norm(x))


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads = cfg.heads
        self.q = nn.Linear(cfg.hidden, cfg.hidden)
        self.k = nn.Linear(cfg.hidden, cfg.hidden)
        self.v = nn.Linear(cfg.hidden, cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.attn_dropout = cfg.dropout
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, mask):
        B, T, C = x.shape
        H, D = self.heads, C // self.heads
        q = self.q(x).view(B, T, H, D).transpose(1, 2)                             # (B, H, T, D)
        k = self.k(x).view(B, T, H, D).transpose(1, 2)                             # (B, H, T, D)
        v = self.v(x).view(B, T, H, D).transpose(1, 2)                             # (B, H, T, D)
        p = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)   # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)                                     # (B, T, C)
        return self.drop(self.proj(y))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.hidden, cfg.ffn)
        self.down = nn.Linear(cfg.ffn, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.down(F.gelu(self.up(x))))                            # (B, T, C)


class Block(nn.Module):
    """One encoder layer. post: x = LN(x + f(x)) as in BERT; pre: x = x + f(LN(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.attn = SelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)

    def forward(self, x, mask):
        if self.pre:
            x = x + self.attn(self.attn_norm(x), mask)
            return x + self.ffn(self.ffn_norm(x))
        x = self.attn_norm(x + self.attn(x, mask))
        return self.ffn_norm(x + self.ffn(x))                                      # (B, T, C)


class MLMHead(nn.Module):
    """dense + GELU + LayerNorm, then the decoder tied to the token embeddings, with its own bias."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h, decoder_weight):
        h = self.norm(F.gelu(self.dense(h)))                                       # (B, P, C)
        return F.linear(h, decoder_weight, self.bias)                              # (B, P, V)


class NSPHead(nn.Module):
    """The tanh pooler on [CLS] and the two-way is-next classifier."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pooler = nn.Linear(cfg.hidden, cfg.hidden)
        self.classifier = nn.Linear(cfg.hidden, 2)

    def forward(self, h_cls):
        return self.classifier(torch.tanh(self.pooler(h_cls)))                     # (B, 2)


class Bert(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps) if cfg.norm == "pre" else None
        self.mlm = MLMHead(cfg)
        self.nsp = NSPHead(cfg) if cfg.nsp else None
        self.apply(self._init)

    def _init(self, m):
        # BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm.
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=self.cfg.init_std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def num_params(self, embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if embeddings else n - self.embed.tok.weight.numel() - self.embed.pos.weight.numel()

    def encode(self, input_ids, token_type_ids, lengths):
        """Hidden states (B, T, C) of a padded batch; positions >= length are never attended to."""
        T = input_ids.size(1)
        keep = torch.arange(T, device=input_ids.device)[None, :] < lengths[:, None]  # (B, T)
        mask = keep[:, None, None, :]                                                # (B, 1, 1, T)
        x = self.embed(input_ids, token_type_ids)                                    # (B, T, C)
        for block in self.layers:
            x = block(x, mask)
        return self.final_norm(x) if self.final_norm is not None else x

    def forward(self, input_ids, token_type_ids, lengths, masked_positions=None):
        """MLM logits (B, P, V) at `masked_positions` (B, P), or (B, T, V) at every position when
        None, and NSP logits (B, 2) (None without an NSP head)."""
        h = self.encode(input_ids, token_type_ids, lengths)                          # (B, T, C)
        if masked_positions is not None:
            idx = masked_positions[:, :, None].expand(-1, -1, h.size(-1))             # (B, P, C)
            h_mlm = torch.gather(h, 1, idx)                                          # (B, P, C)
        else:
            h_mlm = h
        mlm_logits = self.mlm(h_mlm, self.embed.tok.weight)                          # (B, P, V)
        nsp_logits = self.nsp(h[:, 0]) if self.nsp is not None else None             # (B, 2)
        return mlm_logits, nsp_logits


def mlm_targets(masked_ids, num_masked):
    """(B, P) targets with IGNORE in the slots past each example's num_masked."""
    slot = torch.arange(masked_ids.size(1), device=masked_ids.device)[None, :]      # (1, P)
    return torch.where(slot < num_masked[:, None], masked_ids, IGNORE)                # (B, P)


def pretraining_loss(mlm_logits, nsp_logits, batch) -> tuple[torch.Tensor, dict]:
    """Mean MLM cross-entropy over the real prediction slots (+ NSP cross-entropy when present).

    Returns the total and a dict of detached parts (sums and counts, so they add across batches and
    ranks): mlm_loss_sum, mlm_correct, mlm_count, nsp_correct, nsp_count. No host sync here.
    """
    targets = mlm_targets(batch["masked_ids"], batch["num_masked"])                  # (B, P)
    logits = mlm_logits.float().flatten(0, 1)                                        # (B*P, V)
    flat = targets.flatten()                                                         # (B*P,)
    per_slot = F.cross_entropy(logits, flat, ignore_index=IGNORE, reduction="none")  # (B*P,)
    real = flat != IGNORE
    count = real.sum()
    mlm_loss = per_slot.sum() / count.clamp(min=1)
    with torch.no_grad():
        parts = {
            "mlm_loss_sum": per_slot.detach().sum(),
            "mlm_correct": ((logits.argmax(-1) == flat) & real).sum(),
            "mlm_count": count,
        }
    loss = mlm_loss
    if nsp_logits is not None and "nsp_label" in batch:
        labels = batch["nsp_label"]
        loss = loss + F.cross_entropy(nsp_logits.float(), labels)
        with torch.no_grad():
            parts["nsp_correct"] = (nsp_logits.argmax(-1) == labels).sum()
            parts["nsp_count"] = torch.tensor(labels.numel(), device=labels.device)
    return loss, parts


def flops_per_step(cfg: ModelConfig, batch: int, seq: int, predictions: int) -> float:
    """Model FLOPs of one training step (forward + backward = 3x forward), matmuls only."""
    C, F_, L, V = cfg.hidden, cfg.ffn, cfg.layers, cfg.vocab_size
    per_token = L * (2 * 4 * C * C + 2 * 2 * C * F_ + 2 * 2 * seq * C)  # qkvo, ffn, scores + weighted sum
    head = predictions * (2 * C * C + 2 * C * V)                           # transform + decoder
    pooler = (2 * C * C + 2 * C * 2) if cfg.nsp else 0
    return 3.0 * batch * (seq * per_token + head + pooler)
