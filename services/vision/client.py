"""A client of a remote VisionService with the same interface as LocalVision (used in scale-out)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from lookbook.vision.v1 import vision_pb2, vision_pb2_grpc

from services.vision.contract import KIND_TO_PROTO, analysis_from_proto, known_to_proto
from shared.grpc_runtime import channel_options
from shared.images import ImageRejected
from shared.logs import request_id
from shared.models.pipeline import Analysis, Kind, KnownGarment
from shared.settings import Settings


class VisionUnavailableError(RuntimeError):
    """The vision service cannot be reached; a transient fault worth a retry."""


class RemoteVision:
    def __init__(self, settings: Settings, address: str | None = None) -> None:
        self.address = address or settings.vision_addr
        self.timeout = settings.vision_timeout_s
        options = channel_options(settings)
        if settings.tls_cert:
            credentials = grpc.ssl_channel_credentials(settings.tls_cert.read_bytes())
            self._aio = grpc.aio.secure_channel(self.address, credentials, options=options)
            self._sync = grpc.secure_channel(self.address, credentials, options=options)
        else:
            self._aio = grpc.aio.insecure_channel(self.address, options=options)
            self._sync = grpc.insecure_channel(self.address, options=options)
        self._aio_stub = vision_pb2_grpc.VisionServiceStub(self._aio)
        self._sync_stub = vision_pb2_grpc.VisionServiceStub(self._sync)
        self._model_version = ""

    @property
    def model_version(self) -> str:
        return self._model_version

    def _request(
        self,
        data: bytes,
        single_garment: bool,
        kind_hint: Kind | None,
        want_quality: bool,
        known: Sequence[KnownGarment],
    ) -> vision_pb2.AnalyzeRequest:
        return vision_pb2.AnalyzeRequest(
            image=data,
            single_garment=single_garment,
            kind_hint=KIND_TO_PROTO.get(kind_hint or "", 0),  # type: ignore[arg-type]
            want_quality=want_quality,
            known_garments=known_to_proto(list(known)),
        )

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        rid = request_id.get()
        return (("x-request-id", rid),) if rid else ()

    def _result(self, response: vision_pb2.AnalyzeResponse) -> Analysis:
        analysis = analysis_from_proto(response)
        self._model_version = analysis.model_version
        return analysis

    def _translate(self, exc: grpc.RpcError) -> Exception:
        code = exc.code()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return ImageRejected(exc.details())  # type: ignore[attr-defined]
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return TimeoutError("the vision service did not answer before the deadline")
        return VisionUnavailableError(
            f"the vision service at {self.address} is unavailable ({code.name}): check LOOKBOOK_VISION_ADDR and that "
            "the vision service is running"
        )

    def analyze_sync(
        self,
        data: bytes,
        *,
        single_garment: bool = False,
        kind_hint: Kind | None = None,
        want_quality: bool = False,
        known: Sequence[KnownGarment] = (),
    ) -> Analysis:
        try:
            response = self._sync_stub.Analyze(
                self._request(data, single_garment, kind_hint, want_quality, known),
                timeout=self.timeout,
                metadata=self._metadata(),
            )
        except grpc.RpcError as exc:
            raise self._translate(exc) from None
        return self._result(response)

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
        try:
            response = await self._aio_stub.Analyze(
                self._request(data, single_garment, kind_hint, want_quality, known),
                timeout=min(timeout or self.timeout, self.timeout),
                metadata=self._metadata(),
            )
        except grpc.RpcError as exc:
            raise self._translate(exc) from None
        return self._result(response)

    async def score_pair(
        self, top_image: bytes, bottom_image: bytes, *, timeout: float | None = None
    ) -> tuple[float, str]:
        try:
            response = await self._aio_stub.ScorePair(
                vision_pb2.ScorePairRequest(top_image=top_image, bottom_image=bottom_image),
                timeout=min(timeout or self.timeout, self.timeout),
                metadata=self._metadata(),
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:  # type: ignore[attr-defined]
                from services.vision.server import MissingModelError

                raise MissingModelError(exc.details()) from None  # type: ignore[attr-defined]
            raise self._translate(exc) from None
        return response.score, response.model_version

    async def close(self) -> None:
        await self._aio.close()
        self._sync.close()
