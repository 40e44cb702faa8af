"""VisionService: decodes a photo, finds its garments and embeds them, behind gRPC.

`LocalVision` is the same work called in-process, which the all-in-one gateway uses to skip a hop.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from lookbook.vision.v1 import vision_pb2, vision_pb2_grpc

from services.vision.contract import PROTO_TO_KIND, analysis_to_proto, known_from_proto
from shared.grpc_runtime import add_health_and_reflection, bind, new_server
from shared.images import ImageLimits, ImageRejected, decode_image
from shared.metrics import observe_stage
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


class MissingModelError(RuntimeError):
    """The call needs a model this server does not ship; the message says which."""


class NoGarmentError(ValueError):
    """No garment of the wanted kind was found in a photo."""


def pair_vectors(top: Analysis, bottom: Analysis) -> tuple[Any, Any]:
    """The compatibility vectors of the top photo's top and the bottom photo's bottom."""
    found = []
    for analysis, kind in ((top, "top"), (bottom, "bottom")):
        garment = analysis.garment(kind)  # type: ignore[arg-type]
        if garment is None:
            raise NoGarmentError(
                f"no {kind} found in the {kind} photo: send a photo of one {kind} that fills the frame"
            )
        found.append(garment.compat)
    return found[0], found[1]


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

    def score_pair_sync(self, top_image: bytes, bottom_image: bytes) -> tuple[float, str]:
        """Compatibility in [0, 1] of the top in one photo and the bottom in another, with the model version."""
        compat = self.pipeline.compat
        if compat is None:
            raise MissingModelError(
                "the compatibility model is not installed on this server: ship shared/models/artifacts/compat "
                "(lookbook train compat --data ../shared/data)"
            )
        top = self.analyze_sync(top_image, single_garment=True, kind_hint="top")
        bottom = self.analyze_sync(bottom_image, single_garment=True, kind_hint="bottom")
        top_vec, bottom_vec = pair_vectors(top, bottom)
        return float(compat.score(top_vec, bottom_vec)), self.pipeline.model_version

    async def score_pair(
        self, top_image: bytes, bottom_image: bytes, *, timeout: float | None = None
    ) -> tuple[float, str]:
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self.executor, lambda: self.score_pair_sync(top_image, bottom_image))
        return await asyncio.wait_for(work, timeout)

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
        context = contextvars.copy_context()  # the request id follows the work onto the pool thread
        submitted = time.perf_counter()

        def run() -> Analysis:
            started = time.perf_counter()
            observe_stage("vision_queue", started - submitted)
            analysis = context.run(
                self.analyze_sync,
                data,
                single_garment=single_garment,
                kind_hint=kind_hint,
                want_quality=want_quality,
                known=known,
            )
            observe_stage("analyze", time.perf_counter() - started)
            return analysis

        return await asyncio.wait_for(loop.run_in_executor(self.executor, run), timeout)


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

    async def ScorePair(
        self, request: vision_pb2.ScorePairRequest, context: grpc.aio.ServicerContext
    ) -> vision_pb2.ScorePairResponse:
        try:
            score, version = await self.vision.score_pair(
                request.top_image, request.bottom_image, timeout=context.time_remaining()
            )
            return vision_pb2.ScorePairResponse(score=score, model_version=version)
        except (ImageRejected, NoGarmentError) as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except MissingModelError as exc:
            code, message = grpc.StatusCode.FAILED_PRECONDITION, str(exc)
        except TimeoutError:
            code, message = grpc.StatusCode.DEADLINE_EXCEEDED, "scoring did not finish before the deadline: retry"
        await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")

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
