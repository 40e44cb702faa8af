"""The two ranking paths, their blend, and diversification, over the look store; free of gRPC so that
the evaluation commands rank exactly as the gateway does.

- look-alike: search the query garment's own vector (`top` for a top) among approved looks; each
  hit offers its counterpart garment.
- compatibility: search the counterpart's compatibility vector (`bottom_compat` for a top) with the
  query's projection; the learned metric says those garments go with it.
- blend: weighted reciprocal-rank fusion, done natively by Qdrant (prefetch + RRF), or a weighted
  sum of per-path scores normalised over the candidate pool (LOOKBOOK_FUSION).
- diversity: maximal marginal relevance over the *returned* garments' appearance vectors. Qdrant's
  native MMR diversifies in the vector space it searched (the query garment's), not among the
  counterparts we return, so this step is ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from shared.models.pipeline import Kind
from shared.settings import Settings
from shared.store import LookFilter, LookRecord, LookStore, SearchHit

PAIR: dict[str, Kind] = {"top": "bottom", "bottom": "top"}
PUBLIC_STATUSES = ("approved", "featured")
Path = Literal["blend", "look_alike", "compatibility"]


@dataclass
class Candidate:
    """A returned look: its record, its score on each path and the blended score."""

    look: LookRecord
    look_alike: float = 0.0
    compatibility: float = 0.0
    score: float = 0.0
    # Appearance vector of the garment we return (the counterpart), for diversity.
    pair_vector: np.ndarray | None = field(default=None, repr=False)


@dataclass
class _Pooled:
    """A candidate while it is ranked: only its id, scores and vector (no payload yet)."""

    look_id: str
    look_alike: float = 0.0
    compatibility: float = 0.0
    score: float = 0.0
    pair_vector: list[float] | None = field(default=None, repr=False)


def _min_max(values: np.ndarray) -> np.ndarray:
    """Scaled to [0, 1] over the pool; all 1.0 when the values (nearly) tie."""
    low = float(values.min())
    span = float(values.max()) - low
    return (values - low) / span if span > 1e-9 else np.ones(len(values))


def _normalised(values: dict[str, float]) -> dict[str, float]:
    if not values:
        return {}
    return dict(zip(values, _min_max(np.fromiter(values.values(), dtype=np.float64)).tolist(), strict=True))


def mmr(scores: Sequence[float] | np.ndarray, vectors: np.ndarray | None, limit: int, diversity: float) -> list[int]:
    """Greedy maximal marginal relevance; returns the picked indices in order.

    Relevance is the score min-max scaled over the pool, redundancy the highest cosine of a
    candidate's vector (a row of `vectors`, zero when unknown) to an already chosen one. Each pick
    maximises (1 - diversity) * relevance - diversity * redundancy; ties go to the earlier index.
    Diversity 0 keeps the plain order.
    """
    n = len(scores)
    if diversity <= 0 or n <= 1 or vectors is None:
        return list(range(min(n, limit)))
    relevance = _min_max(np.asarray(scores, dtype=np.float64))
    redundancy = np.zeros(n)
    open_ = np.ones(n, dtype=bool)
    chosen: list[int] = []
    while len(chosen) < min(limit, n):
        gain = np.where(open_, (1 - diversity) * relevance - diversity * redundancy, -np.inf)
        best = int(np.argmax(gain))
        chosen.append(best)
        open_[best] = False
        np.maximum(redundancy, vectors @ vectors[best], out=redundancy)
    return chosen


class Matcher:
    """Ranks the library's counterpart garments for one query garment.

    The candidate pools come back from the store without payloads (ids, scores and the returned
    garment's vector); only the looks finally returned are fetched whole.
    """

    # A returned look that changed under us (deleted, unpublished) is dropped and the pick re-run.
    _MAX_PICKS = 3

    def __init__(self, settings: Settings, store: LookStore) -> None:
        self.settings = settings
        self.store = store

    def candidates(
        self,
        kind: Kind,
        embedding: Sequence[float] | np.ndarray,
        compat: Sequence[float] | np.ndarray | None,
        *,
        path: Path,
        tags: Sequence[str],
        limit: int,
        diversity: float | None = None,
        fusion: str | None = None,
    ) -> list[Candidate]:
        pair = PAIR[kind]
        pool = max(self.settings.candidate_pool, limit * 3)
        use_alike = path in ("blend", "look_alike")
        use_compat = compat is not None and path in ("blend", "compatibility")
        chosen_diversity = self.settings.diversity if diversity is None else diversity
        # A look can only answer the query if it shows the garment we return: it has that vector.
        filters = LookFilter(
            statuses=PUBLIC_STATUSES, tags=tuple(tags), min_quality=self.settings.min_quality, has_vector=pair
        )
        # Diversity needs the returned garments' appearance vectors, and only those.
        wanted: tuple[str, ...] = (pair,) if chosen_diversity > 0 else ()
        found: dict[str, _Pooled] = {}
        alike_hits = self._search(kind, embedding, pool, filters, wanted) if use_alike else []
        compat_hits = (
            self._search(f"{pair}_compat", compat, pool, filters, wanted) if use_compat and compat is not None else []
        )
        for hits, attribute in ((alike_hits, "look_alike"), (compat_hits, "compatibility")):
            for hit in hits:
                candidate = found.setdefault(hit.look_id, _Pooled(hit.look_id))
                setattr(candidate, attribute, hit.score)
                if candidate.pair_vector is None and hit.vectors and pair in hit.vectors:
                    candidate.pair_vector = hit.vectors[pair]
        if use_alike and use_compat:
            self._blend(found, kind, embedding, compat, pool, filters, fusion or self.settings.fusion)
        else:
            for c in found.values():
                c.score = c.look_alike if use_alike else c.compatibility
        if found and self.settings.featured_boost:
            for look_id in self.store.matching_ids(list(found), LookFilter(statuses=("featured",))):
                found[look_id].score += self.settings.featured_boost
        ranked = sorted(found.values(), key=lambda c: c.score, reverse=True)
        return self._pick(ranked, pair, limit, chosen_diversity)

    def _pick(self, ranked: list[_Pooled], pair: Kind, limit: int, diversity: float) -> list[Candidate]:
        """Diversifies the ranked pool, then fetches the looks picked; any that no longer qualify
        (deleted, unpublished or without the returned garment since the search) make way for the next."""
        chosen: list[Candidate] = []
        for _ in range(self._MAX_PICKS):
            vectors = None
            if diversity > 0 and ranked:
                dim = next((len(c.pair_vector) for c in ranked if c.pair_vector is not None), 0)
                zero = [0.0] * dim
                vectors = np.array([c.pair_vector or zero for c in ranked], dtype=np.float32)
            order = mmr([c.score for c in ranked], vectors, limit, diversity)
            picked = [ranked[i] for i in order]
            rows = dict(zip((c.look_id for c in picked), order, strict=True))
            looks = {look.look_id: look for look in self.store.get_many([c.look_id for c in picked])}
            usable = {
                c.look_id
                for c in picked
                if (look := looks.get(c.look_id)) is not None
                and look.status in PUBLIC_STATUSES
                and getattr(look, f"{pair}_box") is not None
            }
            chosen = [
                Candidate(
                    looks[c.look_id],
                    c.look_alike,
                    c.compatibility,
                    c.score,
                    None if vectors is None or c.pair_vector is None else vectors[rows[c.look_id]],
                )
                for c in picked
                if c.look_id in usable
            ]
            if len(usable) == len(picked):
                break
            dropped = {c.look_id for c in picked} - usable
            ranked = [c for c in ranked if c.look_id not in dropped]
        return chosen

    def _blend(
        self,
        found: dict[str, _Pooled],
        kind: Kind,
        embedding: Sequence[float] | np.ndarray,
        compat: Sequence[float] | np.ndarray | None,
        pool: int,
        filters: LookFilter,
        fusion: str,
    ) -> None:
        weight = self.settings.compat_weight
        if fusion == "rrf":
            assert compat is not None
            fused = self.store.fused_search_ids(
                [(kind, embedding), (f"{PAIR[kind]}_compat", compat)],
                limit=len(found) or 1,
                per_path_limit=pool,
                weights=[1.0 - weight, weight],
                filters=filters,
            )
            scores = {hit.look_id: hit.score for hit in fused}
            for look_id, c in found.items():
                c.score = scores.get(look_id, 0.0)
            return
        alike = _normalised({k: c.look_alike for k, c in found.items() if c.look_alike})
        compatible = _normalised({k: c.compatibility for k, c in found.items() if c.compatibility})
        for look_id, c in found.items():
            c.score = (1.0 - weight) * alike.get(look_id, 0.0) + weight * compatible.get(look_id, 0.0)

    def _search(
        self,
        vector: str,
        query: Sequence[float] | np.ndarray,
        pool: int,
        filters: LookFilter,
        vectors: tuple[str, ...],
    ) -> list[SearchHit]:
        return self.store.search_ids(vector, query, limit=pool, filters=filters, with_vectors=vectors)
