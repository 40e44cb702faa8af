"""Conversions between the curation desk's records and the CurationService protobuf messages."""

from __future__ import annotations

import json

from lookbook.curation.v1 import curation_pb2

from services.curation.imports import ImportJobView
from services.curation.ledger import AuditEvent
from shared.look_messages import (  # noqa: F401 - re-exported for the curation service
    PROTO_TO_STATUS,
    STATUS_TO_PROTO,
    ImageUrl,
    default_image_url,
    look_to_proto,
    timestamp,
)
from shared.store.model import LibraryStats

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
