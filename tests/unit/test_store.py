"""Look store contract, run against both backends: Qdrant Edge in a temp dir and qdrant-client local mode."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.store import (
    EdgeLookStore,
    InvalidLookError,
    LookFilter,
    LookNotFoundError,
    LookPoint,
    LookRecord,
    LookStore,
    LookStoreBase,
    Mmr,
    StaleVersionError,
    StoreError,
    look_id_for,
)

pytestmark = pytest.mark.unit

DIMS = (16, 8)
BACKENDS = ["edge", "server"]


def open_backend(kind: str, path: Path) -> LookStoreBase:
    if kind == "edge":
        return EdgeLookStore(path, hnsw_m=8, hnsw_ef_construct=32, hnsw_ef=32)
    from qdrant_client import QdrantClient

    from shared.store.server import ServerLookStore

    return ServerLookStore(client=QdrantClient(":memory:"), hnsw_m=8, hnsw_ef_construct=32, hnsw_ef=32)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LookStoreBase]:
    s = open_backend(request.param, tmp_path)
    s.ensure("model-1", DIMS)
    yield s
    s.close()


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def make_point(
    i: int,
    rng: np.random.Generator,
    *,
    status: str = "approved",
    tags: list[str] | None = None,
    quality: float = 0.5,
    source: str = "demo",
    bottom: bool = True,
    top: np.ndarray | None = None,
    bottom_vec: np.ndarray | None = None,
    created_at: float = 0.0,
) -> LookPoint:
    look_id = look_id_for(f"look-{i}".encode())
    vectors: dict[str, Any] = {
        "top": top if top is not None else rng.normal(size=DIMS[0]),
        "top_compat": rng.normal(size=DIMS[1]),
    }
    if bottom:
        vectors["bottom"] = bottom_vec if bottom_vec is not None else rng.normal(size=DIMS[0])
        vectors["bottom_compat"] = rng.normal(size=DIMS[1])
    record = LookRecord(
        look_id=look_id,
        image_path=f"looks/{i}.jpg",
        width=400,
        height=600,
        top_box=(10.0, 20.0, 390.0, 300.0),
        bottom_box=(10.0, 300.0, 390.0, 590.0) if bottom else None,
        tags=tags or [],
        colors={"top": ["navy"], "bottom": ["white"]},
        source=source,
        attribution="test",
        quality_score=quality,
        quality_reasons=["sharp"],
        status=status,  # type: ignore[arg-type]
        model_version="model-1",
        created_at=created_at,
        content_sha256=hashlib.sha256(f"look-{i}".encode()).hexdigest(),
    )
    return LookPoint(record, vectors)


def library(n: int = 40, seed: int = 0) -> list[LookPoint]:
    rng = np.random.default_rng(seed)
    statuses = ["approved", "approved", "rejected", "pending", "featured"]
    return [
        make_point(
            i,
            rng,
            status=statuses[i % 5],
            tags=["summer"] if i % 3 == 0 else ["work"],
            quality=(i % 10) / 10,
            source="demo" if i % 2 else "feed",
            bottom=i % 7 != 0,
            created_at=1000.0 + i // 4,  # ties on purpose, for ordered paging
        )
        for i in range(n)
    ]


def all_ids(store: LookStoreBase) -> set[str]:
    return {look.look_id for look in store.iter_looks(page_size=7)}


def test_backends_implement_the_protocol(store: LookStoreBase) -> None:
    typed: LookStore = store  # mypy checks the signatures; isinstance checks the methods exist
    assert isinstance(typed, LookStore)


def test_look_id_is_deterministic_uuid() -> None:
    assert look_id_for(b"abc") == look_id_for(b"abc")
    assert look_id_for(b"abc") != look_id_for(b"abd")
    assert len(look_id_for(b"abc")) == 36


def test_upsert_is_idempotent(store: LookStoreBase) -> None:
    points = library()
    assert store.upsert(points, batch_size=16) == len(points)
    ids = all_ids(store)
    assert store.count() == len(points) == len(ids)
    store.upsert(points, batch_size=7)
    assert store.count() == len(points)
    assert all_ids(store) == ids
    look = store.get(points[1].record.look_id)
    assert look is not None and look.version == 2
    assert look.top_box == (10.0, 20.0, 390.0, 300.0) and look.colors == {
        "top": ["navy"],
        "bottom": ["white"],
    }


def test_reimport_keeps_editor_decisions(store: LookStoreBase) -> None:
    points = library(10)
    store.upsert(points)
    target = points[1].record.look_id
    before = store.get(target)
    assert before is not None and before.status == "approved"
    store.update_look(target, {"status": "rejected", "tags": ["editor-pick"]}, expected_version=before.version)
    store.upsert(points)  # a scheduled refresh re-imports the same images
    after = store.get(target)
    assert after is not None
    assert after.status == "rejected" and after.tags == ["editor-pick"]
    assert after.created_at == before.created_at and after.version == before.version + 2
    assert set(after.edited_fields) == {"status", "tags"}
    # An explicit reset takes the import's values.
    store.upsert([points[1]], keep_curation=False)
    reset = store.get(target)
    assert reset is not None and reset.status == "approved" and reset.edited_fields == []


def test_new_import_status_comes_from_the_record(store: LookStoreBase) -> None:
    rng = np.random.default_rng(3)
    store.upsert([make_point(1, rng, status="pending")])
    look = store.get(look_id_for(b"look-1"))
    assert look is not None and look.status == "pending" and look.version == 1 and look.created_at > 0


def test_filters_by_status_tags_quality_source(store: LookStoreBase) -> None:
    points = library()
    store.upsert(points)
    records = [p.record for p in points]
    assert store.count(LookFilter(statuses=("rejected",))) == sum(r.status == "rejected" for r in records)
    assert store.count(LookFilter(tags=("summer",))) == sum("summer" in r.tags for r in records)
    assert store.count(LookFilter(min_quality=0.7)) == sum(r.quality_score >= 0.7 for r in records)
    assert store.count(LookFilter(sources=("feed",))) == sum(r.source == "feed" for r in records)
    edited = store.update_look(records[3].look_id, {"tags": ["late"]})
    assert store.count(LookFilter(updated_since=edited.updated_at)) == 1
    query = np.random.default_rng(9).normal(size=DIMS[0])
    hits = store.search("top", query, limit=50, tags=["summer"], min_quality=0.3)
    expected = {
        r.look_id
        for r in records
        if r.status in ("approved", "featured") and "summer" in r.tags and r.quality_score >= 0.3
    }
    assert {h.look.look_id for h in hits} == expected
    assert all(h.look.quality_score >= 0.3 and "summer" in h.look.tags for h in hits)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    pending = store.search("top", query, limit=50, statuses=("pending",))
    assert pending and all(h.look.status == "pending" for h in pending)


def test_rejected_and_pending_looks_are_never_searched(store: LookStoreBase) -> None:
    points = library()
    store.upsert(points)
    hidden = {p.record.look_id for p in points if p.record.status in ("rejected", "pending")}
    for p in points:
        for name in ("top", "bottom", "top_compat"):
            if name not in p.vectors:
                continue
            # The look's own vector: a rejected look would be the best match if it were searchable.
            hits = store.search(name, p.vectors[name], limit=5)
            assert not hidden & {h.look.look_id for h in hits}
            assert all(h.look.status in ("approved", "featured") for h in hits)


def test_look_without_a_bottom_never_matches_bottom_search(store: LookStoreBase) -> None:
    points = library()
    store.upsert(points)
    no_bottom = {p.record.look_id for p in points if "bottom" not in p.vectors}
    hits = store.search("bottom", np.ones(DIMS[0]), limit=100, statuses=None)
    assert hits and not no_bottom & {h.look.look_id for h in hits}
    assert len(hits) == len(points) - len(no_bottom)


def test_exact_search_agrees_with_index(store: LookStoreBase) -> None:
    points = library()
    store.upsert(points)
    query = points[6].vectors["top"]
    exact = store.search("top", query, limit=5, exact=True)
    approx = store.search("top", query, limit=5)
    assert [h.look.look_id for h in exact] == [h.look.look_id for h in approx]
    assert exact[0].look.look_id == points[6].record.look_id and exact[0].score == pytest.approx(1.0, abs=1e-5)


def test_search_returns_vectors_on_request(store: LookStoreBase) -> None:
    points = library(5)
    store.upsert(points)
    hits = store.search("top", points[1].vectors["top"], limit=1, with_vectors=True)
    assert hits[0].vectors is not None and set(hits[0].vectors) == {
        "top",
        "bottom",
        "top_compat",
        "bottom_compat",
    }
    np.testing.assert_allclose(
        np.asarray(hits[0].vectors["top"]), unit(np.asarray(points[1].vectors["top"])), atol=1e-5
    )
    # Only the named vectors, when named (what diversity needs, and no more).
    only = store.search("top", points[1].vectors["top"], limit=2, with_vectors=["bottom"])
    assert all(hit.vectors is not None and set(hit.vectors) == {"bottom"} for hit in only)
    fused = store.fused_search([("top", points[1].vectors["top"])], limit=2, with_vectors=("bottom",))
    assert all(hit.vectors is not None and set(hit.vectors) == {"bottom"} for hit in fused)
    with pytest.raises(InvalidLookError, match="unknown vector"):
        store.search("top", points[1].vectors["top"], limit=1, with_vectors=["colour"])


def test_search_ids_agree_with_search_without_payloads(store: LookStoreBase) -> None:
    points = library()
    store.upsert(points)
    query = points[6].vectors["top"]
    full = store.search("top", query, limit=10, with_vectors=["bottom"])
    bare = store.search_ids("top", query, limit=10, with_vectors=["bottom"])
    assert [h.look_id for h in bare] == [h.look.look_id for h in full]
    assert [h.score for h in bare] == pytest.approx([h.score for h in full], abs=1e-6)
    assert all(h.vectors is not None and set(h.vectors) == {"bottom"} for h in bare if h.vectors)
    # The default filter is what a shopper may see: approved and featured looks only.
    visible = {p.record.look_id for p in points if p.record.status in ("approved", "featured")}
    assert {h.look_id for h in store.search_ids("top", query, limit=100)} <= visible
    fused = store.fused_search_ids([("top", query), ("bottom", query)], limit=5, per_path_limit=20)
    reference = store.fused_search([("top", query), ("bottom", query)], limit=5, per_path_limit=20)
    assert [h.look_id for h in fused] == [h.look.look_id for h in reference]


def test_has_vector_and_id_filters(store: LookStoreBase) -> None:
    points = library()
    store.upsert(points)
    with_bottom = {p.record.look_id for p in points if "bottom" in p.vectors}
    hits = store.search_ids("top", np.ones(DIMS[0]), limit=100, filters=LookFilter(has_vector="bottom"))
    assert {h.look_id for h in hits} == with_bottom
    asked = [p.record.look_id for p in points[:10]]
    featured = {p.record.look_id for p in points[:10] if p.record.status == "featured"}
    assert featured and store.matching_ids(asked, LookFilter(statuses=("featured",))) == featured
    assert store.matching_ids([], LookFilter(statuses=("featured",))) == set()
    with pytest.raises(InvalidLookError, match="unknown vector"):
        LookFilter(has_vector="colour")
    with pytest.raises(InvalidLookError, match="not a UUID"):
        store.matching_ids(["nope"], LookFilter())


def test_version_conflict_and_unknown_look(store: LookStoreBase) -> None:
    store.upsert(library(5))
    look_id = look_id_for(b"look-1")
    look = store.get(look_id)
    assert look is not None
    updated = store.update_look(look_id, {"status": "featured"}, expected_version=look.version)
    assert updated.status == "featured" and updated.version == look.version + 1
    with pytest.raises(StaleVersionError) as err:
        store.update_look(look_id, {"status": "rejected"}, expected_version=look.version)
    assert err.value.actual == updated.version and "reload" in str(err.value)
    assert store.get(look_id).status == "featured"  # type: ignore[union-attr]
    with pytest.raises(LookNotFoundError):
        store.update_look(look_id_for(b"nope"), {"status": "approved"})
    with pytest.raises(InvalidLookError, match="editable"):
        store.update_look(look_id, {"created_at": 1.0})
    with pytest.raises(InvalidLookError, match="status"):
        store.update_look(look_id, {"status": "deleted"})


def test_concurrent_updates_one_wins(store: LookStoreBase) -> None:
    store.upsert(library(3))
    look_id = look_id_for(b"look-1")
    version = store.get(look_id).version  # type: ignore[union-attr]
    outcomes: list[str] = []

    def edit(status: str) -> None:
        try:
            store.update_look(look_id, {"status": status}, expected_version=version)
            outcomes.append("ok")
        except StaleVersionError:
            outcomes.append("stale")

    threads = [threading.Thread(target=edit, args=(s,)) for s in ("rejected", "featured", "pending", "approved")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok", "stale", "stale", "stale"]
    assert store.get(look_id).version == version + 1  # type: ignore[union-attr]


def test_engine_side_version_condition(store: LookStoreBase) -> None:
    # What protects an update across processes, where the in-process lock cannot: the engine applies
    # the change only while the stored version is still the one read.
    store.upsert(library(2))
    look_id = look_id_for(b"look-1")
    version = store.get(look_id).version  # type: ignore[union-attr]
    store._set_payload_if_version("model-1", look_id, {"status": "rejected"}, version + 1)
    assert store.get(look_id).status == "approved"  # type: ignore[union-attr]
    store._set_payload_if_version("model-1", look_id, {"status": "rejected"}, version)
    assert store.get(look_id).status == "rejected"  # type: ignore[union-attr]


def test_bad_vectors_write_nothing(store: LookStoreBase) -> None:
    rng = np.random.default_rng(0)
    good = make_point(1, rng)
    bad = make_point(2, rng, top=np.ones(DIMS[0] + 1))
    with pytest.raises(InvalidLookError, match="dimensions"):
        store.upsert([good, bad])
    assert store.count() == 0
    with pytest.raises(InvalidLookError, match="NaN"):
        store.upsert([make_point(3, rng, top=np.full(DIMS[0], np.nan))])
    with pytest.raises(InvalidLookError, match="unknown vector"):
        store.upsert([LookPoint(good.record, {"shoes": np.ones(4)})])


def test_delete_and_existing_ids(store: LookStoreBase) -> None:
    points = library(6)
    store.upsert(points)
    ids = [p.record.look_id for p in points]
    assert store.existing_ids([*ids[:2], look_id_for(b"unknown")]) == set(ids[:2])
    assert store.ids_with_content([points[0].record.content_sha256.upper(), "f" * 64]) == {
        points[0].record.content_sha256: ids[0]
    }
    assert store.delete(ids[0]) is True
    assert store.delete(ids[0]) is False
    assert store.get(ids[0]) is None and store.count() == 5
    assert [r.look_id for r in store.get_many([ids[2], ids[0], ids[1]])] == [ids[2], ids[1]]


def test_fused_rrf_returns_union_ranked_by_agreement(store: LookStoreBase) -> None:
    rng = np.random.default_rng(1)
    q_top, q_bottom = unit(rng.normal(size=DIMS[0])), unit(rng.normal(size=DIMS[0]))
    both = make_point(1, rng, top=q_top + 0.01, bottom_vec=q_bottom + 0.01)
    top_only = make_point(2, rng, top=q_top + 0.2, bottom_vec=-q_bottom)
    bottom_only = make_point(3, rng, top=-q_top, bottom_vec=q_bottom + 0.2)
    others = [make_point(10 + i, rng) for i in range(20)]
    store.upsert([both, top_only, bottom_only, *others])
    hits = store.fused_search([("top", q_top), ("bottom", q_bottom)], limit=10, per_path_limit=3, rrf_k=60)
    ids = [h.look.look_id for h in hits]
    assert ids[0] == both.record.look_id
    assert hits[0].score == pytest.approx(2 / 60, rel=1e-4)  # first in both paths (ranks count from 0)
    assert {top_only.record.look_id, bottom_only.record.look_id} <= set(ids[1:3])
    assert len(ids) == len(set(ids)) <= 6  # the union of two top-3 lists
    weighted = store.fused_search([("top", q_top), ("bottom", q_bottom)], limit=3, per_path_limit=3, weights=[3.0, 1.0])
    assert weighted[1].look.look_id == top_only.record.look_id
    with pytest.raises(InvalidLookError):
        store.fused_search([], limit=3)


def test_fused_search_applies_the_filter(store: LookStoreBase) -> None:
    points = library()
    store.upsert(points)
    q = np.random.default_rng(5).normal(size=DIMS[0])
    hits = store.fused_search([("top", q), ("bottom", q)], limit=40, min_quality=0.5)
    assert hits and all(h.look.status in ("approved", "featured") and h.look.quality_score >= 0.5 for h in hits)


def test_mmr_reduces_near_duplicates(store: LookStoreBase) -> None:
    rng = np.random.default_rng(2)
    query = unit(rng.normal(size=DIMS[0]))
    dups = [make_point(i, rng, top=query + rng.normal(scale=0.01, size=DIMS[0])) for i in range(6)]
    varied = [make_point(100 + i, rng, top=query + rng.normal(scale=0.6, size=DIMS[0])) for i in range(10)]
    store.upsert(dups + varied)
    dup_ids = {p.record.look_id for p in dups}
    plain = store.search("top", query, limit=5)
    assert {h.look.look_id for h in plain} <= dup_ids
    diverse = store.search("top", query, limit=5, mmr=Mmr(diversity=0.7, candidates=16))
    assert len(diverse) == 5
    assert len(dup_ids & {h.look.look_id for h in diverse}) <= 2
    assert diverse[0].look.look_id in dup_ids  # the most relevant look still leads
    # diversity 0 is pure relevance on both engines (Edge's lambda is 1 - diversity).
    relevance_only = store.search("top", query, limit=5, mmr=Mmr(diversity=0.0, candidates=16))
    assert {h.look.look_id for h in relevance_only} == {h.look.look_id for h in plain}


def test_scroll_pages_cover_everything_once(store: LookStoreBase) -> None:
    points = library(23)
    store.upsert(points)
    for order in ("id", "-created_at", "created_at", "-quality_score"):
        seen: list[str] = []
        values: list[float] = []
        cursor = None
        while True:
            page = store.scroll(cursor=cursor, limit=4, order=order)
            seen += [look.look_id for look in page.looks]
            if order != "id":
                values += [getattr(look, order.lstrip("-")) for look in page.looks]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert len(seen) == len(set(seen)) == 23, order
        if order != "id":
            assert values == sorted(values, reverse=order.startswith("-")), order
    page = store.scroll(LookFilter(statuses=("rejected",)), limit=100)
    assert page.next_cursor is None and all(look.status == "rejected" for look in page.looks) and page.looks
    with pytest.raises(InvalidLookError):
        store.scroll(cursor="garbage!", limit=3)


def test_stats(store: LookStoreBase) -> None:
    points = library()
    store.upsert(points)
    stats = store.stats()
    assert stats.total == 40 and stats.model_version == "model-1"
    assert stats.by_status == {"approved": 16, "rejected": 8, "pending": 8, "featured": 8}
    assert stats.by_source == {"demo": 20, "feed": 20}
    assert sum(c for _, _, c in stats.quality_histogram) == 40
    assert stats.quality_histogram[9] == (0.9, 1.0, 4)


def test_ensure_rejects_other_dims_and_needs_ensure(store: LookStoreBase, tmp_path: Path) -> None:
    assert store.ensure("model-1", DIMS) == "model-1"
    with pytest.raises(StoreError, match="dims"):
        store.ensure("model-1", (32, 8))
    assert store.ensure("model-2", (32, 8)) == "model-1"  # another version stays live until promoted


def test_rebuild_and_promote_while_searching(store: LookStoreBase) -> None:
    points = library(30)
    store.upsert(points)
    rejected = points[1].record.look_id
    store.update_look(rejected, {"status": "rejected"})
    query = points[6].vectors["top"]
    errors: list[BaseException] = []
    results: list[int] = []
    stop = threading.Event()

    def search_loop() -> None:
        while not stop.is_set():
            try:
                hits = store.search("top", query, limit=5)
                results.append(len(hits))
                assert rejected not in {h.look.look_id for h in hits}
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                return

    reader = threading.Thread(target=search_loop)
    reader.start()
    try:
        writer = store.begin_rebuild("model-2")  # dims default to the live collection's
        rng = np.random.default_rng(7)
        re_embedded = [
            LookPoint(p.record, {name: v + rng.normal(scale=0.01, size=len(v)) for name, v in p.vectors.items()})
            for p in points
        ]
        writer.upsert(re_embedded[:20])
        assert store.live_version() == "model-1"
        with pytest.raises(StoreError, match="not in the rebuild"):
            writer.promote()
        # An editor acts on the live library during the rebuild.
        featured = points[11].record.look_id
        store.update_look(featured, {"status": "featured"})
        writer.upsert(re_embedded[20:])
        assert writer.missing_ids() == set()
        writer.promote()
    finally:
        stop.set()
        reader.join()
    assert not errors, errors
    assert results and all(n == 5 for n in results)
    assert store.live_version() == "model-2"
    assert store.count() == 30
    assert store.get(rejected).status == "rejected"  # type: ignore[union-attr]
    assert store.get(featured).status == "featured"  # type: ignore[union-attr]
    assert store.get(featured).model_version == "model-2"  # type: ignore[union-attr]
    assert rejected not in {h.look.look_id for h in store.search("top", query, limit=30)}


def test_rebuild_abort_leaves_live_untouched(store: LookStoreBase) -> None:
    store.upsert(library(5))
    writer = store.begin_rebuild("model-2", DIMS)
    writer.upsert(library(3))
    assert writer.count() == 3
    writer.abort()
    assert store.live_version() == "model-1" and store.count() == 5
    with pytest.raises(StoreError, match="already live"):
        store.begin_rebuild("model-1", DIMS)


def test_closed_store_says_what_to_do(tmp_path: Path) -> None:
    s = EdgeLookStore(tmp_path)
    with pytest.raises(StoreError, match="ensure"):
        s.search("top", np.ones(DIMS[0]))
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.count()


def test_edge_reopen_keeps_data_and_live_version(tmp_path: Path) -> None:
    with EdgeLookStore(tmp_path) as s:
        s.ensure("model-1", DIMS)
        s.upsert(library(12))
        s.update_look(look_id_for(b"look-1"), {"status": "rejected"})
        writer = s.begin_rebuild("model-2", DIMS)
        writer.upsert(library(12))
        writer.promote()
    with EdgeLookStore(tmp_path) as s:
        assert s.live_version() == "model-2"
        assert s.count() == 12
        assert s.get(look_id_for(b"look-1")).status == "rejected"  # type: ignore[union-attr]
        assert s.search("top", library(12)[6].vectors["top"], limit=1)[0].look.look_id == look_id_for(b"look-6")


def test_edge_directory_is_owned_by_one_store(tmp_path: Path) -> None:
    from shared.store import StoreUnavailableError

    with EdgeLookStore(tmp_path) as s:
        s.ensure("model-1", DIMS)
        with pytest.raises(StoreUnavailableError, match="LOOKBOOK_DATA_DIR"):
            EdgeLookStore(tmp_path)
    EdgeLookStore(tmp_path).close()  # released on close


def test_edge_keeps_live_and_previous_versions_only(tmp_path: Path) -> None:
    with EdgeLookStore(tmp_path) as s:
        s.ensure("model-1", DIMS)
        for version in ("model-2", "model-3"):
            writer = s.begin_rebuild(version, DIMS)
            writer.promote()
        assert s._list_versions() == ["model-2", "model-3"]
        assert (tmp_path / "looks" / "LIVE").read_text() == '{"version": "model-3"}'


def test_open_store_picks_edge_without_url(tmp_path: Path) -> None:
    from shared.settings import load_settings
    from shared.store import open_store

    s = open_store(load_settings(data_dir=tmp_path))
    try:
        assert isinstance(s, EdgeLookStore)
        assert s.root == tmp_path / "store" / "looks"
    finally:
        s.close()
