"""VisionService: decodes a photo, finds its garments and embeds them, behind gRPC.

`LocalVision` is the same work called in-process, which the all-in-one gateway uses to skip a hop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
from lookbook.vision.v1 import vision_pb2, vision_pb2_grpc

from services.vision.contract import PROTO_TO_KIND, analysis_to_proto, known_from_proto
from shared.grpc_runtime import add_health_and_reflection, bind, new_server
from shared.images import ImageLimits, ImageRejected, decode_image
from shared.models.pipeline import Analysis, Kind, KnownGarment, VisionPipeline
from shared.settings import Settings

log = logging.getLogger(__name__)
SERVICE_NAME = vision_pb2.DESCRIPTOR.services_by_name["VisionService"].full_name


def limits_from(settings: Settings) -> ImageLimits:
    return ImageLimits(
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        min_side=settings.min_image_side,
    )


class LocalVision:
    """Decode + analyze on a thread pool, so the event loop never blocks on torch."""

    def __init__(self, pipeline: VisionPipeline, settings: Settings, executor: ThreadPoolExecutor | None = None):
        self.pipeline = pipeline
        self.limits = limits_from(settings)
        self.executor = executor or ThreadPoolExecutor(max_workers=settings.grpc_workers, thread_name_prefix="vision")

    @property
    def model_version(self) -> str:
        return self.pipeline.model_version

    def analyze_sync(
        self,
        data: bytes,
        *,
        single_garment: bool = False,
        kind_hint: Kind | None = None,
        want_quality: bool = False,
        known: Sequence[KnownGarment] = (),
    ) -> Analysis:
        image = decode_image(data, self.limits)
        return self.pipeline.analyze(
            image, known=known, single_garment=single_garment, kind_hint=kind_hint, want_quality=want_quality
        )

    async def analyze(
        self,
        data: bytes,
        *,
        single_garment: bool = False,
        kind_hint: Kind | None = None,
        want_quality: bool = False,
        known: Sequence[KnownGarment] = (),
        timeout: float | None = None,
    ) -> Analysis:
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(
            self.executor,
            lambda: self.analyze_sync(
                data,
                single_garment=single_garment,
                kind_hint=kind_hint,
                want_quality=want_quality,
                known=known,
            ),
        )
        return await asyncio.wait_for(work, timeout)


class VisionServicer(vision_pb2_grpc.VisionServiceServicer):
    def __init__(self, vision: LocalVision):
        self.vision = vision

    async def _analyze_one(self, request: vision_pb2.AnalyzeRequest, timeout: float | None) -> Analysis:
        return await self.vision.analyze(
            request.image,
            single_garment=request.single_garment,
            kind_hint=PROTO_TO_KIND.get(request.kind_hint),
            want_quality=request.want_quality,
            known=known_from_proto(list(request.known_garments)),
            timeout=timeout,
        )

    async def Analyze(
        self, request: vision_pb2.AnalyzeRequest, context: grpc.aio.ServicerContext
    ) -> vision_pb2.AnalyzeResponse:
        try:
            analysis = await self._analyze_one(request, context.time_remaining())
        except ImageRejected as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "analysis did not finish before the deadline: retry with a longer deadline or a smaller photo",
            )
        return analysis_to_proto(analysis)

    async def AnalyzeBatch(
        self, request: vision_pb2.AnalyzeBatchRequest, context: grpc.aio.ServicerContext
    ) -> vision_pb2.AnalyzeBatchResponse:
        results = []
        for item in request.requests:
            try:
                analysis = await self._analyze_one(item, context.time_remaining())
                results.append(vision_pb2.AnalyzeResult(response=analysis_to_proto(analysis)))
            except ImageRejected as exc:
                results.append(
                    vision_pb2.AnalyzeResult(error=vision_pb2.AnalyzeError(code="INVALID_ARGUMENT", message=str(exc)))
                )
            except TimeoutError:
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "the batch did not finish before the deadline: send fewer images per call or a longer deadline",
                )
        return vision_pb2.AnalyzeBatchResponse(results=results)


def build_server(settings: Settings, vision: LocalVision, port: int | None = None):  # type: ignore[no-untyped-def]
    """Returns (server, health servicer, bound port, service names); start it with `await server.start()`."""
    server = new_server(settings)
    vision_pb2_grpc.add_VisionServiceServicer_to_server(VisionServicer(vision), server)
    health = add_health_and_reflection(server, [SERVICE_NAME])
    bound = bind(server, settings, settings.vision_port if port is None else port)
    return server, health, bound, [SERVICE_NAME]
