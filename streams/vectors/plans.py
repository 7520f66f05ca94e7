"""Which dirty items a pass encodes, and from what (steps 2 and 4 of reencoder.py).

A plan holds the inputs read before encoding: the item's state, its content and the basis it will
be recorded with once the upsert returned. The primary model skips items whose neighbours moved
less than `item_min_change` (`rules.material_change`); a shadow or a backfill encodes them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from encoders.data import FloatArray
from encoders.runtime import EncoderBundle
from state import VectorRecord
from state.catalog import CatalogRecord, CatalogStore
from state.encode_inputs import EncodeBasis, EncodeInputs, ItemInputs
from streams.vectors.rules import PassStats, Reason, item_reason, material_change


@dataclass(frozen=True)
class ItemPlan:
    """One item to encode now, with the inputs read before encoding."""

    reason: Reason
    state: ItemInputs
    content: CatalogRecord
    basis: EncodeBasis  # becomes the item's basis once the upsert returned
    first_ts: float | None
    previous: EncodeBasis | None = None  # the basis recorded before (the primary model's)

    def settled(self, vector: FloatArray, moved: bool) -> ItemPlan:
        """This plan once encoded: its basis carries the material version and vector its
        holders are built from, the new ones if the vector `moved` (they are rebuilt), else
        the previous ones (they stand)."""
        if moved or self.previous is None:
            row = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
            material = replace(self.basis, material_version=self.basis.state_version, material=row)
        else:
            material = replace(
                self.basis,
                material_version=self.previous.material_version,
                material=self.previous.material,
            )
        return replace(self, basis=material)

    def record(self, vector: FloatArray) -> VectorRecord:
        known = [t for t in (self.first_ts, self.content.put_ts) if t is not None]
        return VectorRecord(
            "items",
            self.content.item_id,
            vector,
            self.basis.state_version,
            max(known, default=0.0),
            material_version=self.basis.material_version or self.basis.state_version,
        )


def basis_of(state: ItemInputs, content: CatalogRecord, model_version: str) -> EncodeBasis:
    """What the item is encoded from; its weights are already relative (merge_relative)."""
    return EncodeBasis(
        state_version=state.version + content.input_version,
        model_version=model_version,
        neighbours=tuple(n for n, _ in state.neighbours),
        weights=tuple(w for _, w in state.neighbours),
        degree=state.degree,
        content_version=content.content_version,
        neighbour_content=content.neighbour_content,
        readers_added=True,  # recorded only after the encode joined `unread_neighbours`
    )


def unread_neighbours(plans: Mapping[str, ItemPlan]) -> dict[str, set[str]]:
    """Per neighbour, the planned items not yet among its readers: those whose last recorded
    basis did not list it (or predates the readers index). A neighbour once listed stays."""
    reads: dict[str, set[str]] = {}
    for item_id, plan in plans.items():
        known = plan.previous
        added = set(known.neighbours) if known is not None and known.readers_added else set()
        for neighbour in set(plan.basis.neighbours) - added:
            reads.setdefault(neighbour, set()).add(item_id)
    return reads


class ItemPlanner:
    def __init__(self, inputs: EncodeInputs, catalog: CatalogStore, min_change: float) -> None:
        self._inputs, self._catalog, self._min_change = inputs, catalog, min_change

    async def dirty(
        self,
        bundle: EncoderBundle,
        first_ts: Mapping[str, float],
        arrived: set[str],
        stats: PassStats,
        *,
        skip: bool,
    ) -> dict[str, ItemPlan]:
        """Read dirty items' state, basis and content; keep those that must be encoded
        (all of them unless `skip`: immaterial changes are skipped only by the primary)."""
        ids = list(first_ts)
        if not ids:
            return {}
        # three independent reads at once: Redis answers one while this process parses another
        states, bases, contents = await asyncio.gather(
            self._inputs.items(ids, bundle.neighbours),
            self._inputs.bases(ids),
            self._catalog.get(ids),
        )
        plans: dict[str, ItemPlan] = {}
        for item_id in ids:
            content = contents.get(item_id) or CatalogRecord.empty(item_id)
            state = states[item_id]
            basis = bases.get(item_id)
            changed = basis is not None and material_change(
                basis, state.neighbours, state.degree, self._min_change
            )
            reason = item_reason(
                basis,
                bundle.version,
                item_id in arrived,
                content.content_version,
                changed,
                content.neighbour_content,
            )
            if reason is None and not skip:
                reason = "neighbours"
            if reason is None:
                stats.items_skipped += 1
                continue
            plan_basis = basis_of(state, content, bundle.version)
            plans[item_id] = ItemPlan(
                reason, state, content, plan_basis, first_ts[item_id], previous=basis
            )
        return plans

    async def cold(self, bundle: EncoderBundle, ids: Iterable[str]) -> dict[str, ItemPlan]:
        """Plans for items a history needs that have no vector of this model (step 4)."""
        wanted = list(ids)
        if not wanted:
            return {}
        states = await self._inputs.items(wanted, bundle.neighbours)
        contents = await self._catalog.get(wanted)
        plans = {}
        for item_id in wanted:
            content = contents.get(item_id) or CatalogRecord.empty(item_id)
            basis = basis_of(states[item_id], content, bundle.version)
            plans[item_id] = ItemPlan("cold_start", states[item_id], content, basis, None)
        return plans
