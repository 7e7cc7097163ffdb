"""BERT, top to bottom in one file: embeddings, encoder blocks, the MLM and NSP heads, the loss.

In the spirit of nanoGPT's model.py. Shapes: B batch, T sequence length, C hidden, H heads,
D = C / H head width, F feed-forward width, P prediction slots per example, V vocabulary.

Differences from a textbook BERT that matter for speed, none for the maths:
- the MLM head runs only at the P positions the shards chose for prediction, not at all T
  positions: at small widths the (T, V) decoder dominates the step; and the last encoder layer
  computes its queries, attention output and feed-forward only at [CLS] and those P positions
  (keys and values still come from all T), since no head reads the others;
- the padding mask goes to `scaled_dot_product_attention` as a boolean (B, 1, 1, T) mask built on
  the device from the example lengths, so no float mask is ever copied from the host (and on CPU
  none at all when a batch has no padding);
- `pack` shards hold several documents per row; with their `doc_starts` the attention mask is
  block-diagonal (a (B, 1, T, T) boolean: a token sees only its own document piece, never
  padding) and positions restart at 0 at each piece's [CLS] (`document_layout`). A boolean SDPA
  mask, not FlexAttention: on CPU FlexAttention has no backward, and its compiled forward is 2.9x
  slower at T = 128 (bench/README.md, Packing); on CUDA the boolean mask sends SDPA to its
  memory-efficient kernel;
- on CPU in bf16, attention is plain matmuls and a float32 softmax (`attention_math`): there the
  fused flash kernel is slower at BERT's lengths on a CPU with AMX (without AMX bf16 does not pay on CPU:
  bench/README.md, Quality).

Every weight has exactly one HuggingFace `BertForPreTraining` / `BertForMaskedLM` counterpart of
the same shape (`trainer/hf.py` holds the rename table); q, k and v stay separate for that reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from bertprep.shards.errors import ConfigError
from bertprep.shards.options import check
from bertprep.trainer.config import Arch, Norm

IGNORE = -100  # target of an unused prediction slot


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The network's exact shape. The vocab size, the length and NSP come from the shards; the rest
    from the --model preset and the shape flags (trainer/config.py `ShapeConfig`, via phases.py)."""

    vocab_size: int
    max_len: int                 # positions in the table (--max-position); shards up to this length fit
    layers: int = 2
    hidden: int = 128
    heads: int = 2
    ffn: int = 512
    dropout: float = 0.1         # embeddings, attention probabilities, residual branches
    norm: Norm = "post"          # "post" (BERT) or "pre" (+ a final LayerNorm; no HF counterpart)
    nsp: bool = False            # build the pooler and the next-sentence head
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02
    arch: Arch = "bert"          # "bert" (this file) or "modern" (trainer/modern.py; the fields below)
    window: int = 128            # modern: local layers attend over |i - j| <= window / 2
    global_every: int = 3        # modern: layers 0, k, 2k, ... attend globally
    rope_theta: float = 160_000.0        # modern: RoPE base of the global layers
    local_rope_theta: float = 10_000.0   # modern: RoPE base of the local layers
    positions: Literal["rope", "learned"] = "rope"   # modern, ablations only: BERT's learned table
    mlp: Literal["geglu", "gelu"] = "geglu"          # modern, ablations only: BERT's GELU feed-forward

    def __post_init__(self):
        check(self)
        for name in ("vocab_size", "max_len", "layers", "hidden", "heads", "ffn"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ConfigError(f"--hidden ({self.hidden}) must be a multiple of --heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.arch == "modern" and (self.hidden // self.heads) % 2:
            raise ConfigError(f"--arch modern: rotary embeddings need an even head width, got "
                              f"{self.hidden} / {self.heads} = {self.hidden // self.heads}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Embeddings(nn.Module):
    """Token + position + segment embeddings, LayerNorm (post-norm only), dropout."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.pos = nn.Embedding(cfg.max_len, cfg.hidden)
        self.seg = nn.Embedding(cfg.type_vocab_size, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, input_ids, token_type_ids, pos=None):
        """`pos` (B, T): each token's position (restarting per document piece); default 0..T-1."""
        if pos is None:
            pos = torch.arange(input_ids.size(1), device=input_ids.device)[None]  # (1, T)
        x = self.tok(input_ids) + self.pos(pos) + self.seg(token_type_ids)         # (B, T, C)
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

    def forward(self, xq, x, mask):
        """Queries from xq (B, Q, C), keys and values from x (B, T, C); Q = T except in the last layer.
        `mask`: boolean, broadcastable to (B, H, Q, T), True where a query may attend, or None."""
        B, T, C = x.shape
        Q, H, D = xq.size(1), self.heads, C // self.heads
        q = self.q(xq).view(B, Q, H, D).transpose(1, 2)                            # (B, H, Q, D)
        k = self.k(x).view(B, T, H, D).transpose(1, 2)                             # (B, H, T, D)
        v = self.v(x).view(B, T, H, D).transpose(1, 2)                             # (B, H, T, D)
        p = self.attn_dropout if self.training else 0.0
        if x.device.type == "cpu" and q.dtype == torch.bfloat16:
            y = attention_math(q, k, v, mask, p)                                   # (B, H, Q, D)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, H, Q, D)
        y = y.transpose(1, 2).reshape(B, Q, C)                                     # (B, Q, C)
        return self.drop(self.proj(y))


def attention_math(q, k, v, mask, dropout_p: float):
    """softmax(q k^T / sqrt(D)) v, the softmax in float32: what `scaled_dot_product_attention`
    computes, but on CPU in bf16 about 2x faster than its flash kernel at BERT's lengths (T = 128,
    D = 64: 10 against 23 ms for forward + backward of a 32 x 2-head batch on one core), where AMX
    matmuls are cheap and the kernel's blocking is not."""
    s = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5                             # (B, H, Q, T)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    a = torch.softmax(s.float(), dim=-1).to(v.dtype)
    if dropout_p:
        a = F.dropout(a, dropout_p)
    return a @ v                                                                   # (B, H, Q, D)


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

    def forward(self, x, mask, rows=None):
        """(B, T, C) -> (B, T, C), or (B, Q, C) at positions `rows` (B, Q) only, still attending
        over all of x: the last layer need not compute what no head reads."""
        xq = x if rows is None else gather_rows(x, rows)                           # (B, Q, C)
        if self.pre:
            h = self.attn_norm(x)                                                  # (B, T, C)
            xq = xq + self.attn(h if rows is None else gather_rows(h, rows), h, mask)
            return xq + self.ffn(self.ffn_norm(xq))
        xq = self.attn_norm(xq + self.attn(xq, x, mask))
        return self.ffn_norm(xq + self.ffn(xq))                                    # (B, Q, C)


def document_layout(doc_starts, T: int):
    """From each row's document-piece starts (B, K) (0-padded: slot 0 starts a piece anyway):
    the piece each token belongs to (B, T) and its position within the piece (B, T)."""
    idx = torch.arange(T, device=doc_starts.device)                                # (T,)
    start = torch.zeros(doc_starts.size(0), T, dtype=torch.bool, device=doc_starts.device)
    start.scatter_(1, doc_starts, True)                                            # (B, T)
    piece = start.cumsum(1)                                                        # (B, T)
    pos = idx - torch.where(start, idx, 0).cummax(1).values                        # (B, T)
    return piece, pos


def gather_rows(x, rows):
    """x (B, T, C) at positions rows (B, Q) -> (B, Q, C)."""
    return torch.gather(x, 1, rows[:, :, None].expand(-1, -1, x.size(-1)))


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
    MLM_HEAD = ("mlm.",)  # state-dict prefixes of the MLM head (a bare encoder lacks them)

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

    def encode(self, input_ids, token_type_ids, lengths, rows=None, doc_starts=None):
        """Hidden states (B, T, C) of a padded batch, or (B, Q, C) at positions `rows` (B, Q) only
        (computed so in the last layer); positions >= length are never attended to. With
        `doc_starts` (B, K) (`pack` shards) a token attends only within its document piece and
        positions restart at each piece."""
        T = input_ids.size(1)
        keep = torch.arange(T, device=input_ids.device)[None, :] < lengths[:, None]  # (B, T)
        if doc_starts is not None:
            piece, pos = document_layout(doc_starts, T)                              # (B, T), (B, T)
            same = piece[:, :, None] == piece[:, None, :]                            # (B, T, T)
            mask = (same & keep[:, None, :])[:, None]                                # (B, 1, T, T)
            piece_q = piece if rows is None else torch.gather(piece, 1, rows)        # (B, Q)
            last_mask = ((piece_q[:, :, None] == piece[:, None, :]) & keep[:, None, :])[:, None]  # (B, 1, Q, T)
        else:
            pos = None
            mask = keep[:, None, None, :]                                            # (B, 1, 1, T)
            if input_ids.device.type == "cpu" and bool(keep.all()):  # no padding (`split` packing): nothing
                mask = None                                          # to mask (a sync, so on CPU only)
            last_mask = mask
        x = self.embed(input_ids, token_type_ids, pos)                               # (B, T, C)
        for i, block in enumerate(self.layers):
            last = i == len(self.layers) - 1
            x = block(x, last_mask if last else mask, rows if last else None)
        if rows is not None and not self.layers:
            x = gather_rows(x, rows)
        return self.final_norm(x) if self.final_norm is not None else x

    def forward(self, input_ids, token_type_ids, lengths, masked_positions=None, doc_starts=None):
        """MLM logits (B, P, V) at `masked_positions` (B, P), or (B, T, V) at every position when
        None, and NSP logits (B, 2) (None without an NSP head). `doc_starts`: see `encode`."""
        if masked_positions is None:
            h = self.encode(input_ids, token_type_ids, lengths, doc_starts=doc_starts)  # (B, T, C)
            h_cls, h_mlm = h[:, 0], h
        else:  # [CLS] (position 0) for NSP, then the prediction positions
            cls = torch.zeros_like(masked_positions[:, :1])
            h = self.encode(input_ids, token_type_ids, lengths, torch.cat([cls, masked_positions], 1), doc_starts)
            h_cls, h_mlm = h[:, 0], h[:, 1:]                                         # (B, C), (B, P, C)
        mlm_logits = self.mlm(h_mlm, self.embed.tok.weight)                          # (B, P, V)
        nsp_logits = self.nsp(h_cls) if self.nsp is not None else None               # (B, 2)
        return mlm_logits, nsp_logits


def mlm_targets(masked_ids, num_masked):
    """(B, P) targets with IGNORE in the slots past each example's num_masked."""
    slot = torch.arange(masked_ids.size(1), device=masked_ids.device)[None, :]      # (1, P)
    return torch.where(slot < num_masked[:, None], masked_ids, IGNORE)                # (B, P)


def pretraining_loss(mlm_logits, nsp_logits, batch, accuracy: bool = True) -> tuple[torch.Tensor, dict]:
    """Mean MLM cross-entropy over the real prediction slots (+ NSP cross-entropy when present).

    Returns the total and a dict of detached parts (sums and counts, so they add across batches and
    ranks): mlm_loss_sum, mlm_count, and with `accuracy` mlm_correct, nsp_correct, nsp_count (an
    argmax over (B*P, V) logits: a few % of a small model's step, so training leaves it out).
    No host sync here.
    """
    targets = mlm_targets(batch["masked_ids"], batch["num_masked"])                  # (B, P)
    logits = mlm_logits.float().flatten(0, 1)                                        # (B*P, V)
    flat = targets.flatten()                                                         # (B*P,)
    per_slot = F.cross_entropy(logits, flat, ignore_index=IGNORE, reduction="none")  # (B*P,)
    real = flat != IGNORE
    count = real.sum()
    mlm_loss = per_slot.sum() / count.clamp(min=1)
    with torch.no_grad():
        parts = {"mlm_loss_sum": per_slot.detach().sum(), "mlm_count": count}
        if accuracy:
            parts["mlm_correct"] = ((logits.argmax(-1) == flat) & real).sum()
    loss = mlm_loss
    if nsp_logits is not None and "nsp_label" in batch:
        labels = batch["nsp_label"]
        loss = loss + F.cross_entropy(nsp_logits.float(), labels)
        if accuracy:
            parts["nsp_correct"] = (nsp_logits.detach().argmax(-1) == labels).sum()
            parts["nsp_count"] = torch.tensor(labels.numel(), device=labels.device)
    return loss, parts


def flops_per_step(cfg: ModelConfig, batch: int, seq: int, predictions: int, last_layer_rows: int | None = None) -> float:
    """Matmul FLOPs of one training step (backward = 2x forward) for `batch` examples of `seq`
    tokens with `predictions` MLM positions; the last layer computes queries and feed-forward at
    `last_layer_rows` positions (ours: 1 + predictions; HF: seq)."""
    C, Fw, L, V, T = cfg.hidden, cfg.ffn, cfg.layers, cfg.vocab_size, seq
    Q = T if last_layer_rows is None else last_layer_rows

    def layer(rows: int) -> float:  # k, v over all T; q, output, attention and FFN over `rows`
        return 2 * 2 * C * C * T + rows * (2 * 2 * C * C + 2 * 2 * T * C + 2 * 2 * C * Fw)

    encoder = (L - 1) * layer(T) + layer(Q) if L else 0
    head = predictions * (2 * C * C + 2 * C * V)
    pooler = (2 * C * C + 2 * C * 2) if cfg.nsp else 0
    return 3.0 * batch * (encoder + head + pooler)
