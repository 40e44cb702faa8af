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
from shared.store import LookRecord, LookStore, ScoredLook

PAIR: dict[str, Kind] = {"top": "bottom", "bottom": "top"}
PUBLIC_STATUSES = ("approved", "featured")
Path = Literal["blend", "look_alike", "compatibility"]


@dataclass
class Candidate:
    look: LookRecord
    look_alike: float = 0.0
    compatibility: float = 0.0
    score: float = 0.0
    # Appearance vector of the garment we return (the counterpart), for diversity.
    pair_vector: np.ndarray | None = field(default=None, repr=False)


def _normalised(values: dict[str, float]) -> dict[str, float]:
    if not values:
        return {}
    low, high = min(values.values()), max(values.values())
    span = high - low
    return {k: (v - low) / span if span > 1e-9 else 1.0 for k, v in values.items()}


def mmr(candidates: list[Candidate], limit: int, diversity: float) -> list[Candidate]:
    """Greedy maximal marginal relevance: relevance (the blended score, min-max scaled) against the
    highest cosine to an already chosen garment; diversity 0 keeps the plain ranking."""
    if diversity <= 0 or len(candidates) <= 1:
        return candidates[:limit]
    relevance = _normalised({str(i): c.score for i, c in enumerate(candidates)})
    # Nearest-to-chosen cosine per candidate, updated as each one is picked.
    redundancy = np.zeros(len(candidates))
    chosen: list[int] = []
    left = set(range(len(candidates)))
    while left and len(chosen) < limit:
        best = max(left, key=lambda i: (1 - diversity) * relevance[str(i)] - diversity * redundancy[i])
        chosen.append(best)
        left.discard(best)
        picked = candidates[best].pair_vector
        if picked is not None:
            for i in left:
                vector = candidates[i].pair_vector
                if vector is not None:
                    redundancy[i] = max(redundancy[i], float(np.dot(vector, picked)))
    return [candidates[i] for i in chosen]


class Matcher:
    """Ranks the library's counterpart garments for one query garment."""

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
        vectors = chosen_diversity > 0
        found: dict[str, Candidate] = {}
        # Diversity needs the returned garments' appearance vectors, and only those.
        wanted: tuple[str, ...] = (pair,) if vectors else ()
        alike_hits = self._search(kind, embedding, pool, tags, wanted) if use_alike else []
        compat_hits = (
            self._search(f"{pair}_compat", compat, pool, tags, wanted) if use_compat and compat is not None else []
        )
        for hits, attribute in ((alike_hits, "look_alike"), (compat_hits, "compatibility")):
            for hit in hits:
                candidate = found.setdefault(hit.look.look_id, Candidate(hit.look))
                setattr(candidate, attribute, hit.score)
                if candidate.pair_vector is None and hit.vectors and pair in hit.vectors:
                    candidate.pair_vector = np.asarray(hit.vectors[pair], dtype=np.float32)
        if use_alike and use_compat:
            self._blend(found, kind, embedding, compat, pool, tags, fusion or self.settings.fusion)
        else:
            for c in found.values():
                c.score = c.look_alike if use_alike else c.compatibility
        # A look can only answer the query if it shows the garment we return.
        usable = [c for c in found.values() if getattr(c.look, f"{pair}_box") is not None]
        for c in usable:
            if c.look.status == "featured":
                c.score += self.settings.featured_boost
        usable.sort(key=lambda c: c.score, reverse=True)
        return mmr(usable, limit, chosen_diversity)

    def _blend(
        self,
        found: dict[str, Candidate],
        kind: Kind,
        embedding: Sequence[float] | np.ndarray,
        compat: Sequence[float] | np.ndarray | None,
        pool: int,
        tags: Sequence[str],
        fusion: str,
    ) -> None:
        weight = self.settings.compat_weight
        if fusion == "rrf":
            assert compat is not None
            fused = self.store.fused_search(
                [(kind, embedding), (f"{PAIR[kind]}_compat", compat)],
                limit=len(found) or 1,
                fusion="rrf",
                per_path_limit=pool,
                weights=[1.0 - weight, weight],
                statuses=PUBLIC_STATUSES,
                tags=tags,
                min_quality=self.settings.min_quality,
            )
            scores = {hit.look.look_id: hit.score for hit in fused}
            for look_id, c in found.items():
                c.score = scores.get(look_id, 0.0)
            return
        alike = _normalised({k: c.look_alike for k, c in found.items() if c.look_alike})
        compatible = _normalised({k: c.compatibility for k, c in found.items() if c.compatibility})
        for look_id, c in found.items():
            c.score = (1.0 - weight) * alike.get(look_id, 0.0) + weight * compatible.get(look_id, 0.0)

    def _search(
        self, vector: str, query: Sequence[float] | np.ndarray, pool: int, tags: Sequence[str], vectors: tuple[str, ...]
    ) -> list[ScoredLook]:
        return self.store.search(
            vector,
            query,
            limit=pool,
            statuses=PUBLIC_STATUSES,
            tags=tags,
            min_quality=self.settings.min_quality,
            with_vectors=vectors,
        )
