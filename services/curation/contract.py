"""Conversions between the curation desk's records and the CurationService protobuf messages."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import quote

from google.protobuf.timestamp_pb2 import Timestamp
from lookbook.common.v1 import garment_pb2
from lookbook.curation.v1 import curation_pb2

from services.curation.imports import ImportJobView
from services.curation.ledger import AuditEvent
from shared.settings import Settings
from shared.store.model import LibraryStats, LookRecord

STATUS_TO_PROTO: dict[str, int] = {
    "pending": garment_pb2.LOOK_STATUS_PENDING,
    "approved": garment_pb2.LOOK_STATUS_APPROVED,
    "rejected": garment_pb2.LOOK_STATUS_REJECTED,
    "featured": garment_pb2.LOOK_STATUS_FEATURED,
}
PROTO_TO_STATUS: dict[int, str] = {v: k for k, v in STATUS_TO_PROTO.items()}

SORT_FROM_PROTO: dict[int, str] = {
    curation_pb2.LOOK_SORT_CREATED_DESC: "created_desc",
    curation_pb2.LOOK_SORT_CREATED_ASC: "created_asc",
    curation_pb2.LOOK_SORT_QUALITY_DESC: "quality_desc",
    curation_pb2.LOOK_SORT_QUALITY_ASC: "quality_asc",
    curation_pb2.LOOK_SORT_UPDATED_DESC: "updated_desc",
}

IMPORT_STATE_TO_PROTO: dict[str, int] = {
    "queued": curation_pb2.IMPORT_STATE_QUEUED,
    "running": curation_pb2.IMPORT_STATE_RUNNING,
    "succeeded": curation_pb2.IMPORT_STATE_SUCCEEDED,
    "failed": curation_pb2.IMPORT_STATE_FAILED,
}

ImageUrl = Callable[[LookRecord], str]


def default_image_url(settings: Settings) -> ImageUrl:
    """URL of a look image served by the all-in-one HTTP app from the images directory."""

    def url(look: LookRecord) -> str:
        path = look.image_path
        try:
            from pathlib import Path

            path = str(Path(path).resolve().relative_to(settings.images_dir.resolve()))
        except ValueError:
            pass
        return f"{settings.base_url}/images/{quote(path.lstrip('/'))}"

    return url


def timestamp(epoch_s: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(epoch_s * 1e9))
    return ts


def _box(box: tuple[float, float, float, float] | None) -> garment_pb2.Box | None:
    if box is None:
        return None
    x0, y0, x1, y1 = box
    return garment_pb2.Box(x0=x0, y0=y0, x1=x1, y1=y1)


def _colors(colors: dict[str, list[str]] | list[str]) -> list[str]:
    if isinstance(colors, dict):
        words: list[str] = []
        for values in colors.values():
            words += [c for c in values if c not in words]
        return words
    return list(colors)


def look_to_proto(look: LookRecord, image_url: ImageUrl) -> garment_pb2.Look:
    message = garment_pb2.Look(
        look_id=look.look_id,
        image_uri=image_url(look),
        tags=look.tags,
        colors=_colors(look.colors),
        source=look.source,
        attribution=look.attribution,
        quality_score=look.quality_score,
        quality_reasons=look.quality_reasons,
        status=STATUS_TO_PROTO.get(look.status, garment_pb2.LOOK_STATUS_UNSPECIFIED),  # type: ignore[arg-type]
        model_version=look.model_version,
        created_at=timestamp(look.created_at),
        updated_at=timestamp(look.updated_at),
        version=look.version,
        width=look.width,
        height=look.height,
    )
    if (top := _box(look.top_box)) is not None:
        message.top_box.CopyFrom(top)
    if (bottom := _box(look.bottom_box)) is not None:
        message.bottom_box.CopyFrom(bottom)
    return message


def job_to_proto(job: ImportJobView) -> curation_pb2.ImportJob:
    return curation_pb2.ImportJob(
        job_id=job.job_id,
        source=job.source,
        state=IMPORT_STATE_TO_PROTO.get(job.state, curation_pb2.IMPORT_STATE_UNSPECIFIED),  # type: ignore[arg-type]
        total=job.total,
        processed=job.processed,
        imported=job.imported,
        skipped=job.skipped,
        failed=job.failed,
        error=job.error,
        requested_by=job.requested_by,
        created_at=timestamp(job.created_at),
        updated_at=timestamp(job.updated_at),
    )


def stats_to_proto(stats: LibraryStats) -> curation_pb2.LibraryStatsResponse:
    return curation_pb2.LibraryStatsResponse(
        total=stats.total,
        by_status=[
            curation_pb2.StatusCount(status=STATUS_TO_PROTO[s], count=stats.by_status.get(s, 0))  # type: ignore[arg-type]
            for s in STATUS_TO_PROTO
        ],
        by_source=[
            curation_pb2.SourceCount(source=source, count=count)
            for source, count in sorted(stats.by_source.items(), key=lambda item: (-item[1], item[0]))
        ],
        quality_histogram=[
            curation_pb2.QualityBin(lower=low, upper=high, count=count) for low, high, count in stats.quality_histogram
        ],
    )


def event_to_proto(event: AuditEvent) -> curation_pb2.AuditEvent:
    return curation_pb2.AuditEvent(
        event_id=event.event_id,
        at=timestamp(event.at),
        editor=event.editor,
        action=event.action,
        look_id=event.look_id,
        before_json=json.dumps(event.before, sort_keys=True),
        after_json=json.dumps(event.after, sort_keys=True),
        reason=event.reason,
        request_id=event.request_id,
    )
