"""Backend-neutral look store logic: merging re-imports, optimistic updates, paging, stats, rebuilds.

A backend supplies the engine primitives (`_retrieve`, `_write_points`, `_query`, ...) over a collection
named by model version; everything that decides what gets written lives here, once.
"""

from __future__ import annotations

import logging
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from shared.store.model import (
    ORDERS,
    SEARCHABLE,
    InvalidLookError,
    LibraryStats,
    LookFilter,
    LookNotFoundError,
    LookPoint,
    LookRecord,
    Mmr,
    ScoredLook,
    ScrollPage,
    SearchHit,
    StaleVersionError,
    StoreError,
    VectorDims,
    apply_changes,
    check_vector_name,
    decode_cursor,
    encode_cursor,
    look_id_for_sha256,
    merge_reimport,
    normalize_look_id,
    now_epoch,
    vector_list,
)

log = logging.getLogger(__name__)

# Payload fields a curation change touches; promote() copies them from the live collection into the
# rebuilt one for looks edited while the rebuild ran.
CURATION_FIELDS: tuple[str, ...] = ("status", "edited_fields", "version", "updated_at")

Hit = tuple[str, float, dict[str, Any], dict[str, list[float]] | None]
RawRecord = tuple[str, dict[str, Any], dict[str, list[float]] | None]


@dataclass(frozen=True)
class QuerySpec:
    """An engine-neutral query: one nearest search (optionally MMR) or a fusion of several."""

    paths: tuple[tuple[str, list[float]], ...]
    limit: int
    filters: LookFilter
    fusion: str | None = None  # None: a single nearest search over paths[0]
    per_path_limit: int = 0
    weights: tuple[float, ...] | None = None
    rrf_k: int = 60
    mmr: Mmr | None = None
    exact: bool = False
    hnsw_ef: int | None = None
    # True: every named vector; a tuple of names: only those (less to transfer and convert).
    with_vectors: bool | tuple[str, ...] = False
    # False: ids and scores only (each hit's payload dict is then empty).
    with_payload: bool = True


class LookStoreBase(ABC):
    """Shared implementation of the `LookStore` protocol; subclasses bind it to an engine."""

    def __init__(self, *, hnsw_m: int, hnsw_ef_construct: int, hnsw_ef: int) -> None:
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construct = hnsw_ef_construct
        self.hnsw_ef = hnsw_ef
        # Serialises read-modify-write paths (merging upserts, versioned updates, swaps) in this process.
        self._lock = threading.RLock()
        self._rebuilds: dict[str, float] = {}  # model version -> rebuild start time, for this process
        self._closed = False

    # ---------------------------------------------------------------- engine primitives

    @abstractmethod
    def _collection_dims(self, version: str) -> VectorDims | None:
        """Dims of the collection for this model version, or None if it does not exist."""

    @abstractmethod
    def _create_collection(self, version: str, dims: VectorDims, *, rebuild_started_at: float | None) -> None: ...

    @abstractmethod
    def _drop_collection(self, version: str) -> None: ...

    @abstractmethod
    def _rebuild_started_at(self, version: str) -> float | None: ...

    @abstractmethod
    def _read_live(self) -> str | None: ...

    def _refresh_live(self) -> None:  # noqa: B027 - a hook: only backends that cache the alias override it
        """Forgets any cached view of the live version before a decision that depends on it."""

    @abstractmethod
    def _switch_live(self, version: str) -> None:
        """Atomically points readers at this version's collection."""

    @abstractmethod
    def _retrieve(self, version: str, ids: Sequence[str], *, with_vectors: bool) -> list[RawRecord]: ...

    @abstractmethod
    def _write_points(
        self, version: str, items: Sequence[tuple[str, dict[str, list[float]], dict[str, Any]]]
    ) -> None: ...

    @abstractmethod
    def _set_payload_if_version(self, version: str, look_id: str, payload: dict[str, Any], current: int) -> None:
        """Sets payload keys on the look only if its stored `version` still equals `current`."""

    @abstractmethod
    def _set_payload(self, version: str, look_id: str, payload: dict[str, Any]) -> None: ...

    @abstractmethod
    def _delete_points(self, version: str, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def _query(self, version: str, spec: QuerySpec) -> list[Hit]: ...

    @abstractmethod
    def _scroll_raw(
        self,
        version: str,
        filters: LookFilter | None,
        *,
        limit: int,
        offset: str | None,
        order_key: str | None,
        descending: bool,
        start_from: float | None,
        exclude_ids: Sequence[str],
        payload_keys: Sequence[str] | None,
    ) -> tuple[list[RawRecord], str | None]:
        """A page of points; with order_key the engine orders by that payload float and offset is unused."""

    @abstractmethod
    def _count(
        self, version: str, filters: LookFilter | None, *, quality_range: tuple[float, float, bool] | None
    ) -> int: ...

    @abstractmethod
    def _facet(self, version: str, key: str, filters: LookFilter | None) -> dict[str, int]: ...

    @abstractmethod
    def _optimize(self, version: str) -> None: ...

    @abstractmethod
    def _list_versions(self) -> list[str]: ...

    @abstractmethod
    def flush(self) -> None:
        """Makes every acknowledged write durable (a no-op where the engine already is)."""

    @abstractmethod
    def close(self) -> None: ...

    # ---------------------------------------------------------------- lifecycle

    def ensure(self, model_version: str, dims: VectorDims | tuple[int, int]) -> str:
        """Makes sure a live collection exists; returns the live model version.

        With nothing live, creates the collection for `model_version` and makes it live. If another
        version is live, it stays live (readers keep working) and is returned: compare it with
        your model version and call begin_rebuild() to re-embed. Dims of an existing collection
        must match.
        """
        wanted = VectorDims.of(dims)
        with self._lock:
            self._check_open()
            self._refresh_live()
            live = self._read_live()
            if live is None:
                if self._collection_dims(model_version) is None:
                    self._create_collection(model_version, wanted, rebuild_started_at=None)
                self._switch_live(model_version)
                live = model_version
            if live == model_version:
                have = self._collection_dims(live)
                if have is not None and have != wanted:
                    raise StoreError(
                        f"the live collection of model version {live} has dims {have}, "
                        f"the model gives {wanted}: bump the model version so the library is re-embedded "
                        "into a new collection"
                    )
            else:
                log.warning(
                    "live look collection is of another model version",
                    extra={"live_version": live, "model_version": model_version},
                )
            return live

    def live_version(self) -> str | None:
        """The model version of the collection readers see now, or None before the first ensure()."""
        self._check_open()
        return self._read_live()

    def _require_live(self) -> str:
        self._check_open()
        live = self._read_live()
        if live is None:
            raise StoreError("the look store has no live collection yet; call ensure(model_version, dims) first")
        return live

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the look store is closed; open a new one with open_store(settings)")

    # ---------------------------------------------------------------- writes

    def upsert(self, points: Sequence[LookPoint], *, keep_curation: bool = True, batch_size: int = 256) -> int:
        """Writes looks into the live collection; the same id overwrites, never duplicates.

        A re-import keeps what people decided (status, editor-edited fields, created_at); see
        merge_reimport. Returns the number of looks written.
        """
        self._require_live()
        return self._upsert_into(None, points, keep_curation=keep_curation, batch_size=batch_size)

    def _upsert_into(
        self,
        target: str | None,
        points: Sequence[LookPoint],
        *,
        keep_curation: bool,
        batch_size: int,
        curation_from: str | None = None,
    ) -> int:
        """Writes batches into `target`, or into the live collection (None) as it is at each batch.

        Each batch is validated whole before it is written, so a bad look fails its batch and
        changes nothing in it; earlier batches stay written.
        """
        written = 0
        for batch in _batches(points, max(1, batch_size)):
            with self._lock:
                # Resolved under the lock, so a promote between batches sends the next batch to the
                # new collection and never into the one just retired.
                version = target if target is not None else self._require_live()
                dims = self._collection_dims(version)
                if dims is None:
                    raise StoreError(
                        f"no collection for model version {version}; call ensure() or begin_rebuild() first"
                    )
                records = [point.record.validated() for point in batch]
                prepared = list(zip(records, _batch_vectors(batch, dims.by_name()), strict=True))
                # The last write of one id in a batch wins, as if written one by one.
                unique = {record.look_id: (record, vectors) for record, vectors in prepared}
                source = curation_from or version
                existing = {
                    look_id: LookRecord.from_payload(look_id, payload)
                    for look_id, payload, _ in self._retrieve(source, list(unique), with_vectors=False)
                }
                if curation_from is not None:
                    # A resumed rebuild may already hold the look: keep counting versions from there.
                    own = {
                        look_id: LookRecord.from_payload(look_id, payload)
                        for look_id, payload, _ in self._retrieve(version, list(unique), with_vectors=False)
                    }
                    for look_id, record in own.items():
                        existing.setdefault(look_id, record)
                now = now_epoch()
                items = []
                for k, (look_id, (record, vectors)) in enumerate(unique.items()):
                    merged = merge_reimport(
                        record,
                        existing.get(look_id),
                        keep_curation=keep_curation,
                        # A microsecond apart keeps import order and spares ordered paging long ties.
                        now=now + k * 1e-6,
                        bump=curation_from is None,
                    )
                    items.append((look_id, vectors, merged.to_payload()))
                self._write_points(version, items)
                written += len(items)
        return written

    def update_look(
        self,
        look_id: str,
        changes: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        curated: bool = True,
    ) -> LookRecord:
        """Changes editable fields of a look and bumps its version.

        expected_version: the version the caller read; a mismatch raises StaleVersionError and
        changes nothing. curated=True (an editor's change) marks the fields so re-imports keep them.
        The change is conditional in the engine too, so it is safe across processes.
        """
        look_id = normalize_look_id(look_id)
        with self._lock:
            version = self._require_live()
            found = self._retrieve(version, [look_id], with_vectors=False)
            if not found:
                raise LookNotFoundError(f"no look {look_id} in the library; list looks to find its id")
            current = LookRecord.from_payload(look_id, found[0][1])
            if expected_version is not None and current.version != expected_version:
                raise StaleVersionError(look_id, expected_version, current.version)
            updated = apply_changes(current, changes, curated=curated, now=now_epoch())
            token = uuid.uuid4().hex
            payload = {**updated.to_payload(), "write_token": token}
            self._set_payload_if_version(version, look_id, payload, current.version)
            after = self._retrieve(version, [look_id], with_vectors=False)
            if not after:
                raise LookNotFoundError(f"look {look_id} was deleted while being updated; nothing to change")
            stored = after[0][1]
            if stored.get("write_token") != token:
                raise StaleVersionError(look_id, current.version, int(stored.get("version", 0)))
            # Keep an in-progress rebuild of this process in step; promote() reconciles other processes'.
            for target in list(self._rebuilds):
                if self._retrieve(target, [look_id], with_vectors=False):
                    self._set_payload(target, look_id, {k: payload[k] for k in (*CURATION_FIELDS, *changes)})
            return LookRecord.from_payload(look_id, stored)

    def delete(self, look_id: str) -> bool:
        """Removes a look from the live collection (and this process's rebuild); False if it was absent."""
        look_id = normalize_look_id(look_id)
        with self._lock:
            version = self._require_live()
            existed = bool(self._retrieve(version, [look_id], with_vectors=False))
            self._delete_points(version, [look_id])
            for target in list(self._rebuilds):
                self._delete_points(target, [look_id])
            return existed

    # ---------------------------------------------------------------- reads

    def get(self, look_id: str) -> LookRecord | None:
        looks = self.get_many([look_id])
        return looks[0] if looks else None

    def get_many(self, look_ids: Sequence[str]) -> list[LookRecord]:
        """The looks that exist, in the order asked; unknown ids are skipped."""
        version = self._require_live()
        ids = [normalize_look_id(i) for i in look_ids]
        found = {i: LookRecord.from_payload(i, p) for i, p, _ in self._retrieve(version, ids, with_vectors=False)}
        return [found[i] for i in ids if i in found]

    def get_vectors(self, look_id: str) -> dict[str, list[float]] | None:
        """The stored (unit-normalised) vectors of a look, or None if it does not exist."""
        version = self._require_live()
        found = self._retrieve(version, [normalize_look_id(look_id)], with_vectors=True)
        return (found[0][2] or {}) if found else None

    def existing_ids(self, look_ids: Sequence[str]) -> set[str]:
        version = self._require_live()
        ids = [normalize_look_id(i) for i in look_ids]
        return {i for i, _, _ in self._retrieve(version, ids, with_vectors=False)}

    def ids_with_content(self, sha256s: Sequence[str]) -> dict[str, str]:
        """sha256 -> look id for the images already in the library (ids derive from the content hash)."""
        by_id = {look_id_for_sha256(s): s.lower() for s in sha256s}
        return {by_id[i]: i for i in self.existing_ids(list(by_id))}

    def search(
        self,
        vector_name: str,
        vector: Sequence[float] | np.ndarray,
        *,
        limit: int = 10,
        statuses: tuple[str, ...] | None = SEARCHABLE,
        tags: Sequence[str] = (),
        sources: Sequence[str] = (),
        min_quality: float = 0.0,
        with_vectors: bool | Sequence[str] = False,
        exact: bool = False,
        mmr: Mmr | None = None,
        hnsw_ef: int | None = None,
    ) -> list[ScoredLook]:
        """Nearest looks by one named vector among looks passing the filter (approved/featured by default).

        exact=True scans every vector (the ground truth for recall); mmr diversifies the result with
        the engine's native maximal marginal relevance. Looks without this vector never match.
        """
        filters = LookFilter(
            statuses=statuses, tags=tuple(tags), sources=tuple(sources), min_quality=float(min_quality)
        )
        version, spec = self._nearest_spec(
            vector_name, vector, limit=limit, filters=filters, with_vectors=with_vectors, exact=exact, hnsw_ef=hnsw_ef
        )
        return self._scored(self._query(version, replace(spec, mmr=mmr)))

    def search_ids(
        self,
        vector_name: str,
        vector: Sequence[float] | np.ndarray,
        *,
        limit: int = 10,
        filters: LookFilter | None = None,
        with_vectors: bool | Sequence[str] = False,
        exact: bool = False,
        hnsw_ef: int | None = None,
    ) -> list[SearchHit]:
        """Like search(), without payloads: ids, scores and the vectors asked for.

        For ranking a large candidate pool: fetch the few looks it returns with get_many(). The
        filter defaults to the searchable statuses (approved, featured).
        """
        version, spec = self._nearest_spec(
            vector_name,
            vector,
            limit=limit,
            filters=filters or LookFilter(statuses=SEARCHABLE),
            with_vectors=with_vectors,
            exact=exact,
            hnsw_ef=hnsw_ef,
        )
        return [SearchHit(i, float(s), v) for i, s, _, v in self._query(version, replace(spec, with_payload=False))]

    def _nearest_spec(
        self,
        vector_name: str,
        vector: Sequence[float] | np.ndarray,
        *,
        limit: int,
        filters: LookFilter,
        with_vectors: bool | Sequence[str],
        exact: bool,
        hnsw_ef: int | None,
    ) -> tuple[str, QuerySpec]:
        version = self._require_live()
        dims = self._dims_or_fail(version)
        name = check_vector_name(vector_name)
        spec = QuerySpec(
            paths=((name, vector_list(name, vector, dims.by_name()[name])),),
            limit=_positive(limit, "limit"),
            filters=filters,
            exact=exact,
            hnsw_ef=hnsw_ef,
            with_vectors=_vector_selection(with_vectors),
        )
        return version, spec

    def matching_ids(self, look_ids: Sequence[str], filters: LookFilter) -> set[str]:
        """Which of these looks pass the filter (for example: which are featured), without payloads."""
        if not look_ids:
            return set()
        version = self._require_live()
        ids = tuple(dict.fromkeys(normalize_look_id(i) for i in look_ids))
        raw, _ = self._scroll_raw(
            version,
            replace(filters, ids=ids),
            limit=len(ids),
            offset=None,
            order_key=None,
            descending=False,
            start_from=None,
            exclude_ids=(),
            payload_keys=(),
        )
        return {i for i, _, _ in raw}

    def fused_search(
        self,
        prefetch: Sequence[tuple[str, Sequence[float] | np.ndarray]],
        *,
        limit: int = 10,
        fusion: str = "rrf",
        per_path_limit: int | None = None,
        weights: Sequence[float] | None = None,
        rrf_k: int = 60,
        statuses: tuple[str, ...] | None = SEARCHABLE,
        tags: Sequence[str] = (),
        sources: Sequence[str] = (),
        min_quality: float = 0.0,
        with_vectors: bool | Sequence[str] = False,
        exact: bool = False,
    ) -> list[ScoredLook]:
        """Several nearest searches fused natively by the engine (prefetch + RRF, or DBSF).

        Each (vector_name, vector) path fetches per_path_limit candidates (default 4 x limit) under
        the same filter; RRF scores a look by sum(weight / (rrf_k + rank)) over the paths that found it,
        rank counting from 0.
        """
        version, spec = self._fused_spec(
            prefetch,
            limit=limit,
            fusion=fusion,
            per_path_limit=per_path_limit,
            weights=weights,
            rrf_k=rrf_k,
            filters=LookFilter(
                statuses=statuses, tags=tuple(tags), sources=tuple(sources), min_quality=float(min_quality)
            ),
        )
        spec = replace(spec, exact=exact, with_vectors=_vector_selection(with_vectors))
        return self._scored(self._query(version, spec))

    def fused_search_ids(
        self,
        prefetch: Sequence[tuple[str, Sequence[float] | np.ndarray]],
        *,
        limit: int = 10,
        per_path_limit: int | None = None,
        weights: Sequence[float] | None = None,
        rrf_k: int = 60,
        filters: LookFilter | None = None,
    ) -> list[SearchHit]:
        """Like fused_search() with RRF, without payloads: ids and fused scores."""
        version, spec = self._fused_spec(
            prefetch,
            limit=limit,
            fusion="rrf",
            per_path_limit=per_path_limit,
            weights=weights,
            rrf_k=rrf_k,
            filters=filters or LookFilter(statuses=SEARCHABLE),
        )
        return [SearchHit(i, float(s), None) for i, s, _, _ in self._query(version, replace(spec, with_payload=False))]

    def _fused_spec(
        self,
        prefetch: Sequence[tuple[str, Sequence[float] | np.ndarray]],
        *,
        limit: int,
        fusion: str,
        per_path_limit: int | None,
        weights: Sequence[float] | None,
        rrf_k: int,
        filters: LookFilter,
    ) -> tuple[str, QuerySpec]:
        if not prefetch:
            raise InvalidLookError("fused_search needs at least one (vector_name, vector) path")
        if fusion not in ("rrf", "dbsf"):
            raise InvalidLookError(f"unknown fusion {fusion!r}; use 'rrf' or 'dbsf'")
        if weights is not None and (len(weights) != len(prefetch) or fusion != "rrf"):
            raise InvalidLookError("weights need fusion='rrf' and one weight per prefetch path")
        version = self._require_live()
        by_name = self._dims_or_fail(version).by_name()
        paths = tuple((check_vector_name(n), vector_list(n, v, by_name[n])) for n, v in prefetch)
        limit = _positive(limit, "limit")
        spec = QuerySpec(
            paths=paths,
            limit=limit,
            filters=filters,
            fusion=fusion,
            per_path_limit=_positive(per_path_limit or 4 * limit, "per_path_limit"),
            weights=tuple(float(w) for w in weights) if weights is not None else None,
            rrf_k=_positive(rrf_k, "rrf_k"),
        )
        return version, spec

    def scroll(
        self,
        filters: LookFilter | None = None,
        *,
        cursor: str | None = None,
        limit: int = 100,
        order: str = "id",
    ) -> ScrollPage:
        """One page of looks; pass the returned next_cursor to get the next page (None: no more).

        order: "id" (stable, fastest) or a payload float with optional "-" for descending:
        created_at, updated_at, quality_score. Looks written while paging may or may not appear.
        """
        if order not in ORDERS:
            raise InvalidLookError(f"unknown order {order!r}; use one of {', '.join(ORDERS)}")
        limit = _positive(limit, "limit")
        version = self._require_live()
        state = decode_cursor(cursor) if cursor else {}
        if state and state.get("o") != order:
            raise InvalidLookError("the cursor belongs to another order; start again without a cursor")
        if order == "id":
            raw, next_id = self._scroll_raw(
                version,
                filters,
                limit=limit,
                offset=state.get("after"),
                order_key=None,
                descending=False,
                start_from=None,
                exclude_ids=(),
                payload_keys=None,
            )
            looks = [LookRecord.from_payload(i, p) for i, p, _ in raw]
            return ScrollPage(looks, encode_cursor({"o": order, "after": next_id}) if next_id else None)
        key = order.lstrip("-")
        start = state.get("v")
        seen = list(state.get("ids", []))
        raw, _ = self._scroll_raw(
            version,
            filters,
            limit=limit,
            offset=None,
            order_key=key,
            descending=order.startswith("-"),
            start_from=start,
            exclude_ids=seen,
            payload_keys=None,
        )
        looks = [LookRecord.from_payload(i, p) for i, p, _ in raw]
        if len(looks) < limit:
            return ScrollPage(looks, None)
        # Resume at the last value, skipping the looks already returned with that same value.
        last = float(getattr(looks[-1], key))
        tied = [look.look_id for look in looks if float(getattr(look, key)) == last]
        if start is not None and float(start) == last:
            tied = seen + tied
        return ScrollPage(looks, encode_cursor({"o": order, "v": last, "ids": tied}))

    def iter_looks(self, filters: LookFilter | None = None, *, page_size: int = 256) -> Iterator[LookRecord]:
        """Every look passing the filter, paging by id; for re-embeds and exports."""
        cursor: str | None = None
        while True:
            page = self.scroll(filters, cursor=cursor, limit=page_size)
            yield from page.looks
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def count(self, filters: LookFilter | None = None) -> int:
        return self._count(self._require_live(), filters, quality_range=None)

    def stats(self) -> LibraryStats:
        version = self._require_live()
        by_status = self._facet(version, "status", None)
        by_source = self._facet(version, "source", None)
        histogram = []
        for i in range(10):
            low, high = i / 10, (i + 1) / 10
            histogram.append((low, high, self._count(version, None, quality_range=(low, high, i == 9))))
        total = self._count(version, None, quality_range=None)
        return LibraryStats(version, total, by_status, by_source, histogram)

    def optimize(self) -> None:
        """Builds the HNSW index and merges segments now (after a bulk import, before benchmarking)."""
        self._optimize(self._require_live())

    def _dims_or_fail(self, version: str) -> VectorDims:
        dims = self._collection_dims(version)
        if dims is None:
            raise StoreError(f"the collection of model version {version} is missing; call ensure() again")
        return dims

    @staticmethod
    def _scored(hits: list[Hit]) -> list[ScoredLook]:
        return [ScoredLook(LookRecord.from_payload(i, p), float(s), v) for i, s, p, v in hits]

    # ---------------------------------------------------------------- rebuild and promote

    def begin_rebuild(
        self, model_version: str, dims: VectorDims | tuple[int, int] | None = None, *, fresh: bool = False
    ) -> LookStoreRebuild:
        """Starts (or resumes) writing a new model version's collection while readers use the live one.

        dims default to the live collection's. The writer merges curation from the live collection,
        so statuses and editor edits carry over. fresh=True discards a half-built collection of that
        version first.
        """
        with self._lock:
            self._check_open()
            self._refresh_live()
            live = self._read_live()
            if live == model_version:
                raise StoreError(f"model version {model_version} is already live; nothing to rebuild")
            if dims is None:
                if live is None:
                    raise StoreError("no live collection to take dims from; pass dims to begin_rebuild()")
                dims = self._dims_or_fail(live)
            wanted = VectorDims.of(dims)
            have = self._collection_dims(model_version)
            if have is not None and (fresh or have != wanted):
                self._drop_collection(model_version)
                have = None
            if have is None:
                self._create_collection(model_version, wanted, rebuild_started_at=now_epoch())
            started = self._rebuild_started_at(model_version) or 0.0
            self._rebuilds[model_version] = started
            return LookStoreRebuild(self, model_version)

    def promote(self, model_version: str, *, allow_missing: bool = False) -> None:
        """Makes a rebuilt collection live (alias swap); readers switch atomically between two queries.

        Before the swap, curation changed on the live collection since the rebuild began is copied
        over, and looks deleted meanwhile are dropped. Live looks missing from the rebuild raise
        StoreError unless allow_missing (they would vanish from the library).
        """
        with self._lock:
            self._check_open()
            if self._collection_dims(model_version) is None:
                raise StoreError(f"no collection for model version {model_version}; run begin_rebuild() first")
            self._refresh_live()
            live = self._read_live()
            if live is not None and live != model_version:
                self._reconcile(live, model_version, allow_missing=allow_missing)
            self._optimize(model_version)
            self._switch_live(model_version)
            self._rebuilds.pop(model_version, None)
            log.info("promoted look collection", extra={"model_version": model_version, "previous": live})

    def _all_ids(self, version: str) -> set[str]:
        ids: set[str] = set()
        offset: str | None = None
        while True:
            raw, offset = self._scroll_raw(
                version,
                None,
                limit=1024,
                offset=offset,
                order_key=None,
                descending=False,
                start_from=None,
                exclude_ids=(),
                payload_keys=[],
            )
            ids.update(i for i, _, _ in raw)
            if offset is None:
                return ids

    def _reconcile(self, live: str, target: str, *, allow_missing: bool) -> None:
        live_ids, target_ids = self._all_ids(live), self._all_ids(target)
        missing = live_ids - target_ids
        if missing and not allow_missing:
            raise StoreError(
                f"{len(missing)} looks of the live collection ({live}) are not in the rebuild "
                f"({target}) yet; embed them (writer.missing_ids()) and promote again, "
                "or pass allow_missing=True"
            )
        gone = target_ids - live_ids
        if gone:
            self._delete_points(target, sorted(gone))
        started = self._rebuild_started_at(target)
        # Only looks changed since the rebuild began can differ (the writer copied curation as it went);
        # updated_at is indexed, so this reads the edits, not the library.
        offset: str | None = None
        changed = LookFilter(updated_since=started) if started is not None else None
        while True:
            raw, offset = self._scroll_raw(
                live,
                changed,
                limit=512,
                offset=offset,
                order_key=None,
                descending=False,
                start_from=None,
                exclude_ids=(),
                payload_keys=None,
            )
            live_recs = {i: p for i, p, _ in raw if i in target_ids}
            for i, p, _ in self._retrieve(target, list(live_recs), with_vectors=False):
                source = live_recs[i]
                keys = {*CURATION_FIELDS, *source.get("edited_fields", [])}
                wanted = {k: source[k] for k in keys if k in source}
                if any(p.get(k) != v for k, v in wanted.items()):
                    self._set_payload(target, i, wanted)
            if offset is None:
                return

    def _missing_from(self, target: str) -> set[str]:
        live = self._read_live()
        if live is None or live == target:
            return set()
        return self._all_ids(live) - self._all_ids(target)

    def _abort(self, model_version: str) -> None:
        with self._lock:
            self._refresh_live()
            if self._read_live() == model_version:
                raise StoreError(f"model version {model_version} is live; it cannot be aborted")
            self._rebuilds.pop(model_version, None)
            if self._collection_dims(model_version) is not None:
                self._drop_collection(model_version)


class LookStoreRebuild:
    """Writer for a rebuild; see LookStoreBase.begin_rebuild. Safe to resume after a crash."""

    def __init__(self, store: LookStoreBase, model_version: str) -> None:
        self.store = store
        self.model_version = model_version

    def upsert(self, points: Sequence[LookPoint], *, batch_size: int = 256) -> int:
        """Writes re-embedded looks; their curation comes from the live collection, not the points."""
        points = [LookPoint(replace(p.record, model_version=self.model_version), p.vectors) for p in points]
        live = self.store._read_live()
        return self.store._upsert_into(
            self.model_version,
            points,
            keep_curation=True,
            batch_size=batch_size,
            curation_from=live if live and live != self.model_version else None,
        )

    def count(self) -> int:
        return self.store._count(self.model_version, None, quality_range=None)

    def existing_ids(self, look_ids: Sequence[str]) -> set[str]:
        ids = [normalize_look_id(i) for i in look_ids]
        return {i for i, _, _ in self.store._retrieve(self.model_version, ids, with_vectors=False)}

    def missing_ids(self) -> set[str]:
        """Live looks not yet written to this rebuild: embed these before promote()."""
        return self.store._missing_from(self.model_version)

    def optimize(self) -> None:
        self.store._optimize(self.model_version)

    def promote(self, *, allow_missing: bool = False) -> None:
        self.store.promote(self.model_version, allow_missing=allow_missing)

    def abort(self) -> None:
        """Drops the half-built collection; the live one is untouched."""
        self.store._abort(self.model_version)


def _batch_vectors(batch: Sequence[LookPoint], by_name: Mapping[str, int]) -> list[dict[str, list[float]]]:
    """The batch's vectors as float lists, checked one matrix per vector name (the import hot path)."""
    out: list[dict[str, list[float]]] = [{} for _ in batch]
    names = {name for point in batch for name in point.vectors}
    for name in sorted(names):
        dim = by_name[check_vector_name(name)]
        rows = [(i, point.vectors[name]) for i, point in enumerate(batch) if name in point.vectors]
        try:
            matrix = np.asarray([vector for _, vector in rows], dtype=np.float32)
        except ValueError:  # ragged: let the per-vector check name the bad one
            matrix = np.empty((0, 0), dtype=np.float32)
        healthy = (
            matrix.ndim == 2
            and matrix.shape == (len(rows), dim)
            and bool(np.isfinite(matrix).all())
            and bool(matrix.any(axis=1).all())
        )
        if healthy:
            for (i, _), values in zip(rows, matrix.tolist(), strict=True):
                out[i][name] = values
        else:
            for i, vector in rows:
                out[i][name] = vector_list(name, vector, dim)
    return out


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _positive(value: int, name: str) -> int:
    if int(value) < 1:
        raise InvalidLookError(f"{name} must be at least 1, got {value}")
    return int(value)


def _vector_selection(with_vectors: bool | Sequence[str]) -> bool | tuple[str, ...]:
    """True/False, or the checked names of the vectors to return."""
    if isinstance(with_vectors, bool):
        return with_vectors
    return tuple(check_vector_name(name) for name in with_vectors) or False
