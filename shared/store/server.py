"""The scale-out look store: qdrant-client against a Qdrant server or cluster (`LOOKBOOK_QDRANT_URL`).

Collections are named `<alias>__<model version>` and reached through a real alias, swapped in one
`update_collection_aliases` call. Tests run this code against `QdrantClient(":memory:")`; local mode
accepts but does not act on shard_number, replication_factor, write_consistency_factor, read
consistency or payload indexes, and is not a server under load, so those, and the retry path against
a real outage, are verified only on a real cluster.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

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

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a process trusts its view of the alias; another process's promote is seen within this.
ALIAS_TTL_S = 2.0
_TRANSIENT_HTTP = {429, 500, 502, 503, 504}


def parse_read_consistency(value: str | int | None) -> int | qm.ReadConsistencyType | None:
    """LOOKBOOK_READ_CONSISTENCY: a replica count, or 'majority', 'quorum', 'all'."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip().lower()
    if text.isdigit():
        return int(text)
    try:
        return qm.ReadConsistencyType(text)
    except ValueError:
        raise StoreError(
            f"LOOKBOOK_READ_CONSISTENCY={value!r} is not a number, 'majority', 'quorum' or 'all'"
        ) from None


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: the server was unreachable, overloaded or failing (5xx, gRPC UNAVAILABLE)."""
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in _TRANSIENT_HTTP
    if isinstance(exc, ResponseHandlingException | httpx.TransportError | ConnectionError | TimeoutError):
        return True
    try:
        import grpc
    except ImportError:  # pragma: no cover - grpcio is a dependency
        return False
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
    return False


class ServerLookStore(LookStoreBase):
    """Look store on a Qdrant server through qdrant-client (HTTP, or gRPC with prefer_grpc).

    Pass `client=` (tests use QdrantClient(":memory:")), `location=":memory:"`, or `url=`. Opening
    checks the server at once and raises StoreUnavailableError naming LOOKBOOK_QDRANT_URL. Every
    call retries transient faults with exponential backoff and jitter; others fail at once. Writes
    are idempotent (deterministic ids, version-conditioned updates), so a retry is safe.
    """

    def __init__(
        self,
        *,
        client: QdrantClient | None = None,
        url: str | None = None,
        location: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        prefer_grpc: bool = False,
        collection: str = "looks",
        shard_number: int = 1,
        replication_factor: int = 1,
        write_consistency_factor: int = 1,
        read_consistency: str | int | None = None,
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 128,
        hnsw_ef: int = 128,
        retries: int = 4,
        backoff_s: float = 0.2,
    ) -> None:
        super().__init__(hnsw_m=hnsw_m, hnsw_ef_construct=hnsw_ef_construct, hnsw_ef=hnsw_ef)
        self.alias = collection
        self.url = url or location or ":memory:"
        self.shard_number = shard_number
        self.replication_factor = replication_factor
        self.write_consistency_factor = write_consistency_factor
        self.read_consistency = parse_read_consistency(read_consistency)
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        self._owns_client = client is None
        if client is None:
            if url:
                # The open check below reaches the server with retries; the client's own version probe
                # would only add a second request, and a warning when the server is down.
                client = QdrantClient(
                    url=url,
                    api_key=api_key or None,
                    timeout=max(1, round(timeout_s)),
                    prefer_grpc=prefer_grpc,
                    check_compatibility=False,
                )
            else:
                client = QdrantClient(location=location or ":memory:")
        self.client = client
        # Local mode is a plain Python structure without locking; a server is safe to call concurrently.
        self.local = type(getattr(client, "_client", None)).__name__ == "QdrantLocal"
        self._call_lock: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if self.local else contextlib.nullcontext()
        )
        self._dims: dict[str, VectorDims] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._live_cache: tuple[float, str | None] | None = None
        try:
            self._call(self.client.get_collections)
        except StoreError as exc:
            self._close_client()
            raise StoreUnavailableError(
                f"cannot reach Qdrant at LOOKBOOK_QDRANT_URL={self.url!r}: {exc}. Start the server "
                "(or fix the URL and LOOKBOOK_QDRANT_API_KEY), "
                "or unset LOOKBOOK_QDRANT_URL to use the embedded store"
            ) from None

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLookStore:
        url = settings.qdrant_url
        return cls(
            url=None if url == ":memory:" else url,
            location=":memory:" if url == ":memory:" else None,
            api_key=settings.qdrant_api_key or None,
            timeout_s=settings.qdrant_timeout_s,
            collection=settings.collection,
            shard_number=settings.shard_number,
            replication_factor=settings.replication_factor,
            write_consistency_factor=settings.write_consistency_factor,
            read_consistency=settings.read_consistency,
            hnsw_m=settings.hnsw_m,
            hnsw_ef_construct=settings.hnsw_ef_construct,
            hnsw_ef=settings.hnsw_ef,
        )

    # ---------------------------------------------------------------- calls

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs one client call, retrying transient faults with exponential backoff and jitter."""
        attempt = 0
        while True:
            try:
                with self._call_lock:
                    return fn(*args, **kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    if isinstance(exc, StoreError):
                        raise
                    raise StoreError(f"Qdrant rejected {getattr(fn, '__name__', 'a call')}: {exc}") from exc
                if attempt >= self.retries:
                    raise StoreUnavailableError(
                        f"Qdrant at {self.url} (LOOKBOOK_QDRANT_URL) failed {attempt + 1} times: {exc}; "
                        "check the server and the network, then retry"
                    ) from exc
                delay = self.backoff_s * (2**attempt) * (0.5 + random.random())
                log.warning(
                    "transient Qdrant error, retrying",
                    extra={
                        "call": getattr(fn, "__name__", "?"),
                        "attempt": attempt + 1,
                        "delay_s": round(delay, 3),
                    },
                )
                time.sleep(delay)
                attempt += 1

    def _name(self, version: str) -> str:
        # The live collection goes through the alias, which the server resolves per request: if
        # another process has just promoted, writes and reads follow it instead of landing in the
        # retired collection while this process's alias cache is stale.
        cached = self._live_cache
        if cached is not None and cached[1] == version:
            return self.alias
        return self._versioned(version)

    def _versioned(self, version: str) -> str:
        return f"{self.alias}__{version_slug(version)}"

    # ---------------------------------------------------------------- collections

    def _collection_info(self, version: str) -> tuple[VectorDims, dict[str, Any]] | None:
        if version in self._dims:
            return self._dims[version], self._meta[version]
        name = self._versioned(version)
        if not self._call(self.client.collection_exists, name):
            return None
        info = self._call(self.client.get_collection, name)
        vectors = info.config.params.vectors
        if not isinstance(vectors, dict):
            raise StoreError(f"collection {name} has no named vectors; it was not made by Lookbook, drop it")
        dims = VectorDims(vectors["top"].size, vectors["top_compat"].size)
        self._dims[version] = dims
        self._meta[version] = dict(info.config.metadata or {})
        return dims, self._meta[version]

    def _collection_dims(self, version: str) -> VectorDims | None:
        info = self._collection_info(version)
        return info[0] if info else None

    def _create_collection(self, version: str, dims: VectorDims, *, rebuild_started_at: float | None) -> None:
        name = self._versioned(version)
        try:
            self._call(
                self.client.create_collection,
                name,
                vectors_config={
                    n: qm.VectorParams(size=size, distance=qm.Distance.COSINE) for n, size in dims.by_name().items()
                },
                shard_number=self.shard_number,
                replication_factor=self.replication_factor,
                write_consistency_factor=self.write_consistency_factor,
                hnsw_config=qm.HnswConfigDiff(m=self.hnsw_m, ef_construct=self.hnsw_ef_construct),
                metadata={"model_version": version, "rebuild_started_at": rebuild_started_at},
            )
        except StoreError:
            # Another process may have created it a moment ago (two workers starting together);
            # creating the payload indexes again is harmless.
            if not self._call(self.client.collection_exists, name):
                raise
        with warnings.catch_warnings():
            # Local mode warns that it ignores payload indexes; the calls still exercise the server path.
            warnings.filterwarnings("ignore", message="Payload indexes have no effect")
            for field in KEYWORD_INDEXES:
                self._call(self.client.create_payload_index, name, field, qm.PayloadSchemaType.KEYWORD, wait=True)
            for field in FLOAT_INDEXES:
                self._call(self.client.create_payload_index, name, field, qm.PayloadSchemaType.FLOAT, wait=True)
        self._dims.pop(version, None)

    def _drop_collection(self, version: str) -> None:
        self._call(self.client.delete_collection, self._versioned(version))
        self._dims.pop(version, None)
        self._meta.pop(version, None)

    def _rebuild_started_at(self, version: str) -> float | None:
        info = self._collection_info(version)
        value = info[1].get("rebuild_started_at") if info else None
        return float(value) if value is not None else None

    def _refresh_live(self) -> None:
        self._live_cache = None

    def _read_live(self) -> str | None:
        cached = self._live_cache
        if cached is not None and time.monotonic() - cached[0] < ALIAS_TTL_S:
            return cached[1]
        aliases = self._call(self.client.get_aliases).aliases
        target = next((a.collection_name for a in aliases if a.alias_name == self.alias), None)
        live = self._version_of(target) if target else None
        self._live_cache = (time.monotonic(), live)
        return live

    def _version_of(self, collection_name: str) -> str:
        info = self._call(self.client.get_collection, collection_name)
        version = (info.config.metadata or {}).get("model_version")
        return str(version) if version else collection_name.removeprefix(f"{self.alias}__")

    def _switch_live(self, version: str) -> None:
        name = self._versioned(version)
        aliases = self._call(self.client.get_aliases).aliases
        previous = next((a.collection_name for a in aliases if a.alias_name == self.alias), None)
        operations: list[Any] = []
        if previous is not None:
            operations.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=self.alias)))
        operations.append(
            qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=name, alias_name=self.alias))
        )
        # One request: the server applies the delete and the create atomically.
        self._call(self.client.update_collection_aliases, operations)
        self._live_cache = (time.monotonic(), version)
        if previous is not None and previous != name:
            self._drop_stale_versions(keep={version, self._version_of(previous), *self._rebuilds})

    def _drop_stale_versions(self, keep: set[str]) -> None:
        """Keeps the live and the previous collection (for a rollback); older ones only take space."""
        for version in self._list_versions():
            if version not in keep:
                log.info("dropping stale look collection", extra={"model_version": version})
                self._drop_collection(version)

    def _list_versions(self) -> list[str]:
        names = [c.name for c in self._call(self.client.get_collections).collections]
        return sorted(self._version_of(n) for n in names if n.startswith(f"{self.alias}__"))

    # ---------------------------------------------------------------- data

    def _retrieve(self, version: str, ids: Sequence[str], *, with_vectors: bool) -> list[RawRecord]:
        if not ids:
            return []
        records = self._call(
            self.client.retrieve,
            self._name(version),
            list(ids),
            with_payload=True,
            with_vectors=with_vectors,
            consistency=self.read_consistency,
        )
        return [(str(r.id), dict(r.payload or {}), _vectors(r.vector) if with_vectors else None) for r in records]

    def _write_points(self, version: str, items: Sequence[tuple[str, dict[str, list[float]], dict[str, Any]]]) -> None:
        points = [
            qm.PointStruct(id=look_id, vector=dict(vectors), payload=payload) for look_id, vectors, payload in items
        ]
        self._call(self.client.upsert, self._name(version), points, wait=True)

    def _set_payload_if_version(self, version: str, look_id: str, payload: dict[str, Any], current: int) -> None:
        selector = qm.Filter(
            must=[
                qm.HasIdCondition(has_id=[look_id]),
                qm.FieldCondition(key="version", match=qm.MatchValue(value=current)),
            ]
        )
        self._call(self.client.set_payload, self._name(version), payload, points=selector, wait=True)

    def _set_payload(self, version: str, look_id: str, payload: dict[str, Any]) -> None:
        self._call(self.client.set_payload, self._name(version), payload, points=[look_id], wait=True)

    def _delete_points(self, version: str, ids: Sequence[str]) -> None:
        if ids:
            self._call(
                self.client.delete,
                self._name(version),
                points_selector=qm.PointIdsList(points=list(ids)),
                wait=True,
            )

    def _query(self, version: str, spec: QuerySpec) -> list[Hit]:
        flt = _filter(spec.filters)
        params = qm.SearchParams(hnsw_ef=spec.hnsw_ef or self.hnsw_ef, exact=spec.exact)
        kwargs: dict[str, Any] = {}
        if spec.fusion is None:
            name, vector = spec.paths[0]
            kwargs["using"] = name
            if spec.mmr is not None:
                kwargs["query"] = qm.NearestQuery(
                    nearest=vector,
                    mmr=qm.Mmr(diversity=spec.mmr.diversity, candidates_limit=max(spec.mmr.candidates, spec.limit)),
                )
            else:
                kwargs["query"] = qm.NearestQuery(nearest=vector)
        else:
            kwargs["prefetch"] = [
                qm.Prefetch(
                    query=vector,
                    using=name,
                    limit=spec.per_path_limit,
                    filter=flt,
                    params=None if self.local else params,
                )
                for name, vector in spec.paths
            ]
            kwargs["query"] = (
                qm.RrfQuery(rrf=qm.Rrf(k=spec.rrf_k, weights=list(spec.weights) if spec.weights else None))
                if spec.fusion == "rrf"
                else qm.FusionQuery(fusion=qm.Fusion.DBSF)
            )
        response = self._call(
            self.client.query_points,
            self._name(version),
            query_filter=flt,
            # Local mode always scans exactly and warns about search params; a server honours them.
            search_params=None if self.local else params,
            limit=spec.limit,
            with_payload=spec.with_payload,
            with_vectors=list(spec.with_vectors) if isinstance(spec.with_vectors, tuple) else spec.with_vectors,
            consistency=self.read_consistency,
            **kwargs,
        )
        return [
            (
                str(p.id),
                float(p.score),
                dict(p.payload or {}) if spec.with_payload else {},
                _vectors(p.vector) if spec.with_vectors else None,
            )
            for p in response.points
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
        with_payload: Any = True if payload_keys is None else (list(payload_keys) if payload_keys else False)
        order = None
        if order_key is not None:
            order = qm.OrderBy(
                key=order_key,
                direction=qm.Direction.DESC if descending else qm.Direction.ASC,
                start_from=start_from,
            )
        records, next_offset = self._call(
            self.client.scroll,
            self._name(version),
            scroll_filter=_filter(filters, exclude_ids=exclude_ids),
            limit=limit,
            order_by=order,
            offset=offset if order is None else None,
            with_payload=with_payload,
            with_vectors=False,
            consistency=self.read_consistency,
        )
        raw: list[RawRecord] = [(str(r.id), dict(r.payload or {}), None) for r in records]
        return raw, (str(next_offset) if next_offset is not None and order is None else None)

    def _count(
        self, version: str, filters: LookFilter | None, *, quality_range: tuple[float, float, bool] | None
    ) -> int:
        result = self._call(
            self.client.count, self._name(version), count_filter=_filter(filters, quality_range), exact=True
        )
        return int(result.count)

    def _facet(self, version: str, key: str, filters: LookFilter | None) -> dict[str, int]:
        response = self._call(
            self.client.facet,
            self._name(version),
            key,
            facet_filter=_filter(filters),
            limit=10_000,
            exact=True,
            consistency=self.read_consistency,
        )
        return {str(hit.value): int(hit.count) for hit in response.hits}

    def _optimize(self, version: str, timeout_s: float = 600.0) -> None:
        """A server indexes in the background: wait until the collection is green (indexed)."""
        deadline = time.monotonic() + timeout_s
        while True:
            info = self._call(self.client.get_collection, self._versioned(version))
            if info.status == qm.CollectionStatus.GREEN or time.monotonic() > deadline:
                return
            time.sleep(0.5)

    def flush(self) -> None:
        """Writes use wait=True: acknowledged means applied (and durable per the write consistency)."""

    def _close_client(self) -> None:
        if self._owns_client:
            with contextlib.suppress(Exception):
                self.client.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_client()

    def __enter__(self) -> ServerLookStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _vectors(vector: Any) -> dict[str, list[float]]:
    if isinstance(vector, dict):
        return {str(k): list(map(float, v)) for k, v in vector.items() if k in VECTOR_NAMES}
    return {}


def _filter(
    filters: LookFilter | None,
    quality_range: tuple[float, float, bool] | None = None,
    *,
    exclude_ids: Sequence[str] = (),
) -> qm.Filter | None:
    must: list[Any] = []
    if filters is not None:
        if filters.statuses is not None:
            must.append(qm.FieldCondition(key="status", match=qm.MatchAny(any=list(filters.statuses))))
        for tag in filters.tags:
            must.append(qm.FieldCondition(key="tags", match=qm.MatchValue(value=tag)))
        if filters.sources:
            must.append(qm.FieldCondition(key="source", match=qm.MatchAny(any=list(filters.sources))))
        if filters.min_quality > 0.0:
            must.append(qm.FieldCondition(key="quality_score", range=qm.Range(gte=filters.min_quality)))
        if filters.model_version is not None:
            must.append(qm.FieldCondition(key="model_version", match=qm.MatchValue(value=filters.model_version)))
        if filters.updated_since is not None:
            must.append(qm.FieldCondition(key="updated_at", range=qm.Range(gte=filters.updated_since)))
        if filters.has_vector is not None:
            must.append(qm.HasVectorCondition(has_vector=filters.has_vector))
        if filters.ids:
            must.append(qm.HasIdCondition(has_id=list(filters.ids)))
    if quality_range is not None:
        low, high, inclusive = quality_range
        rng = qm.Range(gte=low, lte=high) if inclusive else qm.Range(gte=low, lt=high)
        must.append(qm.FieldCondition(key="quality_score", range=rng))
    must_not: list[Any] = [qm.HasIdCondition(has_id=list(exclude_ids))] if exclude_ids else []
    if not must and not must_not:
        return None
    return qm.Filter(must=must or None, must_not=must_not or None)
