"""The torch models, in one readable file (nanoGPT style).

ContentEncoder   hashed token ids + dense vector        -> content vector   [B, d]
ItemEncoder      own content + K neighbour contents + degree -> item vector [B, D] (L2-normalised)
UserEncoder      last M item vectors + actions + times   -> user vector      [B, D] (L2-normalised)

There is no item-id embedding anywhere: an item is its content plus its neighbours' content, so a
new item encodes from its content alone (zero neighbours), which is the cold-start path.
``ModelConfig`` is saved with every model version and in the ONNX metadata.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encoders.contract import NUM_ACTIONS, NUM_TIME_FEATURES, NUM_TOKEN_KINDS


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Everything needed to rebuild the networks; the serving contract's dimensions live here."""

    buckets_per_kind: int
    dense_width: int
    d_model: int = 64
    out_dim: int = 64
    n_heads: int = 4
    item_layers: int = 1
    user_layers: int = 2
    neighbours: int = 10  # K: neighbour tokens per item
    seq_len: int = 50  # M: actions per user sequence
    dropout: float = 0.1

    def __post_init__(self) -> None:
        assert self.d_model % self.n_heads == 0, "d_model must be divisible by n_heads"
        assert self.neighbours >= 1 and self.seq_len >= 1

    @property
    def table_size(self) -> int:
        return 1 + NUM_TOKEN_KINDS * self.buckets_per_kind

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ModelConfig:
        known = {f: raw[f] for f in cls.__dataclass_fields__ if f in raw}
        return cls(**known)


class SelfAttention(nn.Module):
    """Multi-head self-attention; ``allowed[b, 1|h, t, s]`` says query t may attend to key s."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        # [B, T, d] -> [B, h, T, d/h]
        q = q.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)
        k = k.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)
        v = v.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // self.n_heads))  # [B, h, T, T]
        # every row keeps at least one allowed key (summary/self token, or causal diagonal): no NaN
        att = att.masked_fill(~allowed, float("-inf"))
        att = self.drop(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, t, d)  # [B, T, d]
        out: Tensor = self.proj(y)
        return out


class Block(nn.Module):
    """Pre-LayerNorm transformer block (MLP width 2d: small and quick on two CPU cores)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 2 * d_model),
            nn.GELU(),
            nn.Linear(2 * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x), allowed)
        out: Tensor = x + self.mlp(self.ln2(x))
        return out


class ContentEncoder(nn.Module):
    """Mean-pool token embeddings per token kind, project with the dense vector, LayerNorm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.buckets = cfg.buckets_per_kind
        self.embed = nn.Embedding(cfg.table_size, cfg.d_model, padding_idx=0)
        nn.init.normal_(self.embed.weight, std=0.1)
        with torch.no_grad():
            self.embed.weight[0].zero_()
        self.kind_proj = nn.Linear(NUM_TOKEN_KINDS * cfg.d_model, cfg.d_model)
        self.dense_proj = nn.Linear(cfg.dense_width, cfg.d_model)
        self.ln = nn.LayerNorm(cfg.d_model)
        self.register_buffer("kinds", torch.arange(NUM_TOKEN_KINDS), persistent=False)

    def forward(self, token_ids: Tensor, dense: Tensor) -> Tensor:
        b, _t = token_ids.shape
        assert dense.dim() == 2 and dense.shape[0] == b, f"dense {tuple(dense.shape)} vs batch {b}"
        emb = self.embed(token_ids)  # [B, T, d]
        kind = torch.div(torch.clamp(token_ids - 1, min=0), self.buckets, rounding_mode="floor")
        member = (kind.unsqueeze(-1) == self.kinds) & (token_ids > 0).unsqueeze(-1)  # [B, T, k]
        weights = member.to(emb.dtype)
        pooled = weights.transpose(1, 2) @ emb  # [B, k, d]
        pooled = pooled / torch.clamp(weights.sum(dim=1), min=1.0).unsqueeze(-1)
        h = self.kind_proj(pooled.reshape(b, -1)) + self.dense_proj(dense)  # [B, d]
        out: Tensor = self.ln(h)
        return out


class ItemEncoder(nn.Module):
    """Summary token + own content token + K neighbour content tokens, weighted by log(1+w)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.summary = nn.Parameter(torch.zeros(d))
        self.token_type = nn.Parameter(torch.randn(3, d) * 0.02)  # summary, self, neighbour
        self.weight_fn = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1), nn.Softplus())
        self.degree_proj = nn.Linear(3, d)
        nn.init.normal_(self.degree_proj.weight, std=0.02)
        self.blocks = nn.ModuleList(
            Block(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.item_layers)
        )
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.out_dim)

    def forward(
        self, content: Tensor, neighbour_content: Tensor, neighbour_weights: Tensor, degree: Tensor
    ) -> Tensor:
        b, k, d = neighbour_content.shape
        assert content.shape == (b, d), f"content {tuple(content.shape)} vs {(b, d)}"
        assert neighbour_weights.shape == (b, k), f"weights {tuple(neighbour_weights.shape)}"
        present = neighbour_weights > 0  # [B, K]
        # weights are relative to the list's strongest neighbour, so a uniformly decayed list
        # (forward decay read at a later `now`) encodes the same
        w = torch.clamp(neighbour_weights, min=0.0)
        w = w / torch.clamp(w.max(dim=1, keepdim=True).values, min=1e-30)
        log_w = torch.log1p(w).unsqueeze(-1)  # [B, K, 1]
        nbr = neighbour_content * self.weight_fn(log_w) + self.token_type[2]  # [B, K, d]
        assert degree.shape == (b,), f"degree {tuple(degree.shape)} != ({b},)"
        stats = torch.stack(
            [
                torch.log1p(present.to(content.dtype).sum(1)),
                log_w.squeeze(-1).sum(1),
                torch.log1p(torch.clamp(degree, min=0.0)),
            ],
            dim=1,
        )  # [B, 3]
        summary = (self.summary + self.token_type[0] + self.degree_proj(stats)).unsqueeze(1)
        own = (content + self.token_type[1]).unsqueeze(1)
        x = torch.cat([summary, own, nbr], dim=1)  # [B, 2+K, d]
        keys = torch.cat([torch.ones_like(present[:, :2]), present], dim=1)  # [B, 2+K]
        allowed = keys[:, None, None, :]  # [B, 1, 1, 2+K]
        for block in self.blocks:
            x = block(x, allowed)
        # read out the summary plus the item's own token, so its content is never diluted away
        out = self.head(self.ln_f(x[:, 0] + x[:, 1]))  # [B, D]
        return F.normalize(out, dim=-1)


class UserEncoder(nn.Module):
    """Causal transformer over left-aligned sequences; the output is gathered at length - 1."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.seq_len = cfg.seq_len
        self.in_proj = nn.Linear(cfg.out_dim, d)
        self.action = nn.Embedding(NUM_ACTIONS, d)
        self.time_proj = nn.Linear(NUM_TIME_FEATURES, d)
        # small side inputs at first, so the item vectors dominate the early tokens
        nn.init.normal_(self.action.weight, std=0.02)
        nn.init.normal_(self.time_proj.weight, std=0.02)
        self.position = nn.Parameter(torch.randn(cfg.seq_len, d) * 0.02)
        self.blocks = nn.ModuleList(
            Block(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.user_layers)
        )
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, cfg.out_dim))
        causal = torch.tril(torch.ones(cfg.seq_len, cfg.seq_len, dtype=torch.bool))
        self.register_buffer(
            "causal", causal.view(1, 1, cfg.seq_len, cfg.seq_len), persistent=False
        )

    def hidden(self, item_vectors: Tensor, actions: Tensor, time_features: Tensor) -> Tensor:
        """Hidden state at every position ``[B, M, d]``; position t sees positions 0..t only."""
        b, m, _ = item_vectors.shape
        assert m == self.seq_len, f"sequence length {m} != model's fixed M={self.seq_len}"
        assert actions.shape == (b, m) and time_features.shape[:2] == (b, m)
        x = self.in_proj(item_vectors) + self.action(actions) + self.time_proj(time_features)
        x = x + self.position  # [B, M, d]
        for block in self.blocks:
            x = block(x, self.causal)
        out: Tensor = self.ln_f(x)
        return out

    def project(self, hidden: Tensor) -> Tensor:
        """Hidden states ``[..., d]`` to L2-normalised user vectors ``[..., D]``."""
        return F.normalize(self.head(hidden), dim=-1)

    def forward(
        self, item_vectors: Tensor, actions: Tensor, time_features: Tensor, lengths: Tensor
    ) -> Tensor:
        h = self.hidden(item_vectors, actions, time_features)  # [B, M, d]
        b, _, d = h.shape
        last = torch.clamp(lengths - 1, min=0, max=self.seq_len - 1).view(b, 1, 1).expand(b, 1, d)
        return self.project(h.gather(1, last).squeeze(1))  # [B, D]


class SageModel(nn.Module):
    """All towers plus the training-only parts (feature head, per-task temperatures)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.content = ContentEncoder(cfg)
        self.item = ItemEncoder(cfg)
        self.user = UserEncoder(cfg)
        # entity-feature task: an encoding of an item's raw features alone, to match its embedding
        self.feature_head = nn.Linear(cfg.d_model, cfg.out_dim)
        self.log_tau = nn.Parameter(torch.full((3,), math.log(0.07)))  # item, feature, user tasks

    def temperature(self, task: int) -> Tensor:
        """Learned temperature of one task, floored at 0.01."""
        return torch.clamp(self.log_tau[task].exp(), min=0.01)

    def feature_vector(self, content: Tensor) -> Tensor:
        return F.normalize(self.feature_head(content), dim=-1)
