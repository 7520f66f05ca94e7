"""The torch models, in one readable file (nanoGPT style).

ContentEncoder   hashed token ids + dense vector        -> content vector   [B, d]
ItemEncoder      own content + K pooled neighbour contents + degree -> item vector [B, D] (L2)
UserEncoder      last M item vectors + actions + times   -> user vector      [B, D] (L2-normalised)

An item's identity is one more content token (a hashed id, see encoders.features), dropped at
random in training, so a new item still encodes from its content alone (an unseen id bucket,
zero neighbours), which is the cold-start path.
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
    user_layers: int = 2
    neighbours: int = 10  # K: neighbour tokens per item
    seq_len: int = 50  # M: actions per user sequence
    # ML-100K full NDCG@10 per seed 0/1/2 with shifted windows and a 0.995 moving average:
    # 0.1090/0.1064/0.1055 at 0.1 (patience 5), 0.1177/0.1070/0.1085 at 0.2 (patience 10); with
    # fixed windows 0.2 did not help on seed 0 (0.1037)
    dropout: float = 0.2
    id_buckets: int = 0  # the featuriser's id-token range (0: no id token)
    id_dropout: float = 0.1  # training only: share of items encoded without their id
    # False: the item encoder ignores its neighbour inputs (the `--no-neighbours` ablation). It
    # is part of the network, so the exported item graph ignores them too and the served
    # vectors are the ones that were evaluated.
    use_neighbours: bool = True

    def __post_init__(self) -> None:
        assert self.d_model % self.n_heads == 0, "d_model must be divisible by n_heads"
        assert self.neighbours >= 1 and self.seq_len >= 1

    @property
    def table_size(self) -> int:
        return 1 + NUM_TOKEN_KINDS * self.buckets_per_kind + self.id_buckets

    @property
    def token_kinds(self) -> int:
        """Pooled token kinds: the content kinds, plus the id when there is an id range."""
        return NUM_TOKEN_KINDS + (1 if self.id_buckets else 0)

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
        # every row keeps at least one allowed key (the causal diagonal): no NaN
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
        self.buckets, self.id_dropout = cfg.buckets_per_kind, cfg.id_dropout
        self.embed = nn.Embedding(cfg.table_size, cfg.d_model, padding_idx=0)
        nn.init.normal_(self.embed.weight, std=0.1)
        with torch.no_grad():
            self.embed.weight[0].zero_()
        self.kind_proj = nn.Linear(cfg.token_kinds * cfg.d_model, cfg.d_model)
        self.dense_proj = nn.Linear(cfg.dense_width, cfg.d_model)
        self.ln = nn.LayerNorm(cfg.d_model)
        self.kinds: Tensor
        self.register_buffer("kinds", torch.arange(cfg.token_kinds), persistent=False)

    def kind_of(self, token_ids: Tensor) -> Tensor:
        """Each token's kind; the id range sits after the content kinds, all of it one kind."""
        kind = torch.div(torch.clamp(token_ids - 1, min=0), self.buckets, rounding_mode="floor")
        return torch.clamp(kind, max=NUM_TOKEN_KINDS)

    def forward(self, token_ids: Tensor, dense: Tensor) -> Tensor:
        b, _t = token_ids.shape
        assert dense.dim() == 2 and dense.shape[0] == b, f"dense {tuple(dense.shape)} vs batch {b}"
        emb = self.embed(token_ids)  # [B, T, d]
        real = (token_ids > 0).unsqueeze(-1)
        weights = ((self.kind_of(token_ids).unsqueeze(-1) == self.kinds) & real).to(emb.dtype)
        pooled = weights.transpose(1, 2) @ emb  # [B, k, d]; weights [B, T, k] one-hot kinds
        counts = weights.sum(dim=1)  # [B, k]
        return self._project(pooled, counts, dense)

    def from_bags(self, tokens: Tensor, bag_sizes: Tensor, dense: Tensor) -> Tensor:
        """``forward`` for tokens already grouped by row and kind: ``tokens`` flat, ``bag_sizes
        [B, k]`` how many each (row, kind) holds. Training's path: it gathers only real tokens
        (half the time of the padded form); the padded form is what exports to ONNX."""
        b, k = bag_sizes.shape
        offsets = torch.cumsum(bag_sizes.reshape(-1), 0) - bag_sizes.reshape(-1)
        pooled = F.embedding_bag(tokens, self.embed.weight, offsets, mode="sum")
        return self._project(pooled.view(b, k, -1), bag_sizes.to(pooled.dtype), dense)

    def _project(self, pooled: Tensor, counts: Tensor, dense: Tensor) -> Tensor:
        """Per-kind sums ``[B, k, d]`` and counts ``[B, k]`` to content vectors ``[B, d]``."""
        if self.training and self.id_dropout > 0 and counts.shape[1] > NUM_TOKEN_KINDS:
            keep = torch.rand(counts.shape[0], 1, device=counts.device) >= self.id_dropout
            kept = torch.cat([torch.ones_like(counts[:, :NUM_TOKEN_KINDS]), keep.to(counts)], 1)
            pooled, counts = pooled * kept.unsqueeze(-1), counts * kept
        pooled = pooled / torch.clamp(counts, min=1.0).unsqueeze(-1)
        h = self.kind_proj(pooled.reshape(pooled.shape[0], -1)) + self.dense_proj(dense)
        out: Tensor = self.ln(h)
        return out


class ItemEncoder(nn.Module):
    """Own content plus importance-pooled neighbour content (PinSage), then a residual MLP.

    Each neighbour's pull is its co-engagement weight relative to the list's strongest (so a
    uniformly decayed list encodes the same whenever it is read) sharpened by a learned power,
    plus how well it matches the item's own content; absent neighbours (weight 0) get none. An
    item without neighbours pools nothing and encodes from its content alone.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.message = nn.Sequential(nn.Linear(d, d), nn.GELU())
        self.query = nn.Linear(d, d, bias=False)
        nn.init.zeros_(self.query.weight)  # start as PinSage's pure importance pooling
        self.sharpness = nn.Parameter(torch.ones(()))
        self.degree_proj = nn.Linear(3, d)
        nn.init.normal_(self.degree_proj.weight, std=0.02)
        self.mlp = nn.Sequential(
            nn.Linear(2 * d, 2 * d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(2 * d, d)
        )
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.out_dim)
        self.use_neighbours = cfg.use_neighbours

    def forward(
        self, content: Tensor, neighbour_content: Tensor, neighbour_weights: Tensor, degree: Tensor
    ) -> Tensor:
        b, k, d = neighbour_content.shape
        assert content.shape == (b, d), f"content {tuple(content.shape)} vs {(b, d)}"
        assert neighbour_weights.shape == (b, k), f"weights {tuple(neighbour_weights.shape)}"
        assert degree.shape == (b,), f"degree {tuple(degree.shape)} != ({b},)"
        if not self.use_neighbours:  # traced as a constant: the exported graph ignores them too
            neighbour_weights = torch.zeros_like(neighbour_weights)
        present = neighbour_weights > 0  # [B, K]
        shown = present.to(content.dtype)
        w = torch.clamp(neighbour_weights, min=0.0)
        w = w / torch.clamp(w.max(dim=1, keepdim=True).values, min=1e-30)  # (0, 1], 1 = strongest
        log_w = torch.log(torch.clamp(w, min=1e-6))  # [B, K]
        fit = (neighbour_content @ self.query(content).unsqueeze(-1)).squeeze(-1) / math.sqrt(d)
        score = (self.sharpness * log_w + fit).masked_fill(~present, -1e9)
        pull = F.softmax(score, dim=1) * shown  # all-absent rows pull nothing
        pooled = (pull.unsqueeze(1) @ self.message(neighbour_content)).squeeze(1)  # [B, d]
        stats = torch.stack(
            [
                torch.log1p(shown.sum(1)),
                (log_w * shown).sum(1) / torch.clamp(shown.sum(1), min=1.0),
                torch.log1p(torch.clamp(degree, min=0.0)),
            ],
            dim=1,
        )  # [B, 3]
        h = content + self.mlp(torch.cat([content, pooled], dim=1)) + self.degree_proj(stats)
        return F.normalize(self.head(self.ln_f(h)), dim=-1)


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
        self.causal: Tensor
        self.register_buffer(
            "causal", causal.view(1, 1, cfg.seq_len, cfg.seq_len), persistent=False
        )

    def hidden(self, item_vectors: Tensor, actions: Tensor, time_features: Tensor) -> Tensor:
        """Hidden state at every position ``[B, m, d]``; position t sees positions 0..t only.
        Serving passes the full M; training may pass only the first m <= M positions (the rest
        is padding a causal model never reads), so short sequences cost what they hold."""
        b, m, _ = item_vectors.shape
        assert m <= self.seq_len, f"sequence length {m} > model's M={self.seq_len}"
        assert actions.shape == (b, m) and time_features.shape[:2] == (b, m)
        x = self.in_proj(item_vectors) + self.action(actions) + self.time_proj(time_features)
        x = x + self.position[:m]  # [B, m, d]
        for block in self.blocks:
            x = block(x, self.causal[:, :, :m, :m])
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
