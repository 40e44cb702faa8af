"""The look store's data model: look records, vectors, filters, typed errors and the `LookStore` protocol.

Both backends (Qdrant Edge on disk, qdrant-client against a server) speak exactly these types.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

import numpy as np

# --- vocabulary

Status = Literal["pending", "approved", "rejected", "featured"]
STATUSES: tuple[str, ...] = ("pending", "approved", "rejected", "featured")
SEARCHABLE: tuple[str, ...] = ("approved", "featured")

TOP, BOTTOM, TOP_COMPAT, BOTTOM_COMPAT = "top", "bottom", "top_compat", "bottom_compat"
APPEARANCE_VECTORS: tuple[str, ...] = (TOP, BOTTOM)
COMPAT_VECTORS: tuple[str, ...] = (TOP_COMPAT, BOTTOM_COMPAT)
VECTOR_NAMES: tuple[str, ...] = APPEARANCE_VECTORS + COMPAT_VECTORS

# Payload fields with an index: keywords for exact matches and facets, floats for ranges and ordering.
KEYWORD_INDEXES: tuple[str, ...] = ("status", "model_version", "tags", "source")
FLOAT_INDEXES: tuple[str, ...] = ("quality_score", "created_at", "updated_at")

# Scroll orders: a payload float field, "-" prefix for descending; "id" is the engine's native order.
ORDERS: tuple[str, ...] = (
    "id",
    "created_at",
    "-created_at",
    "updated_at",
    "-updated_at",
    "quality_score",
    "-quality_score",
)

# Fixed namespace so every process, now and later, derives the same look id from the same image bytes.
LOOK_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://lookbook/looks")

Box = tuple[float, float, float, float]


# --- errors


class StoreError(RuntimeError):
    """Anything the look store cannot do; the message says what to do next."""


class StoreUnavailableError(StoreError):
    """The vector store cannot be reached or opened (server down, directory locked by another process)."""


class LookNotFoundError(StoreError, KeyError):
    """No look has this id in the live collection."""

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message
        return str(self.args[0]) if self.args else "look not found"


class StaleVersionError(StoreError):
    """The look changed since the caller read it (optimistic concurrency); re-read it and retry."""

    def __init__(self, look_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"look {look_id} is at version {actual}, not {expected}: someone changed it meanwhile; "
            "reload the look and apply your change again"
        )
        self.look_id = look_id
        self.expected = expected
        self.actual = actual


class InvalidLookError(StoreError, ValueError):
    """A record, change, vector or filter is malformed; nothing was written."""


# --- ids


def look_id_for_sha256(sha256_hex: str) -> str:
    """The look id of an image whose content hash is known: uuid5 of the lowercase hex digest."""
    return str(uuid.uuid5(LOOK_NAMESPACE, sha256_hex.lower()))


def look_id_for(image_bytes: bytes) -> str:
    """Deterministic look id from the image content, so a re-import updates and never duplicates."""
    return look_id_for_sha256(hashlib.sha256(image_bytes).hexdigest())


_CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def normalize_look_id(look_id: str | uuid.UUID) -> str:
    if isinstance(look_id, str) and _CANONICAL_ID.fullmatch(look_id):
        return look_id  # already canonical (ids read back from the store): skip the UUID round trip
    try:
        return str(uuid.UUID(str(look_id)))
    except ValueError:
        raise InvalidLookError(f"look id {look_id!r} is not a UUID; ids come from look_id_for(image_bytes)") from None


_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def version_slug(model_version: str) -> str:
    """A model version as a safe collection / directory name component."""
    slug = _SLUG.sub("_", model_version.strip()).strip("._")
    if not slug:
        raise InvalidLookError(f"model version {model_version!r} is empty; pass e.g. 'backbone-1+detector-1'")
    return slug


# --- records


@dataclass(frozen=True)
class LookRecord:
    """One look in the library: its image, garment boxes, curation state and bookkeeping.

    Boxes are (x0, y0, x1, y1) in pixels of the stored image. `version` is bumped by the store on
    every change and drives optimistic concurrency; `edited_fields` lists fields an editor set,
    which a re-import leaves alone.
    """

    look_id: str
    image_path: str
    width: int = 0
    height: int = 0
    top_box: Box | None = None
    bottom_box: Box | None = None
    tags: list[str] = field(default_factory=list)
    colors: dict[str, list[str]] | list[str] = field(default_factory=dict)
    source: str = ""
    attribution: str = ""
    quality_score: float = 0.0
    quality_reasons: list[str] = field(default_factory=list)
    status: Status = "pending"
    model_version: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    version: int = 0
    content_sha256: str = ""
    edited_fields: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        """The Qdrant payload (JSON-safe), without the id, which is the point id."""
        payload: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "look_id":
                continue
            value = getattr(self, f.name)
            if f.name in ("top_box", "bottom_box"):
                value = None if value is None else [float(v) for v in value]
            elif isinstance(value, list):
                value = list(value)
            elif isinstance(value, dict):
                value = {k: (list(v) if isinstance(v, list | tuple) else v) for k, v in value.items()}
            payload[f.name] = value
        return payload

    @classmethod
    def from_payload(cls, look_id: str | uuid.UUID, payload: Mapping[str, Any]) -> LookRecord:
        """Rebuilds a record; unknown payload keys are ignored so older code reads newer data."""
        known = _PAYLOAD_FIELDS
        values: dict[str, Any] = {k: v for k, v in payload.items() if k in known}
        for name in ("top_box", "bottom_box"):
            box = values.get(name)
            values[name] = None if box is None else tuple(float(v) for v in box)
        for name in ("width", "height", "version"):
            if name in values:
                values[name] = int(values[name])
        for name in ("quality_score", "created_at", "updated_at"):
            if name in values:
                values[name] = float(values[name])
        return cls(look_id=str(look_id), **values)

    def validated(self) -> LookRecord:
        """Checks the fields a caller sets; raises InvalidLookError naming the field."""
        look_id = normalize_look_id(self.look_id)
        if self.status not in STATUSES:
            raise InvalidLookError(f"look {look_id}: status {self.status!r} is not one of {', '.join(STATUSES)}")
        if not self.image_path:
            raise InvalidLookError(f"look {look_id}: image_path is empty; store the image first, then the look")
        for name in ("top_box", "bottom_box"):
            box = getattr(self, name)
            if box is not None and (len(box) != 4 or not all(math.isfinite(float(v)) for v in box)):
                raise InvalidLookError(f"look {look_id}: {name} must be four finite numbers (x0, y0, x1, y1)")
        if not math.isfinite(self.quality_score):
            raise InvalidLookError(f"look {look_id}: quality_score must be a finite number")
        if not all(isinstance(t, str) for t in self.tags):
            raise InvalidLookError(f"look {look_id}: tags must be strings")
        return self if look_id == self.look_id else replace(self, look_id=look_id)


# The payload keys of a record (all its fields but the id, which is the point id).
_PAYLOAD_FIELDS: frozenset[str] = frozenset(f.name for f in fields(LookRecord)) - {"look_id"}

# Fields update_look may change; the rest are owned by the store (ids, timestamps, version) or the image.
EDITABLE_FIELDS: frozenset[str] = frozenset(
    {
        "status",
        "tags",
        "colors",
        "source",
        "attribution",
        "quality_score",
        "quality_reasons",
        "top_box",
        "bottom_box",
        "model_version",
        "extra",
    }
)


@dataclass(frozen=True)
class LookPoint:
    """A look and its vectors, as written by an import or a re-embed; missing vectors are simply absent."""

    record: LookRecord
    vectors: Mapping[str, Sequence[float] | np.ndarray]


@dataclass(frozen=True)
class ScoredLook:
    """A search hit: the look, its score (cosine, or the fused RRF score) and, if asked, its vectors."""

    look: LookRecord
    score: float
    vectors: dict[str, list[float]] | None = None


@dataclass(frozen=True)
class SearchHit:
    """A search hit without its payload: the look id, its score and, if asked, its vectors.

    What ranking reads for a whole candidate pool; the payloads of the few looks it returns are
    fetched afterwards (converting a payload costs far more than finding the look).
    """

    look_id: str
    score: float
    vectors: dict[str, list[float]] | None = None


@dataclass(frozen=True)
class LookFilter:
    """What a read may return. `tags` must all be present on a look; `sources` is any-of.

    statuses=None means every status (curation views); searches default to approved and featured.
    """

    statuses: tuple[str, ...] | None = None
    tags: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    min_quality: float = 0.0
    model_version: str | None = None
    updated_since: float | None = None  # epoch seconds; looks changed (imported or edited) at or after
    # Only looks that have this named vector (a look without a bottom has no `bottom` vector).
    has_vector: str | None = None
    # Only these look ids (any of them); empty means no restriction.
    ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.statuses is not None:
            bad = [s for s in self.statuses if s not in STATUSES]
            if bad:
                raise InvalidLookError(f"unknown status {bad[0]!r}; use one of {', '.join(STATUSES)}")
        if self.has_vector is not None:
            check_vector_name(self.has_vector)
        if not math.isfinite(self.min_quality):
            raise InvalidLookError("min_quality must be a finite number")


@dataclass(frozen=True)
class VectorDims:
    """Dimensions of the appearance vectors (`top`, `bottom`) and of the compatibility projections."""

    appearance: int
    compat: int

    def __post_init__(self) -> None:
        if self.appearance < 1 or self.compat < 1:
            raise InvalidLookError(f"vector dims must be positive, got {self}")

    def by_name(self) -> dict[str, int]:
        return {
            TOP: self.appearance,
            BOTTOM: self.appearance,
            TOP_COMPAT: self.compat,
            BOTTOM_COMPAT: self.compat,
        }

    @classmethod
    def of(cls, dims: VectorDims | tuple[int, int] | Sequence[int]) -> VectorDims:
        if isinstance(dims, VectorDims):
            return dims
        appearance, compat = dims
        return cls(int(appearance), int(compat))


@dataclass(frozen=True)
class Mmr:
    """Maximal-marginal-relevance diversification: `diversity` 0 is pure relevance, 1 pure diversity."""

    diversity: float = 0.5
    candidates: int = 100

    def __post_init__(self) -> None:
        if not 0.0 <= self.diversity <= 1.0:
            raise InvalidLookError(f"MMR diversity must be within [0, 1], got {self.diversity}")
        if self.candidates < 1:
            raise InvalidLookError("MMR candidates must be at least 1")


class ScrollPage(NamedTuple):
    looks: list[LookRecord]
    next_cursor: str | None


@dataclass(frozen=True)
class LibraryStats:
    """Counts of the live collection for `library stats` and the editor console."""

    model_version: str | None
    total: int
    by_status: dict[str, int]
    by_source: dict[str, int]
    # (low, high, count) per bin of width 0.1 over [0, 1]; the last bin includes 1.0.
    quality_histogram: list[tuple[float, float, int]]


# --- shared conversions


def vector_list(name: str, vector: Sequence[float] | np.ndarray, dim: int) -> list[float]:
    """A vector as a float list, checked for dimension and finiteness (a NaN would poison cosine)."""
    array = np.asarray(vector, dtype=np.float32).reshape(-1)
    if array.shape[0] != dim:
        raise InvalidLookError(f"vector {name!r} has {array.shape[0]} dimensions, the collection expects {dim}")
    if not np.isfinite(array).all():
        raise InvalidLookError(f"vector {name!r} contains NaN or infinity; fix the embedding before storing it")
    if not array.any():
        raise InvalidLookError(f"vector {name!r} is all zeros; cosine similarity is undefined for it")
    return array.tolist()  # type: ignore[no-any-return]


def check_vector_name(name: str) -> str:
    if name not in VECTOR_NAMES:
        raise InvalidLookError(f"unknown vector {name!r}; use one of {', '.join(VECTOR_NAMES)}")
    return name


def merge_reimport(
    new: LookRecord, existing: LookRecord | None, *, keep_curation: bool, now: float, bump: bool = True
) -> LookRecord:
    """The record to write when `new` is (re-)imported over `existing`.

    A re-import refreshes what the pipeline computes, but keeps what people decided: the curation
    status, every field an editor edited, and the creation time. keep_curation=False takes the
    new status and drops the editor marks (an explicit reset); created_at is always kept.
    bump=False keeps the version (a re-embed into a new collection is no change an editor must
    see as a conflict).
    """
    if existing is None:
        return replace(
            new,
            created_at=new.created_at or now,
            updated_at=now,
            version=1,
            edited_fields=sorted(set(new.edited_fields)),
        )
    created_at = existing.created_at or new.created_at or now
    version = existing.version + 1 if bump else max(existing.version, 1)
    if not keep_curation:
        return replace(new, created_at=created_at, updated_at=now, version=version, edited_fields=[])
    kept: dict[str, Any] = {name: getattr(existing, name) for name in existing.edited_fields if name in EDITABLE_FIELDS}
    kept["status"] = existing.status
    return replace(
        new,
        **kept,
        created_at=created_at,
        updated_at=now,
        version=version,
        edited_fields=list(existing.edited_fields),
    )


def apply_changes(existing: LookRecord, changes: Mapping[str, Any], *, curated: bool, now: float) -> LookRecord:
    """The record after an update_look; raises InvalidLookError on a field that may not change."""
    bad = sorted(set(changes) - EDITABLE_FIELDS)
    if bad:
        raise InvalidLookError(
            f"cannot change {', '.join(bad)} of look {existing.look_id}; editable fields are "
            f"{', '.join(sorted(EDITABLE_FIELDS))}"
        )
    values = dict(changes)
    for name in ("top_box", "bottom_box"):
        if values.get(name) is not None:
            values[name] = tuple(float(v) for v in values[name])
    if "tags" in values:
        values["tags"] = [str(t) for t in values["tags"]]
    if "quality_score" in values:
        values["quality_score"] = float(values["quality_score"])
    edited = sorted(set(existing.edited_fields) | set(changes)) if curated else list(existing.edited_fields)
    updated = replace(existing, **values, updated_at=now, version=existing.version + 1, edited_fields=edited)
    return updated.validated()


def now_epoch() -> float:
    return time.time()


def encode_cursor(state: Mapping[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        state = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError):
        raise InvalidLookError("the scroll cursor is malformed; pass the next_cursor of the previous page") from None
    if not isinstance(state, dict):
        raise InvalidLookError("the scroll cursor is malformed; pass the next_cursor of the previous page")
    return state


# --- the protocol


@runtime_checkable
class RebuildWriter(Protocol):
    """Writes a re-embedded library into a new versioned collection while readers use the live one."""

    model_version: str

    def upsert(self, points: Sequence[LookPoint], *, batch_size: int = 256) -> int: ...
    def count(self) -> int: ...
    def existing_ids(self, look_ids: Sequence[str]) -> set[str]: ...
    def optimize(self) -> None: ...
    def promote(self) -> None: ...
    def abort(self) -> None: ...


@runtime_checkable
class LookStore(Protocol):
    """The look library in Qdrant, reached through the live versioned collection. Thread-safe."""

    def ensure(self, model_version: str, dims: VectorDims | tuple[int, int]) -> str: ...
    def live_version(self) -> str | None: ...
    def upsert(self, points: Sequence[LookPoint], *, keep_curation: bool = True, batch_size: int = 256) -> int: ...
    def get(self, look_id: str) -> LookRecord | None: ...
    def get_many(self, look_ids: Sequence[str]) -> list[LookRecord]: ...
    def get_vectors(self, look_id: str) -> dict[str, list[float]] | None: ...
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
    ) -> list[ScoredLook]: ...
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
    ) -> list[SearchHit]: ...
    def fused_search_ids(
        self,
        prefetch: Sequence[tuple[str, Sequence[float] | np.ndarray]],
        *,
        limit: int = 10,
        per_path_limit: int | None = None,
        weights: Sequence[float] | None = None,
        rrf_k: int = 60,
        filters: LookFilter | None = None,
    ) -> list[SearchHit]: ...
    def matching_ids(self, look_ids: Sequence[str], filters: LookFilter) -> set[str]: ...
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
    ) -> list[ScoredLook]: ...
    def scroll(
        self,
        filters: LookFilter | None = None,
        *,
        cursor: str | None = None,
        limit: int = 100,
        order: str = "id",
    ) -> ScrollPage: ...
    def iter_looks(self, filters: LookFilter | None = None, *, page_size: int = 256) -> Iterator[LookRecord]: ...
    def count(self, filters: LookFilter | None = None) -> int: ...
    def update_look(
        self,
        look_id: str,
        changes: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        curated: bool = True,
    ) -> LookRecord: ...
    def delete(self, look_id: str) -> bool: ...
    def stats(self) -> LibraryStats: ...
    def existing_ids(self, look_ids: Sequence[str]) -> set[str]: ...
    def ids_with_content(self, sha256s: Sequence[str]) -> dict[str, str]: ...
    def begin_rebuild(
        self, model_version: str, dims: VectorDims | tuple[int, int] | None = None, *, fresh: bool = False
    ) -> RebuildWriter: ...
    def promote(self, model_version: str) -> None: ...
    def optimize(self) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
