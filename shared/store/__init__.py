"""The look store: the look library in Qdrant, embedded (Qdrant Edge) or on a server (qdrant-client).

`open_store(settings)` picks the backend: Qdrant Edge under `settings.store_dir` unless
`LOOKBOOK_QDRANT_URL` is set. Both implement the `LookStore` protocol of shared.store.model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.store.base import LookStoreBase, LookStoreRebuild
from shared.store.edge import EdgeLookStore
from shared.store.model import (
    BOTTOM,
    BOTTOM_COMPAT,
    SEARCHABLE,
    STATUSES,
    TOP,
    TOP_COMPAT,
    VECTOR_NAMES,
    InvalidLookError,
    LibraryStats,
    LookFilter,
    LookNotFoundError,
    LookPoint,
    LookRecord,
    LookStore,
    Mmr,
    RebuildWriter,
    ScoredLook,
    ScrollPage,
    SearchHit,
    StaleVersionError,
    Status,
    StoreError,
    StoreUnavailableError,
    VectorDims,
    look_id_for,
    look_id_for_sha256,
)

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = [
    "BOTTOM",
    "BOTTOM_COMPAT",
    "SEARCHABLE",
    "STATUSES",
    "TOP",
    "TOP_COMPAT",
    "VECTOR_NAMES",
    "EdgeLookStore",
    "InvalidLookError",
    "LibraryStats",
    "LookFilter",
    "LookNotFoundError",
    "LookPoint",
    "LookRecord",
    "LookStore",
    "LookStoreBase",
    "LookStoreRebuild",
    "Mmr",
    "RebuildWriter",
    "ScoredLook",
    "ScrollPage",
    "SearchHit",
    "StaleVersionError",
    "Status",
    "StoreError",
    "StoreUnavailableError",
    "VectorDims",
    "look_id_for",
    "look_id_for_sha256",
    "open_store",
]


def open_store(settings: Settings) -> LookStoreBase:
    """Opens the look store the settings name; call ensure(model_version, dims) before reading or writing.

    Raises StoreUnavailableError when the Qdrant server at LOOKBOOK_QDRANT_URL cannot be reached, or
    the embedded store directory is held by another process.
    """
    if settings.qdrant_url:
        from shared.store.server import ServerLookStore

        return ServerLookStore.from_settings(settings)
    return EdgeLookStore(
        settings.store_dir,
        collection=settings.collection,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_construct=settings.hnsw_ef_construct,
        hnsw_ef=settings.hnsw_ef,
    )
