"""The curation desk: every editor action on the library, checked, versioned and written to the audit log.

The gRPC service and the web console are thin layers over this one class, so both enforce the same
rules: a change names the look version it is based on, and every change leaves an audit event.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.curation.imports import ImportJobNotFoundError, ImportJobs, ImportJobView, NoImportJobs
from services.curation.ledger import AuditEvent, Ledger
from shared.settings import Settings
from shared.store.model import (
    STATUSES,
    InvalidLookError,
    LibraryStats,
    LookFilter,
    LookNotFoundError,
    LookRecord,
    LookStore,
    StaleVersionError,
)

log = logging.getLogger(__name__)

SORTS: dict[str, str] = {
    "created_desc": "-created_at",
    "created_asc": "created_at",
    "quality_desc": "-quality_score",
    "quality_asc": "quality_score",
    "updated_desc": "-updated_at",
}
DEFAULT_PAGE = 50
MAX_PAGE = 500
MAX_TAGS = 50
TAG = re.compile(r"^[a-z0-9][a-z0-9 _&'-]{0,47}$")
MAX_REASON = 500
# Why a look is bad, in the quality filter's words (shared/models/quality.py REASONS); a reason naming
# them becomes a training label reason in `lookbook curation export-labels`.
REJECT_REASONS: tuple[str, ...] = ("too_dark", "too_blurry", "low_resolution", "not_full_body", "not_a_look")


# Striped locks: changes to one look from the console and gRPC in this process run one at a time, so the
# version check, the write and the audit event of one change are never interleaved with another's.
_LOCKS = tuple(threading.Lock() for _ in range(64))


def _look_lock(look_id: str) -> threading.Lock:
    return _LOCKS[zlib.crc32(look_id.strip().lower().encode()) % len(_LOCKS)]


class CurationInputError(ValueError):
    """A request is malformed; the message names the field and what to send instead."""


@dataclass(frozen=True)
class LookQuery:
    """Filters, order and cursor of a look listing; an empty field means no filter."""

    statuses: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    source: str = ""
    min_quality: float | None = None
    max_quality: float | None = None
    sort: str = "created_desc"
    page_size: int = DEFAULT_PAGE
    cursor: str = ""

    def checked(self) -> LookQuery:
        bad = [s for s in self.statuses if s not in STATUSES]
        if bad:
            raise CurationInputError(f"status {bad[0]!r} is unknown: use one of {', '.join(STATUSES)}")
        if self.sort not in SORTS:
            raise CurationInputError(f"sort {self.sort!r} is unknown: use one of {', '.join(SORTS)}")
        for name in ("min_quality", "max_quality"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise CurationInputError(f"{name} must be within [0, 1], got {value}")
        if self.min_quality is not None and self.max_quality is not None and self.min_quality > self.max_quality:
            raise CurationInputError("min_quality must not exceed max_quality")
        if not 0 <= self.page_size <= MAX_PAGE:
            raise CurationInputError(f"page_size must be within 0..{MAX_PAGE} (0 means {DEFAULT_PAGE})")
        return self

    def store_filter(self) -> LookFilter:
        return LookFilter(
            statuses=self.statuses or None,
            tags=self.tags,
            sources=(self.source,) if self.source else (),
            min_quality=self.min_quality or 0.0,
        )


@dataclass(frozen=True)
class LookPage:
    looks: list[LookRecord]
    next_cursor: str
    total: int


@dataclass(frozen=True)
class BulkResult:
    """The outcome of one look in a bulk action: the new record, or why it was refused."""

    look_id: str
    look: LookRecord | None = None
    error: str = ""
    conflict: bool = False


def normalize_tags(tags: Sequence[str]) -> list[str]:
    """Tags lower-cased, trimmed and de-duplicated in order; raises CurationInputError on a bad one."""
    seen: list[str] = []
    for raw in tags:
        tag = " ".join(str(raw).strip().lower().split())
        if not tag:
            continue
        if not TAG.match(tag):
            raise CurationInputError(
                f"tag {raw!r} is not allowed: use up to 48 letters, digits, spaces, '-', '_', '&' or an apostrophe"
            )
        if tag not in seen:
            seen.append(tag)
    if len(seen) > MAX_TAGS:
        raise CurationInputError(f"a look may carry at most {MAX_TAGS} tags, got {len(seen)}")
    return seen


def _reason(reason: str) -> str:
    reason = reason.strip()
    if len(reason) > MAX_REASON:
        raise CurationInputError(f"the reason is {len(reason)} characters long: keep it under {MAX_REASON}")
    return reason


def _require_version(look_id: str, expected_version: int | None) -> int:
    if expected_version is None or expected_version < 0:
        raise CurationInputError(
            f"expected_version is required for look {look_id}: send the version from GetLook or ListLooks"
        )
    return expected_version


def curation_state(look: LookRecord) -> dict[str, Any]:
    """The fields of a look an audit event records in full (everything but vectors)."""
    return {
        "status": look.status,
        "tags": list(look.tags),
        "source": look.source,
        "quality_score": look.quality_score,
        "quality_reasons": list(look.quality_reasons),
        "image_path": look.image_path,
        "version": look.version,
    }


class CurationDesk:
    """Editor actions on a look store, with optimistic concurrency and an audit event per change."""

    def __init__(self, settings: Settings, store: LookStore, ledger: Ledger, jobs: ImportJobs | None = None) -> None:
        self.settings = settings
        self.store = store
        self.ledger = ledger
        self.jobs: ImportJobs = jobs or NoImportJobs()

    # ------------------------------------------------------------------ reads

    def list_looks(self, query: LookQuery) -> LookPage:
        query = query.checked()
        size = query.page_size or DEFAULT_PAGE
        base = query.store_filter()
        order = SORTS[query.sort]
        cursor: str | None = query.cursor or None
        looks: list[LookRecord] = []
        # The store filters everything but the upper quality bound; looks above it are skipped here, and
        # each store page asks only for what is still missing, so no look is skipped past the cursor.
        while len(looks) < size:
            page = self.store.scroll(base, cursor=cursor, limit=size - len(looks), order=order)
            looks += [look for look in page.looks if self._below_max(look, query.max_quality)]
            cursor = page.next_cursor
            if not cursor or not page.looks:
                cursor = None
                break
        return LookPage(looks=looks, next_cursor=cursor or "", total=self._count(base, query.max_quality))

    @staticmethod
    def _below_max(look: LookRecord, max_quality: float | None) -> bool:
        return max_quality is None or look.quality_score <= max_quality

    def _count(self, base: LookFilter, max_quality: float | None) -> int:
        total = self.store.count(base)
        if max_quality is None or max_quality >= 1.0:
            return total
        above = LookFilter(
            statuses=base.statuses,
            tags=base.tags,
            sources=base.sources,
            min_quality=math.nextafter(max_quality, math.inf),
        )
        return max(0, total - self.store.count(above))

    def get_look(self, look_id: str) -> LookRecord:
        look = self.store.get(look_id)
        if look is None:
            raise LookNotFoundError(f"no look {look_id} in the library: list looks to find its id")
        return look

    def stats(self) -> LibraryStats:
        return self.store.stats()

    def events(self, **filters: Any) -> list[AuditEvent]:
        return self.ledger.events(**filters)

    # ------------------------------------------------------------------ changes

    def set_status(
        self,
        editor: str,
        look_id: str,
        status: str,
        expected_version: int | None,
        *,
        reason: str = "",
        request_id: str = "",
    ) -> LookRecord:
        if status not in STATUSES:
            raise CurationInputError(f"status {status!r} is unknown: use one of {', '.join(STATUSES)}")
        return self._change(
            editor,
            "set_status",
            look_id,
            {"status": status},
            expected_version,
            reason=reason,
            request_id=request_id,
        )

    def update_tags(
        self,
        editor: str,
        look_id: str,
        tags: Sequence[str],
        expected_version: int | None,
        *,
        reason: str = "",
        request_id: str = "",
    ) -> LookRecord:
        return self._change(
            editor,
            "update_tags",
            look_id,
            {"tags": normalize_tags(tags)},
            expected_version,
            reason=reason,
            request_id=request_id,
        )

    def _change(
        self,
        editor: str,
        action: str,
        look_id: str,
        changes: dict[str, Any],
        expected_version: int | None,
        *,
        reason: str,
        request_id: str,
    ) -> LookRecord:
        expected = _require_version(look_id, expected_version)
        reason = _reason(reason)
        with _look_lock(look_id):
            before = self.get_look(look_id)
            if before.version != expected:
                raise StaleVersionError(before.look_id, expected, before.version)
            # The store compares the version again atomically, so a change from another process still fails.
            after = self.store.update_look(before.look_id, changes, expected_version=expected, curated=True)
            self._audit_change(editor, action, before, after, changes, reason=reason, request_id=request_id)
        log.info(
            "look changed",
            extra={"editor": editor, "action": action, "look_id": after.look_id, "version": after.version},
        )
        return after

    def _audit_change(
        self,
        editor: str,
        action: str,
        before: LookRecord,
        after: LookRecord,
        changes: dict[str, Any],
        *,
        reason: str,
        request_id: str,
    ) -> None:
        self.ledger.append_event(
            editor=editor,
            action=action,
            look_id=after.look_id,
            before={**{k: getattr(before, k) for k in changes}, "version": before.version},
            after={**{k: getattr(after, k) for k in changes}, "version": after.version},
            reason=reason,
            request_id=request_id,
            decision=(str(self.image_file(after)), after.status) if "status" in changes else None,
        )

    def set_status_many(
        self,
        editor: str,
        items: Sequence[tuple[str, int]],
        status: str,
        *,
        reason: str = "",
        request_id: str = "",
    ) -> list[BulkResult]:
        """One change per look; a stale or missing look fails alone and the others still apply."""
        results = []
        for look_id, version in items:
            try:
                look = self.set_status(editor, look_id, status, version, reason=reason, request_id=request_id)
                results.append(BulkResult(look_id=look_id, look=look))
            except StaleVersionError as exc:
                results.append(BulkResult(look_id=look_id, error=str(exc), conflict=True))
            except (LookNotFoundError, InvalidLookError, CurationInputError) as exc:
                results.append(BulkResult(look_id=look_id, error=str(exc)))
        return results

    def delete_look(
        self,
        editor: str,
        look_id: str,
        expected_version: int | None,
        *,
        reason: str = "",
        request_id: str = "",
    ) -> str:
        expected = _require_version(look_id, expected_version)
        reason = _reason(reason)
        with _look_lock(look_id):
            before = self.get_look(look_id)
            if before.version != expected:
                raise StaleVersionError(before.look_id, expected, before.version)
            # The store has no conditional delete: the lock rules out a race within this process, and the
            # version check narrows one with another process (a scale-out replica) to a single call.
            if not self.store.delete(before.look_id):
                raise LookNotFoundError(f"no look {look_id} in the library: it was deleted meanwhile")
            self.ledger.append_event(
                editor=editor,
                action="delete_look",
                look_id=before.look_id,
                before=curation_state(before),
                after={},
                reason=reason,
                request_id=request_id,
            )
        log.info("look deleted", extra={"editor": editor, "look_id": before.look_id})
        return before.look_id

    # ------------------------------------------------------------------ imports

    def start_import(self, editor: str, source: str, *, request_id: str = "") -> ImportJobView:
        source = source.strip()
        if not source:
            raise CurationInputError("source is empty: give a directory of look images or a looks.json manifest")
        job = self.jobs.start(source, requested_by=editor)
        self.ledger.append_event(
            editor=editor,
            action="start_import",
            after={"job_id": job.job_id, "source": job.source},
            request_id=request_id,
        )
        return job

    def import_job(self, job_id: str) -> ImportJobView:
        job = self.jobs.get(job_id)
        if job is None:
            raise ImportJobNotFoundError(f"no import job {job_id}: list recent jobs to find its id")
        return job

    def recent_imports(self, limit: int = 20) -> list[ImportJobView]:
        return self.jobs.recent(limit)

    # ------------------------------------------------------------------ images

    def image_file(self, look: LookRecord) -> Path:
        """The look's image on disk; relative paths are under the images directory (or the data directory)."""
        path = Path(look.image_path)
        if path.is_absolute():
            return path
        for base in (self.settings.images_dir, self.settings.data_dir):
            if (base / path).is_file():
                return (base / path).resolve()
        return (self.settings.images_dir / path).resolve()
