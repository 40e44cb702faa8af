"""The embedded look store: Qdrant Edge shards on disk, one shard directory per model version.

Layout under `<store_dir>/<collection>/`: `versions/<version>/` is a shard, `versions/<version>.json`
its dims, and `LIVE` names the live version; `LIVE` is replaced atomically (write, fsync, rename),
which is this backend's alias swap. One process owns the directory (Qdrant Edge locks its WAL).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import qdrant_edge as qe

from shared.store.base import Hit, LookStoreBase, QuerySpec, RawRecord
from shared.store.model import (
    FLOAT_INDEXES,
    KEYWORD_INDEXES,
    VECTOR_NAMES,
    LookFilter,
    StoreError,
    StoreUnavailableError,
    VectorDims,
    version_slug,
)

log = logging.getLogger(__name__)

LIVE_FILE = "LIVE"
# Full scan below this many KB of vectors per segment is faster than walking the graph (Qdrant's default).
FULL_SCAN_THRESHOLD_KB = 10_000


class EdgeLookStore(LookStoreBase):
    """Look store on Qdrant Edge (`qdrant-edge-py`), in-process and on disk: the embedded default.

    Thread-safe: reads go straight to the engine (which runs them in its own thread pool, and
    releases the GIL), writes are serialised by a lock. A swap keeps the previous version's shard
    open, so a reader that picked it just before the swap finishes normally.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        collection: str = "looks",
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 128,
        hnsw_ef: int = 128,
        max_search_threads: int | None = None,
    ) -> None:
        super().__init__(hnsw_m=hnsw_m, hnsw_ef_construct=hnsw_ef_construct, hnsw_ef=hnsw_ef)
        self.root = Path(path) / version_slug(collection)
        self.collection = collection
        self.max_search_threads = max_search_threads
        (self.root / "versions").mkdir(parents=True, exist_ok=True)
        self._lock_file = self._take_process_lock()
        self._shards: dict[str, qe.EdgeShard] = {}
        self._dims: dict[str, VectorDims] = {}
        self._live: str | None = None
        try:
            live = self._read_pointer()
            if live is not None:
                self._open_shard(live)
                self._live = live
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- files

    def _take_process_lock(self) -> IO[str]:
        handle = open(self.root / ".lock", "a+")  # noqa: SIM115 - held open for the store's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise StoreUnavailableError(
                f"the look store {self.root} is in use by {owner}; Qdrant Edge allows one process per "
                "directory: stop that process, send the work to it, or point LOOKBOOK_DATA_DIR elsewhere"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        return handle

    def _shard_dir(self, version: str) -> Path:
        return self.root / "versions" / version_slug(version)

    def _meta_file(self, version: str) -> Path:
        return self.root / "versions" / f"{version_slug(version)}.json"

    def _read_meta(self, version: str) -> dict[str, Any] | None:
        try:
            meta: dict[str, Any] = json.loads(self._meta_file(version).read_text())
            return meta
        except FileNotFoundError:
            return None

    def _read_pointer(self) -> str | None:
        try:
            data = json.loads((self.root / LIVE_FILE).read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise StoreError(
                f'{self.root / LIVE_FILE} is corrupt ({exc}); write {{"version": "<model version>"}}'
                " naming a directory under versions/, or delete it to start empty"
            ) from None
        return str(data["version"])

    def _write_atomic(self, target: Path, data: dict[str, Any]) -> None:
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "w") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # ---------------------------------------------------------------- shards

    def _config(self, dims: VectorDims) -> qe.EdgeConfig:
        return qe.EdgeConfig(
            vectors={
                name: qe.EdgeVectorParams(size=size, distance=qe.Distance.Cosine)
                for name, size in dims.by_name().items()
            },
            hnsw_config=qe.HnswIndexConfig(
                m=self.hnsw_m, ef_construct=self.hnsw_ef_construct, full_scan_threshold=FULL_SCAN_THRESHOLD_KB
            ),
            max_search_threads=self.max_search_threads,
        )

    def _open_shard(self, version: str) -> qe.EdgeShard:
        shard = self._shards.get(version)
        if shard is not None:
            return shard
        directory = self._shard_dir(version)
        if not directory.is_dir():
            raise StoreError(
                f"the shard of model version {version} is missing at {directory}; restore it from a backup, "
                f"or delete {self.root / LIVE_FILE} and re-import the library"
            )
        try:
            shard = qe.EdgeShard.load(str(directory))
        except Exception as exc:
            if "WouldBlock" in str(exc):
                raise StoreUnavailableError(
                    f"the shard {directory} is open in another process; Qdrant Edge allows one process per "
                    "directory: stop it or point LOOKBOOK_DATA_DIR elsewhere"
                ) from exc
            raise StoreError(f"cannot open the shard {directory}: {exc}") from exc
        self._shards[version] = shard
        return shard

    def _shard(self, version: str) -> qe.EdgeShard:
        shard = self._shards.get(version)
        if shard is None:
            with self._lock:
                shard = self._open_shard(version)
        return shard

    def _collection_dims(self, version: str) -> VectorDims | None:
        dims = self._dims.get(version)
        if dims is not None:  # every search asks: no file read on the hot path
            return dims
        meta = self._read_meta(version)
        if meta is None or not self._shard_dir(version).is_dir():
            return None
        dims = VectorDims(int(meta["dims"][0]), int(meta["dims"][1]))
        self._dims[version] = dims
        return dims

    def _create_collection(self, version: str, dims: VectorDims, *, rebuild_started_at: float | None) -> None:
        directory = self._shard_dir(version)
        if directory.exists():
            self._drop_collection(version)  # a half-created shard without its meta file
        shard = qe.EdgeShard.create(str(directory), self._config(dims))
        for name in KEYWORD_INDEXES:
            shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword))
        for name in FLOAT_INDEXES:
            shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Float))
        shard.flush()
        self._shards[version] = shard
        self._write_atomic(
            self._meta_file(version),
            {
                "model_version": version,
                "dims": [dims.appearance, dims.compat],
                "rebuild_started_at": rebuild_started_at,
            },
        )

    def _drop_collection(self, version: str) -> None:
        self._dims.pop(version, None)
        shard = self._shards.pop(version, None)
        if shard is not None:
            shard.close()
        with contextlib.suppress(FileNotFoundError):
            self._meta_file(version).unlink()
        shutil.rmtree(self._shard_dir(version), ignore_errors=True)

    def _rebuild_started_at(self, version: str) -> float | None:
        meta = self._read_meta(version)
        value = meta.get("rebuild_started_at") if meta else None
        return float(value) if value is not None else None

    def _read_live(self) -> str | None:
        return self._live

    def _switch_live(self, version: str) -> None:
        self._open_shard(version).flush()
        previous = self._live
        self._write_atomic(self.root / LIVE_FILE, {"version": version})
        self._live = version
        if previous is not None and previous != version:
            # The previous shard stays open: readers that read the pointer just before the swap still use it.
            self._drop_stale_versions(keep={version, previous, *self._rebuilds})

    def _drop_stale_versions(self, keep: set[str]) -> None:
        """Keeps the live and the previous version (for a rollback); older shards only take disk."""
        keep_slugs = {version_slug(v) for v in keep}
        for meta in (self.root / "versions").glob("*.json"):
            if meta.stem not in keep_slugs:
                version = json.loads(meta.read_text()).get("model_version", meta.stem)
                log.info("dropping stale look collection", extra={"model_version": version})
                self._drop_collection(version)

    def _list_versions(self) -> list[str]:
        return sorted(
            json.loads(m.read_text()).get("model_version", m.stem) for m in (self.root / "versions").glob("*.json")
        )

    # ---------------------------------------------------------------- data

    def _retrieve(self, version: str, ids: Sequence[str], *, with_vectors: bool) -> list[RawRecord]:
        if not ids:
            return []
        records = self._shard(version).retrieve(list(ids), with_payload=True, with_vector=with_vectors)
        return [(str(r.id), dict(r.payload or {}), _vectors(r.vector) if with_vectors else None) for r in records]

    def _write_points(self, version: str, items: Sequence[tuple[str, dict[str, list[float]], dict[str, Any]]]) -> None:
        points = [qe.Point(look_id, dict(vectors), payload) for look_id, vectors, payload in items]
        self._shard(version).update(qe.UpdateOperation.upsert_points(points))

    def _set_payload_if_version(self, version: str, look_id: str, payload: dict[str, Any], current: int) -> None:
        condition = qe.Filter(
            must=[qe.HasIdCondition({look_id}), qe.FieldCondition("version", match=qe.MatchValue(current))]
        )
        self._shard(version).update(qe.UpdateOperation.set_payload_by_filter(condition, payload))

    def _set_payload(self, version: str, look_id: str, payload: dict[str, Any]) -> None:
        self._shard(version).update(qe.UpdateOperation.set_payload([look_id], payload))

    def _delete_points(self, version: str, ids: Sequence[str]) -> None:
        if ids:
            self._shard(version).update(qe.UpdateOperation.delete_points(list(ids)))

    def _query(self, version: str, spec: QuerySpec) -> list[Hit]:
        flt = _filter(spec.filters)
        params = qe.SearchParams(hnsw_ef=spec.hnsw_ef or self.hnsw_ef, exact=spec.exact)
        query: Any
        prefetches = None
        if spec.fusion is None:
            name, vector = spec.paths[0]
            if spec.mmr is not None:
                # Edge weighs relevance (lambda), the server API diversity: lambda = 1 - diversity.
                query = qe.Mmr(
                    vector,
                    lambda_=1.0 - spec.mmr.diversity,
                    candidates_limit=max(spec.mmr.candidates, spec.limit),
                    using=name,
                )
            else:
                query = qe.Query.Nearest(vector, using=name)
        else:
            prefetches = [
                qe.Prefetch(
                    limit=spec.per_path_limit,
                    query=qe.Query.Nearest(vector, using=name),
                    filter=flt,
                    params=params,
                )
                for name, vector in spec.paths
            ]
            query = (
                qe.Fusion.Rrf(k=spec.rrf_k, weights=list(spec.weights) if spec.weights else None)
                if spec.fusion == "rrf"
                else qe.Fusion.Dbsf()
            )
        request = qe.QueryRequest(
            limit=spec.limit,
            query=query,
            prefetches=prefetches,
            filter=flt,
            params=params,
            with_payload=spec.with_payload,
            with_vector=list(spec.with_vectors) if isinstance(spec.with_vectors, tuple) else spec.with_vectors,
        )
        points = self._shard(version).query(request)
        return [
            (
                str(p.id),
                float(p.score),
                dict(p.payload or {}) if spec.with_payload else {},
                _vectors(p.vector) if spec.with_vectors else None,
            )
            for p in points
        ]

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
        with_payload: Any = (
            True
            if payload_keys is None
            else (qe.PayloadSelector.Include(list(payload_keys)) if payload_keys else False)
        )
        order = None
        if order_key is not None:
            order = qe.OrderBy(order_key, qe.Direction.Desc if descending else qe.Direction.Asc, start_from)
        request = qe.ScrollRequest(
            offset=offset if order is None else None,
            limit=limit,
            filter=_filter(filters, exclude_ids=exclude_ids),
            with_payload=with_payload,
            with_vector=False,
            order_by=order,
        )
        records, next_offset = self._shard(version).scroll(request)
        raw: list[RawRecord] = [(str(r.id), dict(r.payload or {}), None) for r in records]
        return raw, (str(next_offset) if next_offset is not None and order is None else None)

    def _count(
        self, version: str, filters: LookFilter | None, *, quality_range: tuple[float, float, bool] | None
    ) -> int:
        return int(self._shard(version).count(qe.CountRequest(exact=True, filter=_filter(filters, quality_range))))

    def _facet(self, version: str, key: str, filters: LookFilter | None) -> dict[str, int]:
        response = self._shard(version).facet(qe.FacetRequest(key, limit=10_000, exact=True, filter=_filter(filters)))
        return {str(hit.value): int(hit.count) for hit in response.hits}

    def _optimize(self, version: str) -> None:
        with self._lock:
            shard = self._shard(version)
            shard.optimize()
            shard.flush()

    def flush(self) -> None:
        with self._lock:
            for shard in self._shards.values():
                shard.flush()

    def close(self) -> None:
        """Flushes and closes every shard and releases the directory for another process."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for shard in self._shards.values():
                with contextlib.suppress(Exception):
                    shard.flush()
                shard.close()
            self._shards.clear()
            if getattr(self, "_lock_file", None) is not None:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
                self._lock_file.close()

    def __enter__(self) -> EdgeLookStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _vectors(vector: Any) -> dict[str, list[float]]:
    if isinstance(vector, dict):
        # The engine hands dense vectors over as lists of Python floats already.
        return {
            str(k): v if isinstance(v, list) else list(map(float, v)) for k, v in vector.items() if k in VECTOR_NAMES
        }
    return {}


def _filter(
    filters: LookFilter | None,
    quality_range: tuple[float, float, bool] | None = None,
    *,
    exclude_ids: Sequence[str] = (),
) -> qe.Filter | None:
    must: list[Any] = []
    if filters is not None:
        if filters.statuses is not None:
            must.append(qe.FieldCondition("status", match=qe.MatchAny(list(filters.statuses))))
        for tag in filters.tags:
            must.append(qe.FieldCondition("tags", match=qe.MatchValue(tag)))
        if filters.sources:
            must.append(qe.FieldCondition("source", match=qe.MatchAny(list(filters.sources))))
        if filters.min_quality > 0.0:
            must.append(qe.FieldCondition("quality_score", range=qe.RangeFloat(gte=filters.min_quality)))
        if filters.model_version is not None:
            must.append(qe.FieldCondition("model_version", match=qe.MatchValue(filters.model_version)))
        if filters.updated_since is not None:
            must.append(qe.FieldCondition("updated_at", range=qe.RangeFloat(gte=filters.updated_since)))
        if filters.has_vector is not None:
            must.append(qe.HasVectorCondition(filters.has_vector))
        if filters.ids:
            must.append(qe.HasIdCondition(set(filters.ids)))
    if quality_range is not None:
        low, high, inclusive = quality_range
        rng = qe.RangeFloat(gte=low, lte=high) if inclusive else qe.RangeFloat(gte=low, lt=high)
        must.append(qe.FieldCondition("quality_score", range=rng))
    must_not: list[Any] = [qe.HasIdCondition(set(exclude_ids))] if exclude_ids else []
    if not must and not must_not:
        return None
    return qe.Filter(must=must or None, must_not=must_not or None)
