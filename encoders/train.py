"""Training: OmniSage's three tasks, each a sampled softmax (see encoders.losses).

1. item-item:    items engaged one after the other by a user, close in time
2. item-feature: an item's embedding against an encoding of its own raw features
3. user-item:    at every position of a user's sequence, the next item and one item from a short
                 future window (PinnerFormer's dense all-action loss)

Each step encodes the content of every item it touches, runs the item encoder on them, and feeds
those item vectors to the user encoder, so user-task gradients flow into the item encoder. A step's
cost follows its events, not the catalogue:

- neighbours' content comes from a cache of every item's content vector (detached; refreshed for
  the items a step encodes and wholly at each epoch), so an item costs one content encoding, not
  1 + K (historical embeddings, as GNNAutoScale; PinnerFormer freezes its item side outright);
- a catalogue of at most ``full_softmax_items`` is scored whole (an exact softmax, SASRec-CE);
  a larger one gets the in-batch positives (logQ-corrected by item counts) plus uniformly drawn
  items as negatives;
- validation ranks a fixed sample of at most ``validation_users`` users.

``fit`` can validate (and serve) an exponential moving average of the weights (``ema_decay``
per step, Polyak averaging: smoother validation curves, so the kept epoch is less a noise peak);
it keeps the best validation epoch and stops after ``patience`` epochs without a better one, or
when ``max_seconds`` is spent. Everything random comes from one seed; ``torch.set_num_threads``
is set.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from encoders.batches import Batch, BatchMaker
from encoders.contract import NUM_TOKEN_KINDS
from encoders.data import IntArray, TrainingData
from encoders.evaluate import (
    EvalCases,
    leave_one_out,
    rank_metrics,
    sample_negatives,
    vector_scorer,
)
from encoders.inference import encode_items, encode_users
from encoders.losses import full_softmax_loss, log_q_from_counts, sampled_softmax_loss
from encoders.model import ModelConfig, SageModel

log = logging.getLogger(__name__)

ITEM_TASK, FEATURE_TASK, USER_TASK = 0, 1, 2


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Optimisation settings and ablation switches."""

    epochs: int = 20
    batch_size: int = 32  # user windows per step
    # ML-100K full NDCG@10 per seed 0/1/2: 0.1177/0.1070/0.1114 at 3e-3, 0.1135/0.1146/0.1103 at
    # 1e-3 (medians 0.1114 and 0.1135; the seeds agree better at 1e-3)
    lr: float = 1e-3
    seed: int = 0
    threads: int = 2
    random_negatives: int = 1024
    full_softmax_items: int = 4096  # score every item when the catalogue is at most this big
    # epochs without a better validation score before stopping: validation on a few hundred users
    # is noisy, and at 5 one ML-100K seed stopped at epoch 15 while the others improved to 25-32
    patience: int = 10
    validation_users: int = 3000
    in_batch_negatives: int = 256
    pair_batch: int = 512  # per step (128 and 64 cost ML-100K 0.107 -> 0.095 NDCG@10)
    feature_batch: int = 256
    future_window: int = 8
    pair_window_s: float = 86400.0
    use_logq: bool = True
    use_random_negatives: bool = True
    use_feature_task: bool = True
    use_neighbours: bool = True
    max_seconds: float | None = None
    # Validate and serve an exponential moving average of the weights (0: off, the raw weights),
    # debiased as Adam debiases its moments: the average of the steps taken so far, not of the
    # initial weights, so a one-epoch model is as usable as a long run's. ML-100K full NDCG@10,
    # median of seeds 0-2: 0.1022 without -> 0.1061 with 0.995 (fixed windows).
    ema_decay: float = 0.995
    # Cut earlier user windows at a random offset each epoch (see BatchMaker.epoch_windows).
    shifted_windows: bool = True


@dataclass(slots=True)
class TrainResult:
    model: SageModel
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    best_epoch: int = 0


Progress = Callable[[int, int, int, dict[str, float]], None]  # epoch, step, steps, mean losses


def seed_everything(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


class Trainer:
    """Owns one model, its optimiser and the batch maker; ``fit`` runs the epochs."""

    def __init__(self, data: TrainingData, model_cfg: ModelConfig, cfg: TrainConfig) -> None:
        seed_everything(cfg.seed, cfg.threads)
        self.data, self.cfg = data, cfg
        self.model = SageModel(model_cfg)
        self.n_items = len(data.item_ids)
        self.batches = BatchMaker(
            data,
            model_cfg,
            cfg.future_window,
            cfg.pair_window_s,
            cfg.seed,
            cfg.random_negatives if cfg.use_random_negatives else 0,
            cfg.pair_batch,
            cfg.feature_batch,
            cfg.shifted_windows,
        )
        self.counts = torch.as_tensor(self.batches.item_counts, dtype=torch.float32)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=0.0, fused=True
        )
        # halve the step size whenever validation stalls for an epoch: the epochs after the
        # first plateau refine instead of jittering around it
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, mode="max", factor=0.5, patience=1
        )
        self.params = list(self.model.parameters())
        self.ema = [torch.zeros_like(p) for p in self.params] if cfg.ema_decay > 0 else None
        self.ema_steps = 0
        self.last_val: dict[str, float] = {}
        self.bag_tokens, self.bag_sizes = token_bags(self.model, data.token_ids)
        self.dense = torch.as_tensor(data.dense)
        k = model_cfg.neighbours
        self.neighbours = torch.clamp(torch.as_tensor(data.neighbours[:, :k]), min=0)  # pads: w 0
        weights = data.neighbour_weights[:, :k] * float(cfg.use_neighbours)
        self.weights = torch.as_tensor(weights, dtype=torch.float32)
        self.degrees = torch.as_tensor(data.degrees, dtype=torch.float32)
        self.everything = torch.arange(self.n_items)
        self.full_softmax = self.n_items <= cfg.full_softmax_items
        self.content_cache = torch.zeros(self.n_items, model_cfg.d_model)
        self.validation = _sample_cases(
            self.batches.validation, self.batches.val_negatives, cfg.validation_users, cfg.seed
        )

    def _loss(
        self,
        task: int,
        queries: Tensor,
        pos_ids: Tensor,
        negatives: IntArray,
        vec: Callable[[Tensor], Tensor],
    ) -> Tensor:
        """Softmax of one task over every item (small catalogues), else sampled: ``in_batch``
        positives of other queries (drawn proportionally to item counts, as far as the batch
        follows them) plus uniform items."""
        tau = self.model.temperature(task)
        if self.full_softmax:
            full: Tensor = full_softmax_loss(queries, vec(self.everything), pos_ids, tau)
            return full
        pick = torch.randint(0, len(pos_ids), (min(self.cfg.in_batch_negatives, len(pos_ids)),))
        uniform = torch.as_tensor(negatives, dtype=torch.int64)
        neg_ids = torch.cat([pos_ids[pick], uniform])
        log_q = None
        if self.cfg.use_logq:
            in_batch_q = log_q_from_counts(self.counts, len(pick))
            uniform_q = float(np.log(max(len(uniform), 1) / self.n_items))
            neg_q = torch.cat([in_batch_q[pos_ids[pick]], torch.full((len(uniform),), uniform_q)])
            log_q = (in_batch_q[pos_ids], neg_q)
        loss: Tensor = sampled_softmax_loss(
            queries, vec(pos_ids), pos_ids, vec(neg_ids), neg_ids, tau, log_q
        )
        return loss

    def _content(self, rows: Tensor, new_from: int | None = None) -> Tensor:
        """Content vectors of ``rows`` through the model's bag path (real tokens only), in one
        call, as the table's backward pass is most of its cost; rows from ``new_from`` on are
        encoded as new items, without their id token."""
        tokens, sizes = self.bag_tokens[rows], self.bag_sizes[rows]  # [U, T], [U, k]
        if new_from is not None and self.model.config.id_buckets:
            is_new = (torch.arange(len(rows)) >= new_from).unsqueeze(1)
            is_id = self.model.content.kind_of(tokens) == NUM_TOKEN_KINDS
            tokens = torch.where(is_new & is_id, 0, tokens)
            sizes = torch.cat([sizes[:, :NUM_TOKEN_KINDS], sizes[:, -1:] * ~is_new], 1)
        out: Tensor = self.model.content.from_bags(tokens[tokens > 0], sizes, self.dense[rows])
        return out

    @torch.no_grad()
    def refresh_content_cache(self, batch: int = 4096) -> None:
        """Every item's content vector, in eval mode (no id dropout)."""
        self.model.eval()
        for start in range(0, self.n_items, batch):
            rows = self.everything[start : start + batch]
            self.content_cache[rows] = self._content(rows)
        self.model.train()

    def _item_vectors(self, needed: Tensor, content: Tensor) -> Tensor:
        """Item vectors ``[len(needed), D]`` from their fresh ``content``, with cached content
        for their neighbours (the cache takes the fresh rows first)."""
        self.content_cache[needed] = content.detach()
        nbr_content = self.content_cache[self.neighbours[needed]]  # [U, K, d]
        out: Tensor = self.model.item(
            content, nbr_content, self.weights[needed], self.degrees[needed]
        )
        return out

    def step(self, batch: Batch) -> dict[str, float]:
        """One optimisation step over the three tasks; returns the per-task losses."""
        # an exact softmax scores every item anyway; else only what the batch touches
        needed = (
            self.everything
            if self.full_softmax
            else torch.as_tensor(batch.items_touched())  # sorted and unique
        )
        features = torch.unique(torch.as_tensor(batch.feature_items))
        if not self.cfg.use_feature_task:
            features = features[:0]
        content = self._content(torch.cat([needed, features]), new_from=len(needed))
        item_vec = self._item_vectors(needed, content[: len(needed)])  # [U, D]

        def vec(ids: Tensor) -> Tensor:
            return item_vec[torch.searchsorted(needed, ids)]

        losses = {"user": self._user_loss(batch, vec)}
        a, b = torch.as_tensor(batch.pair_a), torch.as_tensor(batch.pair_b)
        losses["item"] = self._loss(ITEM_TASK, vec(a), b, batch.pair_negatives, vec)
        if self.cfg.use_feature_task:
            losses["feature"] = self._feature_loss(features, content[len(needed) :], vec)
        total = torch.stack(list(losses.values())).sum()
        self.opt.zero_grad(set_to_none=True)
        total.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        if self.ema is not None:
            self.ema_steps += 1
            with torch.no_grad():
                for average, live in zip(self.ema, self.params, strict=True):
                    average.lerp_(live, 1.0 - self.cfg.ema_decay)
        return {k: float(v.detach()) for k, v in losses.items()}

    def _user_loss(self, batch: Batch, vec: Callable[[Tensor], Tensor]) -> Tensor:
        inputs = torch.as_tensor(batch.inputs)  # [B, M], -1 pads
        valid = inputs >= 0
        seq = vec(torch.clamp(inputs, min=0)) * valid.unsqueeze(-1)  # [B, M, D]
        actions, times = torch.as_tensor(batch.actions), torch.as_tensor(batch.times)
        users = self.model.user.project(self.model.user.hidden(seq, actions, times))  # [B, M, D]
        targets = torch.as_tensor(np.concatenate([batch.next_items, batch.future_items]))
        queries = torch.cat([users, users])[targets >= 0]
        return self._loss(USER_TASK, queries, targets[targets >= 0], batch.user_negatives, vec)

    def _feature_loss(
        self, items: Tensor, content: Tensor, vec: Callable[[Tensor], Tensor]
    ) -> Tensor:
        """Item embedding against its own features' encoding (``content``, without the id: what
        a new item has, so this task trains cold start); other items' features negatives."""
        feats = self.model.feature_vector(content)
        tau = self.model.temperature(FEATURE_TASK)
        loss: Tensor = sampled_softmax_loss(vec(items), feats, items, feats, items, tau)
        return loss

    def validate(self) -> float:
        """Full-ranking NDCG@10 on the (sampled) validation targets."""
        self.model.eval()
        cases, negatives = self.validation
        items = encode_items(self.model, self.data, self.cfg.use_neighbours)
        users = encode_users(self.model, items, cases.histories)
        self.model.train()
        metrics = rank_metrics(vector_scorer(users, items), cases, negatives)
        self.last_val = {
            "val_recall@10": metrics["full"]["recall@10"],
            "val_hr@10": metrics["sampled100"]["hr@10"],
        }
        return metrics["full"]["ndcg@10"]

    def _swap_in_average(self) -> list[Tensor] | None:
        """Put the (debiased) moving average into the model; returns the raw weights to restore."""
        if self.ema is None or self.ema_steps == 0:
            return None
        live = [p.detach().clone() for p in self.params]
        scale = 1.0 / (1.0 - self.cfg.ema_decay**self.ema_steps)
        with torch.no_grad():
            for param, average in zip(self.params, self.ema, strict=True):
                param.copy_(average * scale)
        return live

    def fit(self, progress: Progress | None = None) -> TrainResult:
        result = TrainResult(self.model)
        start, best = time.monotonic(), (-1.0, copy.deepcopy(self.model.state_dict()))
        for epoch in range(1, self.cfg.epochs + 1):
            self.refresh_content_cache()
            sums: dict[str, float] = {}
            windows = self.batches.epoch_windows()
            steps = -(-len(windows) // self.cfg.batch_size)
            batches = self.batches.epoch(self.cfg.batch_size, windows=windows)
            for step, batch in enumerate(batches, start=1):
                for k, v in self.step(batch).items():
                    sums[k] = sums.get(k, 0.0) + v
                if progress is not None:
                    progress(epoch, step, steps, {k: v / step for k, v in sums.items()})
            live = self._swap_in_average()
            val = self.validate()
            row = {
                "epoch": float(epoch),
                "val_ndcg@10": val,
                **self.last_val,
                **{k: v / step for k, v in sums.items()},
            }
            result.history.append(row)
            log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
            self.plateau.step(val)
            if val > best[0]:
                best, result.best_epoch = (val, copy.deepcopy(self.model.state_dict())), epoch
            if live is not None:  # back to the raw weights to train on
                with torch.no_grad():
                    for param, raw in zip(self.params, live, strict=True):
                        param.copy_(raw)
            if self.cfg.max_seconds is not None and time.monotonic() - start > self.cfg.max_seconds:
                log.warning("stopping after epoch %d: time budget spent", epoch)
                break
            if epoch - result.best_epoch >= self.cfg.patience:
                log.info("stopping after epoch %d: none better since %d", epoch, result.best_epoch)
                break
        log.info("serving epoch %d (validation NDCG@10 %.4f)", result.best_epoch, best[0])
        self.model.load_state_dict(best[1])
        self.model.eval()
        result.seconds = time.monotonic() - start
        return result


def model_test_metrics(
    model: SageModel, data: TrainingData, use_neighbours: bool, seed: int
) -> dict[str, dict[str, float]]:
    """Test-split metrics of a trained torch model (see encoders.evaluate)."""
    cases = leave_one_out(data.sequences, "test")
    negatives = sample_negatives(cases, len(data.item_ids), seed)
    items = encode_items(model, data, use_neighbours)
    users = encode_users(model, items, cases.histories)
    return rank_metrics(vector_scorer(users, items), cases, negatives)


def _sample_cases(
    cases: EvalCases, negatives: IntArray, limit: int, seed: int
) -> tuple[EvalCases, IntArray]:
    """At most ``limit`` of ``cases`` (a fixed draw), so validation costs the same at any size."""
    if len(cases) <= limit:
        return cases, negatives
    rows = np.sort(np.random.default_rng(seed).choice(len(cases), size=limit, replace=False))
    picked = EvalCases(
        tuple(cases.histories[r] for r in rows),
        cases.targets[rows],
        tuple(cases.interacted[r] for r in rows),
    )
    return picked, negatives[rows]


def token_bags(model: SageModel, token_ids: IntArray) -> tuple[Tensor, Tensor]:
    """Each item's tokens ordered by kind (zeros last) and ``[N, k]`` tokens per kind, for
    ``ContentEncoder.from_bags``; the featuriser puts the id first, so it is moved last."""
    ids = torch.as_tensor(token_ids)
    kind = model.content.kind_of(ids)
    kind = torch.where(ids > 0, kind, len(model.content.kinds))  # padding sorts last
    order = torch.sort(kind, dim=1, stable=True).indices
    sizes = F.one_hot(kind, len(model.content.kinds) + 1)[..., :-1].sum(dim=1)
    return torch.gather(ids, 1, order), sizes
