"""The look library's plain functions: read a source, ingest one look, import many, re-embed them all.

The CLI, the all-in-one process and the Celery tasks all call these; nothing here knows how it is
scheduled. Ingestion is idempotent: the look id comes from the image bytes, the stored image is
written atomically, and a re-import keeps what editors decided.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shared.images import ImageRejected
from shared.models.pipeline import Analysis, Kind, KnownGarment
from shared.store import (
    BOTTOM,
    BOTTOM_COMPAT,
    TOP,
    TOP_COMPAT,
    LookPoint,
    LookRecord,
    LookStore,
    VectorDims,
    look_id_for_sha256,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class SourceError(ValueError):
    """A library source (directory or manifest) cannot be read; the message says how to fix it."""


class Analyzer(Protocol):
    """What ingestion needs of the vision service: LocalVision in-process, or a gRPC client."""

    @property
    def model_version(self) -> str: ...

    def analyze_sync(
        self,
        data: bytes,
        *,
        single_garment: bool = False,
        kind_hint: Kind | None = None,
        want_quality: bool = False,
        known: Sequence[KnownGarment] = (),
    ) -> Analysis: ...


@dataclass(frozen=True)
class LookItem:
    """One look image of a source, with what the source says about it."""

    path: Path
    tags: tuple[str, ...] = ()
    source: str = ""
    attribution: str = ""
    known: tuple[KnownGarment, ...] = ()
    # A status the source decides (the curated demo library is approved); None applies the policy.
    status: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestOutcome:
    look_id: str
    status: str
    quality_score: float
    skipped: bool = False


def _box(value: Any) -> tuple[float, float, float, float] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = [float(v) for v in value.replace(";", ",").split(",")]
    if len(value) != 4:
        raise SourceError(f"a box must be four numbers x0,y0,x1,y1, got {value!r}")
    x0, y0, x1, y1 = (float(v) for v in value)
    return (x0, y0, x1, y1)


def _known(record: dict[str, Any]) -> tuple[KnownGarment, ...]:
    found = []
    for kind, keys in (("top", ("top_box", "upper_box_xyxy")), ("bottom", ("bottom_box", "lower_box_xyxy"))):
        for key in keys:
            if (box := _box(record.get(key))) is not None:
                found.append(KnownGarment(kind=kind, box=box))  # type: ignore[arg-type]
                break
    return tuple(found)


def _tags(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.replace(";", ",").split(",")
    return tuple(sorted({str(t).strip().lower() for t in value or () if str(t).strip()}))


def read_source(source: str | Path) -> list[LookItem]:
    """Lists the looks of a source, in a stable order.

    A source is one of:
    - a directory: every JPEG/PNG/WebP below it;
    - a `looks.json` in the ../shared/data layout ({"looks": {id: {image, upper_box_xyxy, ...}}});
    - a JSON manifest: a list of {"image": path, "tags": [...], "source", "attribution",
      "top_box", "bottom_box", "status"} (paths relative to the manifest);
    - a CSV manifest with an `image` column and optional tags (comma or semicolon separated),
      source, attribution, top_box, bottom_box, status columns.
    """
    path = Path(source)
    if not path.exists():
        raise SourceError(f"{path} does not exist: pass a directory of images, a looks.json, or a manifest")
    if path.is_dir():
        if (path / "looks.json").is_file():
            return read_source(path / "looks.json")
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        return [LookItem(path=p, source=path.name) for p in files]
    base = path.parent
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="") as handle:
                rows: list[dict[str, Any]] = list(csv.DictReader(handle))
        elif path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict) and "looks" in data:
                rows = [dict(rec, _id=key) for key, rec in sorted(data["looks"].items())]
            elif isinstance(data, list):
                rows = data
            else:
                raise SourceError(f"{path}: expected a list of looks or {{'looks': {{...}}}}")
        else:
            raise SourceError(f"{path}: a manifest must be .json or .csv")
    except (OSError, ValueError, csv.Error) as exc:
        if isinstance(exc, SourceError):
            raise
        raise SourceError(f"{path} cannot be read ({exc}): fix the file and retry") from None
    items = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not row.get("image"):
            raise SourceError(f"{path}: entry {number} has no 'image' path")
        tags = _tags(row.get("tags", ()))
        for key in ("upper_labels", "lower_labels", "full_labels"):
            tags = tuple(sorted(set(tags) | set(_tags(row.get(key, ())))))
        status = row.get("status") or None
        if status is not None and status not in ("pending", "approved", "rejected", "featured"):
            raise SourceError(f"{path}: entry {number} has unknown status {status!r}")
        items.append(
            LookItem(
                path=(base / str(row["image"])).resolve(),
                tags=tags,
                source=str(row.get("source") or path.parent.name),
                attribution=str(row.get("attribution") or ""),
                known=_known(row),
                status=status,
            )
        )
    return items


def _stored_name(look_id: str, data: bytes) -> str:
    suffix = {b"\x89PNG": ".png", b"RIFF": ".webp"}.get(data[:4], ".jpg")
    return f"{look_id}{suffix}"


def store_image(images_dir: Path, name: str, data: bytes) -> None:
    """Writes the look image once, atomically, so a crash never leaves a half-written file."""
    target = images_dir / name
    if target.exists():
        return
    images_dir.mkdir(parents=True, exist_ok=True)
    tmp = images_dir / f".{name}.{uuid.uuid4().hex}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, target)


def vector_dims(analyzer_dims: tuple[int, int]) -> VectorDims:
    appearance, compat = analyzer_dims
    # The compat vectors exist in the schema from the start; a library without that model leaves them empty.
    return VectorDims(appearance=appearance, compat=max(1, compat))


def look_point(
    look_id: str,
    image_name: str,
    analysis: Analysis,
    item: LookItem,
    *,
    status: str,
    sha256: str,
) -> LookPoint:
    top, bottom = analysis.garment("top"), analysis.garment("bottom")
    vectors: dict[str, np.ndarray] = {}
    colors: dict[str, list[str]] = {}
    for garment, appearance, compat in ((top, TOP, TOP_COMPAT), (bottom, BOTTOM, BOTTOM_COMPAT)):
        if garment is None:
            continue
        vectors[appearance] = garment.embedding
        if garment.compat is not None and garment.compat.size:
            vectors[compat] = garment.compat
        colors[garment.kind] = list(garment.colors)
    given = {k.kind for k in item.known}
    record = LookRecord(
        look_id=look_id,
        image_path=image_name,
        width=analysis.width,
        height=analysis.height,
        top_box=top.box if top else None,
        bottom_box=bottom.box if bottom else None,
        tags=list(item.tags),
        colors=colors,
        source=item.source,
        attribution=item.attribution,
        quality_score=float(analysis.quality_score if analysis.quality_score is not None else 0.0),
        quality_reasons=list(analysis.quality_reasons),
        status=status,  # type: ignore[arg-type]
        model_version=analysis.model_version,
        content_sha256=sha256,
        extra={"given_boxes": sorted(given), **item.extra},
    )
    return LookPoint(record=record, vectors=vectors)


def decide_status(item: LookItem, quality: float | None, auto_approve_quality: float) -> str:
    """The source's status if it names one; else approved at or above the auto-approve bar, else pending."""
    if item.status:
        return item.status
    if quality is not None and auto_approve_quality < 1.0 and quality >= auto_approve_quality:
        return "approved"
    return "pending"


def ingest_look(
    item: LookItem,
    *,
    analyzer: Analyzer,
    store: LookStore,
    images_dir: Path,
    auto_approve_quality: float,
    max_image_bytes: int,
    skip_existing: bool = True,
) -> IngestOutcome:
    """Validates, scores, analyzes and upserts one look. Raises ImageRejected for a bad image.

    Safe to repeat: the same bytes give the same id, the image file is written once, and the
    store merges a re-import without touching curation.
    """
    try:
        size = item.path.stat().st_size
        if size > max_image_bytes:
            raise ImageRejected(f"{item.path} is {size / 2**20:.1f} MB, above LOOKBOOK_MAX_IMAGE_BYTES: downscale it")
        data = item.path.read_bytes()
    except FileNotFoundError:
        raise ImageRejected(f"{item.path} does not exist: fix the source or remove the entry") from None
    except PermissionError:
        raise ImageRejected(f"{item.path} is not readable: fix its permissions") from None
    except OSError as exc:  # a directory, a broken link, an I/O error of the file itself
        raise ImageRejected(f"{item.path} could not be read ({exc.strerror or exc}): fix or remove it") from None
    sha256 = hashlib.sha256(data).hexdigest()
    look_id = look_id_for_sha256(sha256)
    if skip_existing and (existing := store.get(look_id)) is not None:
        return IngestOutcome(look_id, existing.status, existing.quality_score, skipped=True)
    analysis = analyzer.analyze_sync(data, known=item.known, want_quality=True)
    status = decide_status(item, analysis.quality_score, auto_approve_quality)
    name = _stored_name(look_id, data)
    store_image(images_dir, name, data)
    store.upsert([look_point(look_id, name, analysis, item, status=status, sha256=sha256)])
    return IngestOutcome(look_id, status, float(analysis.quality_score or 0.0))


@dataclass
class ImportReport:
    added: int = 0
    skipped: int = 0
    rejected: dict[str, str] = field(default_factory=dict)  # path -> reason


def import_looks(
    items: Iterable[LookItem],
    *,
    analyzer: Analyzer,
    store: LookStore,
    images_dir: Path,
    auto_approve_quality: float,
    max_image_bytes: int,
    progress: Callable[[IngestOutcome | None], None] | None = None,
) -> ImportReport:
    """Ingests every item; a bad image is reported with its reason and the rest go on."""
    report = ImportReport()
    for item in items:
        outcome: IngestOutcome | None = None
        try:
            outcome = ingest_look(
                item,
                analyzer=analyzer,
                store=store,
                images_dir=images_dir,
                auto_approve_quality=auto_approve_quality,
                max_image_bytes=max_image_bytes,
            )
        except ImageRejected as exc:
            report.rejected[str(item.path)] = str(exc)
            log.warning("look rejected", extra={"path": str(item.path), "reason": str(exc)})
        else:
            if outcome.skipped:
                report.skipped += 1
            else:
                report.added += 1
        if progress:
            progress(outcome)
    if report.added:
        # Qdrant Edge builds its HNSW index only when asked; a bulk import is the moment.
        store.optimize()
    return report


def reembed_library(
    store: LookStore,
    *,
    analyzer: Analyzer,
    images_dir: Path,
    dims: VectorDims,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 32,
) -> int:
    """Builds the analyzer's model version of the library from the stored images, then swaps it live.

    Readers keep searching the old version until the swap. Boxes a person gave are kept; detected
    ones are detected again by the new models. Resumable: looks already rebuilt are skipped.
    """
    version = analyzer.model_version
    writer = store.begin_rebuild(version, dims)
    looks = [look for look in _all_looks(store)]
    done_ids = writer.existing_ids([look.look_id for look in looks])
    total, done = len(looks), 0
    pending: list[LookPoint] = []
    for look in looks:
        done += 1
        if look.look_id in done_ids:
            continue
        given = set(look.extra.get("given_boxes", []))
        known = tuple(
            KnownGarment(kind=kind, box=box)  # type: ignore[arg-type]
            for kind, box in (("top", look.top_box), ("bottom", look.bottom_box))
            if kind in given and box is not None
        )
        data = (images_dir / look.image_path).read_bytes()
        analysis = analyzer.analyze_sync(data, known=known, want_quality=True)
        item = LookItem(
            path=images_dir / look.image_path,
            tags=tuple(look.tags),
            source=look.source,
            attribution=look.attribution,
            known=known,
            extra={},
        )
        point = look_point(
            look.look_id, look.image_path, analysis, item, status=look.status, sha256=look.content_sha256
        )
        pending.append(point)
        if len(pending) >= batch:
            writer.upsert(pending)
            pending = []
        if progress:
            progress(done, total)
    if pending:
        writer.upsert(pending)
    writer.promote()
    return total


def _all_looks(store: LookStore) -> list[LookRecord]:
    looks: list[LookRecord] = []
    cursor: str | None = None
    while True:
        page = store.scroll(None, cursor=cursor, limit=256)
        looks.extend(page.looks)
        if page.next_cursor is None:
            return looks
        cursor = page.next_cursor
