"""ModernBERT's encoder (`--arch modern`), top to bottom, read the same way as model.py's BERT.

What differs from BERT-2018 (Warner et al. 2024, "Smarter, Better, Faster, Longer"):
- pre-norm blocks (x = x + f(LN(x))) and a final LayerNorm; the first block has no attention norm,
  since the embeddings were just normalized; no biases anywhere but the decoder's;
- rotary position embeddings on q and k instead of a learned table, theta 160,000 on the global
  layers and 10,000 on the local ones; no segment (token type) embeddings;
- every `global_every`-th layer (0, 3, 6, ...) attends over the whole sequence, the others over a
  sliding window of |i - j| <= window / 2 tokens;
- a GeGLU feed-forward: Wi gives 2F features, GELU(first half) * second half, Wo back to C;
- no dropout by default (ModernBERT trains without it).

Two switches exist for ablations only (bench.quality), and make a model transformers cannot load:
`--positions learned` (BERT's learned table instead of RoPE) and `--mlp gelu` (BERT's GELU
feed-forward instead of GeGLU).

Kept from model.py: the MLM head runs only at the prediction slots and the last layer only at the
rows a head reads (`rows`), key padding as a boolean mask built on the device, the per-document
attention of `pack` shards (`doc_starts`: no attention across a document piece, RoPE positions
restarting at each; the sliding window applies within the piece), and the same
`forward(input_ids, token_type_ids, lengths, masked_positions, doc_starts)` so the loop,
validation, predict and fine-tuning take either architecture. `token_type_ids` is ignored.

Parameter names are transformers' `ModernBertForMaskedLM` names without its `model.` prefix, so
the export (trainer/hf.py `modern_to_hf`) is a prefix and the tied decoder, nothing else.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bertprep.trainer.model import ModelConfig, attention_math, document_layout, gather_rows


def layer_is_global(cfg: ModelConfig, i: int) -> bool:
    """Layer i attends globally: 0, global_every, 2 * global_every, ... (ModernBERT's layer_types)."""
    return i % cfg.global_every == 0


def rope_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """The D/2 inverse frequencies theta^(-2k/D) of rotary embeddings."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def rotate(x, cos, sin):
    """RoPE on x (B, H, T, D) with cos/sin (B, 1, T, D), in float32 as transformers does."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)


class Embeddings(nn.Module):
    """Token embeddings, LayerNorm, dropout: no segments, and no positions (RoPE) unless
    `--positions learned` (an ablation) adds BERT's table."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.pos_embeddings = nn.Embedding(cfg.max_len, cfg.hidden) if cfg.positions == "learned" else None
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, input_ids, pos):
        x = self.tok_embeddings(input_ids)                                          # (B, T, C)
        if self.pos_embeddings is not None:
            x = x + self.pos_embeddings(pos)                                        # pos (B | 1, T)
        return self.drop(self.norm(x))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads = cfg.heads
        self.Wqkv = nn.Linear(cfg.hidden, 3 * cfg.hidden, bias=False)
        self.Wo = nn.Linear(cfg.hidden, cfg.hidden, bias=False)
        self.attn_dropout = cfg.dropout
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, h, mask, cos, sin, rows=None):
        """Attention over h (B, T, C) with RoPE (none when cos is None); queries at `rows` (B, Q)
        only when given."""
        B, T, C = h.shape
        H, D = self.heads, C // self.heads
        q, k, v = self.Wqkv(h).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)         # 3 x (B, H, T, D)
        if cos is not None:
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if rows is not None:
            q = torch.gather(q, 2, rows[:, None, :, None].expand(-1, H, -1, D))    # (B, H, Q, D)
        p = self.attn_dropout if self.training else 0.0
        if h.device.type == "cpu" and q.dtype == torch.bfloat16:
            y = attention_math(q, k, v, mask, p)                                   # (B, H, Q, D)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, q.size(2), C)                              # (B, Q, C)
        return self.drop(self.Wo(y))


class GeGLU(nn.Module):
    """GELU(x Wi_a) * (x Wi_b), then Wo; with `--mlp gelu` (an ablation) BERT's GELU(x Wi) Wo."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.glu = cfg.mlp == "geglu"
        self.Wi = nn.Linear(cfg.hidden, (2 if self.glu else 1) * cfg.ffn, bias=False)
        self.Wo = nn.Linear(cfg.ffn, cfg.hidden, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        if not self.glu:
            return self.drop(self.Wo(F.gelu(self.Wi(x))))                           # (B, T, C)
        a, gate = self.Wi(x).chunk(2, dim=-1)                                       # 2 x (B, T, F)
        return self.drop(self.Wo(F.gelu(a) * gate))                                 # (B, T, C)


class Block(nn.Module):
    """x = x + attn(LN(x)); x = x + GeGLU(LN(x)). Layer 0 skips the attention norm."""

    def __init__(self, cfg: ModelConfig, i: int):
        super().__init__()
        self.is_global = layer_is_global(cfg, i)
        self.attn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps, bias=False) if i else nn.Identity()
        self.attn = Attention(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps, bias=False)
        self.mlp = GeGLU(cfg)

    def forward(self, x, mask, cos, sin, rows=None):
        """(B, T, C) -> (B, T, C), or (B, Q, C) at `rows` (B, Q) only (the last layer)."""
        y = self.attn(self.attn_norm(x), mask, cos, sin, rows)
        x = (x if rows is None else gather_rows(x, rows)) + y
        return x + self.mlp(self.mlp_norm(x))


class Head(nn.Module):
    """dense (no bias) + GELU + LayerNorm; the decoder is the tied token embedding with a bias."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.hidden, bias=False)
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps, bias=False)

    def forward(self, h):
        return self.norm(F.gelu(self.dense(h)))


class ModernBert(nn.Module):
    MLM_HEAD = ("head.", "decoder_bias")  # state-dict prefixes of the MLM head (a bare encoder lacks them)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.nsp:  # the pipeline refuses this earlier with advice; a direct caller gets the reason
            raise ValueError("the modern architecture has no next-sentence head; shard without --nsp")
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.layers))
        self.final_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps, bias=False)
        self.head = Head(cfg)
        self.decoder_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        D = cfg.hidden // cfg.heads
        self.register_buffer("freq_global", rope_frequencies(D, cfg.rope_theta), persistent=False)
        self.register_buffer("freq_local", rope_frequencies(D, cfg.local_rope_theta), persistent=False)
        self.nsp = None  # callers test for an NSP head as on Bert
        self._init()

    def _init(self):
        # ModernBERT's initialisation: truncated normals (+-2 std), the output projections scaled
        # by 1/sqrt(2 * layers) so the residual stream's variance does not grow with depth.
        std, out = self.cfg.init_std, self.cfg.init_std / (2.0 * max(1, self.cfg.layers)) ** 0.5
        for name, p in self.named_parameters():
            if p.dim() == 2:
                s = out if name.endswith(("attn.Wo.weight", "mlp.Wo.weight", "head.dense.weight")) else std
                nn.init.trunc_normal_(p, std=s, a=-2 * s, b=2 * s)

    @property
    def tok_weight(self) -> torch.Tensor:
        return self.embeddings.tok_embeddings.weight

    def num_params(self, embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if embeddings else n - self.tok_weight.numel()

    def _rope(self, positions, freq, dtype):
        """cos, sin (B, 1, T, D) for integer positions (B, T) or (1, T)."""
        f = positions[..., None].float() * freq                                     # (B, T, D/2)
        emb = torch.cat((f, f), dim=-1)[:, None]                                    # (B, 1, T, D)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def encode(self, input_ids, token_type_ids, lengths, rows=None, doc_starts=None):
        """Hidden states (B, T, C) after the final norm, or (B, Q, C) at `rows` (B, Q) only; with
        `doc_starts` (B, K) (`pack` shards) a token sees only its own document piece."""
        B, T = input_ids.shape
        dev = input_ids.device
        idx = torch.arange(T, device=dev)
        keep = idx[None, :] < lengths[:, None]                                      # (B, T)
        if doc_starts is not None:
            piece, pos = document_layout(doc_starts, T)                             # (B, T), (B, T)
            seen = (piece[:, :, None] == piece[:, None, :]) & keep[:, None, :]      # (B, T, T)
        else:
            pos, seen = idx[None], keep[:, None, :]                                 # (1, T), (B, 1, T)
        global_mask = seen[:, None]                                                 # (B, 1, T | 1, T)
        if doc_starts is None and dev.type == "cpu" and bool(keep.all()):  # nothing to mask (a sync, CPU only)
            global_mask = None
        if self.cfg.window // 2 >= T - 1:  # the window spans the sequence: local layers are global
            local_mask = global_mask
        else:
            near = (idx[:, None] - idx[None, :]).abs() <= self.cfg.window // 2      # (T, T)
            local_mask = (near[None] & seen)[:, None]                               # (B, 1, T, T)
        x = self.embeddings(input_ids, pos)                                         # (B, T, C)
        if self.cfg.positions == "rope":
            ropes = {True: self._rope(pos, self.freq_global, x.dtype), False: self._rope(pos, self.freq_local, x.dtype)}
        else:
            ropes = {True: (None, None), False: (None, None)}
        last = len(self.layers) - 1
        for i, block in enumerate(self.layers):
            r = rows if i == last else None
            mask = global_mask if block.is_global else local_mask
            if r is not None and mask is not None and mask.size(2) > 1:  # the queries' rows of a (B, 1, T, T) mask
                mask = torch.gather(mask, 2, r[:, None, :, None].expand(-1, 1, -1, T))      # (B, 1, Q, T)
            x = block(x, mask, *ropes[block.is_global], r)
        if rows is not None and not self.layers:
            x = gather_rows(x, rows)
        return self.final_norm(x)

    def forward(self, input_ids, token_type_ids, lengths, masked_positions=None, doc_starts=None):
        """MLM logits (B, P, V) at `masked_positions` (B, P), or (B, T, V) at every position when
        None, and None for NSP (this architecture has no NSP head). `doc_starts`: see `encode`."""
        h = self.encode(input_ids, token_type_ids, lengths, masked_positions, doc_starts)  # (B, P | T, C)
        return F.linear(self.head(h), self.tok_weight, self.decoder_bias), None     # (B, P, V)
