"""Ranking over a real Qdrant Edge store: the candidate pool travels without payloads, and only the
looks returned are fetched whole; diversification (MMR) is vectorised."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.gateway.ranking import Matcher, mmr
from shared.store import EdgeLookStore, LookPoint, LookRecord, look_id_for

pytestmark = pytest.mark.unit

DIMS = (16, 8)


def reference_mmr(scores: list[float], vectors: np.ndarray, limit: int, diversity: float) -> list[int]:
    """The plain-Python greedy MMR the gateway used before it was vectorised."""
    low, high = min(scores), max(scores)
    relevance = [(s - low) / (high - low) if high - low > 1e-9 else 1.0 for s in scores]
    redundancy = [0.0] * len(scores)
    chosen: list[int] = []
    left = set(range(len(scores)))
    while left and len(chosen) < limit:
        best = max(sorted(left), key=lambda i: (1 - diversity) * relevance[i] - diversity * redundancy[i])
        chosen.append(best)
        left.discard(best)
        for i in left:
            redundancy[i] = max(redundancy[i], float(np.dot(vectors[i], vectors[best])))
    return chosen


@pytest.mark.parametrize("diversity", [0.15, 0.3, 0.7])
def test_vectorised_mmr_picks_what_the_greedy_reference_picks(diversity: float) -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(2, 60))
        vectors = rng.normal(size=(n, 8)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        scores = sorted(rng.random(n).tolist(), reverse=True)
        assert mmr(scores, vectors, 10, diversity) == reference_mmr(scores, vectors, 10, diversity)


def test_mmr_without_diversity_keeps_the_order() -> None:
    vectors = np.eye(4, dtype=np.float32)
    assert mmr([0.9, 0.8, 0.7, 0.6], vectors, 3, 0.0) == [0, 1, 2]
    assert mmr([0.9, 0.8], None, 5, 0.3) == [0, 1]


def look(i: int, *, top: np.ndarray, bottom: np.ndarray | None, status: str = "approved") -> LookPoint:
    rng = np.random.default_rng(i)
    vectors: dict[str, Any] = {"top": top, "top_compat": rng.normal(size=DIMS[1])}
    if bottom is not None:
        vectors["bottom"] = bottom
        vectors["bottom_compat"] = rng.normal(size=DIMS[1])
    record = LookRecord(
        look_id=look_id_for(f"look-{i}".encode()),
        image_path=f"looks/{i}.jpg",
        width=400,
        height=600,
        top_box=(0.0, 0.0, 400.0, 300.0),
        bottom_box=(0.0, 300.0, 400.0, 600.0) if bottom is not None else None,
        status=status,  # type: ignore[arg-type]
        content_sha256=hashlib.sha256(f"look-{i}".encode()).hexdigest(),
    )
    return LookPoint(record, vectors)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EdgeLookStore]:
    s = EdgeLookStore(tmp_path / "store", hnsw_m=8, hnsw_ef_construct=32, hnsw_ef=32)
    s.ensure("model-1", DIMS)
    yield s
    s.close()


def near(base: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    v = base + noise * rng.normal(size=base.shape)
    return v / np.linalg.norm(v)


def test_only_looks_that_show_the_returned_garment_come_back(store: EdgeLookStore, make_settings: Any) -> None:
    rng = np.random.default_rng(0)
    query = rng.normal(size=DIMS[0])
    points = [look(i, top=near(query, rng, 0.1 * i), bottom=None if i % 2 else rng.normal(size=DIMS[0]))
              for i in range(12)]
    points.append(look(99, top=query, bottom=rng.normal(size=DIMS[0]), status="rejected"))
    store.upsert(points)
    matcher = Matcher(make_settings(diversity=0.0, featured_boost=0.0), store)
    found = matcher.candidates("top", query, None, path="look_alike", tags=[], limit=10)
    expected = [p.record.look_id for p in points[:12] if "bottom" in p.vectors]
    assert [c.look.look_id for c in found] == expected  # nearest first, no bottomless or rejected look
    assert all(c.look.bottom_box is not None and c.score == c.look_alike for c in found)


def test_featured_looks_get_the_boost(store: EdgeLookStore, make_settings: Any) -> None:
    rng = np.random.default_rng(1)
    query = rng.normal(size=DIMS[0])
    points = [look(i, top=near(query, rng, 0.05 * (i + 1)), bottom=rng.normal(size=DIMS[0])) for i in range(6)]
    points[4] = look(4, top=points[4].vectors["top"], bottom=points[4].vectors["bottom"], status="featured")
    store.upsert(points)
    plain = Matcher(make_settings(diversity=0.0, featured_boost=0.0), store)
    boosted = Matcher(make_settings(diversity=0.0, featured_boost=1.0), store)
    featured_id = points[4].record.look_id
    assert plain.candidates("top", query, None, path="look_alike", tags=[], limit=3)[0].look.look_id != featured_id
    first = boosted.candidates("top", query, None, path="look_alike", tags=[], limit=3)[0]
    assert first.look.look_id == featured_id and first.look.status == "featured"


def test_a_look_deleted_after_the_search_makes_way_for_the_next(
    store: EdgeLookStore, make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(2)
    query = rng.normal(size=DIMS[0])
    points = [look(i, top=near(query, rng, 0.05 * (i + 1)), bottom=rng.normal(size=DIMS[0])) for i in range(8)]
    store.upsert(points)
    matcher = Matcher(make_settings(diversity=0.3, featured_boost=0.0), store)
    before = [c.look.look_id for c in matcher.candidates("top", query, None, path="look_alike", tags=[], limit=3)]
    real_get_many = store.get_many

    def get_many_after_a_delete(look_ids: list[str]) -> list[LookRecord]:
        store.delete(before[0])  # an editor deletes the best look between the search and the fetch
        return real_get_many(look_ids)

    monkeypatch.setattr(store, "get_many", get_many_after_a_delete)
    after = [c.look.look_id for c in matcher.candidates("top", query, None, path="look_alike", tags=[], limit=3)]
    assert len(after) == 3 and before[0] not in after and before[1] in after
