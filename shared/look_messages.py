"""The common `Look` message built from a look record, for every service that returns looks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from google.protobuf.timestamp_pb2 import Timestamp
from lookbook.common.v1 import garment_pb2

from shared.settings import Settings
from shared.store.model import LookRecord

STATUS_TO_PROTO: dict[str, int] = {
    "pending": garment_pb2.LOOK_STATUS_PENDING,
    "approved": garment_pb2.LOOK_STATUS_APPROVED,
    "rejected": garment_pb2.LOOK_STATUS_REJECTED,
    "featured": garment_pb2.LOOK_STATUS_FEATURED,
}
PROTO_TO_STATUS: dict[int, str] = {v: k for k, v in STATUS_TO_PROTO.items()}

ImageUrl = Callable[[LookRecord], str]


def default_image_url(settings: Settings) -> ImageUrl:
    """URL of a look image served by the all-in-one HTTP app from the images directory."""

    def url(look: LookRecord) -> str:
        path = look.image_path
        with contextlib.suppress(ValueError):  # already relative to the images directory
            path = str(Path(path).resolve().relative_to(settings.images_dir.resolve()))
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
