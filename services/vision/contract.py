"""Conversion between the vision pipeline's results and the VisionService messages, both directions."""

from __future__ import annotations

import numpy as np
from lookbook.common.v1 import garment_pb2
from lookbook.vision.v1 import vision_pb2

from shared.models.pipeline import Analysis, BoxXYXY, FoundGarment, Kind, KnownGarment

KIND_TO_PROTO: dict[str, garment_pb2.GarmentKind.ValueType] = {
    "top": garment_pb2.GARMENT_KIND_TOP,
    "bottom": garment_pb2.GARMENT_KIND_BOTTOM,
    "full_body": garment_pb2.GARMENT_KIND_FULL_BODY,
    "other": garment_pb2.GARMENT_KIND_OTHER,
}
PROTO_TO_KIND: dict[int, Kind] = {
    garment_pb2.GARMENT_KIND_TOP: "top",
    garment_pb2.GARMENT_KIND_BOTTOM: "bottom",
    garment_pb2.GARMENT_KIND_FULL_BODY: "full_body",
    garment_pb2.GARMENT_KIND_OTHER: "other",
}


def box_to_proto(box: BoxXYXY) -> garment_pb2.Box:
    return garment_pb2.Box(x0=box[0], y0=box[1], x1=box[2], y1=box[3])


def box_from_proto(box: garment_pb2.Box) -> BoxXYXY:
    return (box.x0, box.y0, box.x1, box.y1)


def garment_to_proto(garment: FoundGarment) -> garment_pb2.Garment:
    return garment_pb2.Garment(
        kind=KIND_TO_PROTO[garment.kind],
        box=box_to_proto(garment.box),
        confidence=garment.confidence,
        embedding=garment.embedding.tolist(),
        compat_embedding=[] if garment.compat is None else garment.compat.tolist(),
        colors=garment.colors,
    )


def analysis_to_proto(analysis: Analysis) -> vision_pb2.AnalyzeResponse:
    response = vision_pb2.AnalyzeResponse(
        garments=[garment_to_proto(g) for g in analysis.garments],
        model_version=analysis.model_version,
        width=analysis.width,
        height=analysis.height,
    )
    if analysis.quality_score is not None:
        response.quality.score = analysis.quality_score
        response.quality.reasons.extend(analysis.quality_reasons)
    return response


def analysis_from_proto(response: vision_pb2.AnalyzeResponse) -> Analysis:
    garments = [
        FoundGarment(
            kind=PROTO_TO_KIND.get(g.kind, "other"),
            box=box_from_proto(g.box),
            confidence=g.confidence,
            embedding=np.asarray(g.embedding, dtype=np.float32),
            compat=np.asarray(g.compat_embedding, dtype=np.float32) if g.compat_embedding else None,
            colors=list(g.colors),
        )
        for g in response.garments
    ]
    return Analysis(
        garments=garments,
        width=response.width,
        height=response.height,
        model_version=response.model_version,
        quality_score=response.quality.score if response.HasField("quality") else None,
        quality_reasons=list(response.quality.reasons),
    )


def known_from_proto(garments: list[garment_pb2.Garment]) -> list[KnownGarment]:
    return [
        KnownGarment(kind=PROTO_TO_KIND[g.kind], box=box_from_proto(g.box)) for g in garments if g.kind in PROTO_TO_KIND
    ]


def known_to_proto(known: list[KnownGarment]) -> list[garment_pb2.Garment]:
    return [garment_pb2.Garment(kind=KIND_TO_PROTO[k.kind], box=box_to_proto(k.box), confidence=1.0) for k in known]
