"""OutfitService, the public gateway: validates a shopper's photo, asks vision what garment it is,
searches the look library, and returns what the matched looks pair it with."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import grpc
from lookbook.common.v1 import garment_pb2
from lookbook.outfit.v1 import outfit_pb2, outfit_pb2_grpc

from services.gateway.access import ApiKeyInterceptor
from services.gateway.ranking import PAIR, PUBLIC_STATUSES, Candidate, Matcher, Path
from services.vision.client import VisionUnavailableError
from services.vision.contract import KIND_TO_PROTO, box_to_proto
from services.vision.server import MissingModelError, NoGarmentError
from shared.grpc_runtime import add_health_and_reflection, bind, new_server
from shared.images import ImageRejected
from shared.look_messages import default_image_url, look_to_proto
from shared.metrics import observe_stage
from shared.models.pipeline import Analysis, Kind, KnownGarment
from shared.settings import Settings
from shared.store import InvalidLookError, LookRecord, LookStore, StoreError

log = logging.getLogger(__name__)
SERVICE_NAME = outfit_pb2.DESCRIPTOR.services_by_name["OutfitService"].full_name
PATHS: dict[int, Path] = {
    outfit_pb2.RANKING_PATH_BLEND: "blend",
    outfit_pb2.RANKING_PATH_LOOK_ALIKE: "look_alike",
    outfit_pb2.RANKING_PATH_COMPATIBILITY: "compatibility",
}
MAX_TAGS = 20


class Vision(Protocol):
    @property
    def model_version(self) -> str: ...

    async def analyze(
        self,
        data: bytes,
        *,
        single_garment: bool = False,
        kind_hint: Kind | None = None,
        want_quality: bool = False,
        known: Sequence[KnownGarment] = (),
        timeout: float | None = None,
    ) -> Analysis: ...

    async def score_pair(
        self, top_image: bytes, bottom_image: bytes, *, timeout: float | None = None
    ) -> tuple[float, str]: ...


class BadRequest(ValueError):
    """The request is malformed; the message says how to fix it."""


class MissingModel(RuntimeError):
    """The request needs a model this server does not have."""


QUERY_HINT: dict[int, Kind] = {outfit_pb2.QUERY_KIND_TOP: "top", outfit_pb2.QUERY_KIND_BOTTOM: "bottom"}


def crop_uri(settings: Settings, look: LookRecord, kind: str) -> str:
    return f"{settings.base_url}/crops/{look.look_id}/{kind}.jpg"


class OutfitServicer(outfit_pb2_grpc.OutfitServiceServicer):
    def __init__(
        self, settings: Settings, vision: Vision, store: LookStore, executor: ThreadPoolExecutor | None = None
    ) -> None:
        self.settings = settings
        self.vision = vision
        self.store = store
        self.matcher = Matcher(settings, store)
        self.image_url = default_image_url(settings)
        self.executor = executor or ThreadPoolExecutor(max_workers=settings.grpc_workers, thread_name_prefix="gateway")

    def _validate(self, request: outfit_pb2.MatchOutfitRequest) -> tuple[int, list[str]]:
        if request.limit < 0:
            raise BadRequest(
                f"limit is {request.limit}: ask for 1 to {self.settings.max_limit} matches, or 0 for the default"
            )
        if request.limit > self.settings.max_limit:
            raise BadRequest(
                f"limit {request.limit} is above the maximum of {self.settings.max_limit} "
                "(LOOKBOOK_MAX_LIMIT): ask for fewer matches and page with tags"
            )
        if request.kind not in outfit_pb2.QueryKind.values():
            raise BadRequest(f"unknown kind {request.kind}: use AUTO, TOP or BOTTOM")
        if request.path not in outfit_pb2.RankingPath.values():
            raise BadRequest(f"unknown ranking path {request.path}: use BLEND, LOOK_ALIKE or COMPATIBILITY")
        if len(request.tags) > MAX_TAGS:
            raise BadRequest(f"{len(request.tags)} tags given; filter by at most {MAX_TAGS}")
        tags = sorted({t.strip().lower() for t in request.tags if t.strip()})
        return request.limit or self.settings.default_limit, tags

    async def _match(
        self, request: outfit_pb2.MatchOutfitRequest, context: grpc.aio.ServicerContext
    ) -> outfit_pb2.MatchOutfitResponse:
        limit, tags = self._validate(request)
        hint = QUERY_HINT.get(request.kind)
        remaining = context.time_remaining()
        budget = self.settings.vision_timeout_s if remaining is None else min(remaining, self.settings.vision_timeout_s)
        analysis = await self.vision.analyze(request.image, single_garment=True, kind_hint=hint, timeout=budget)
        garment = max((g for g in analysis.garments if g.kind in PAIR), key=lambda g: g.confidence, default=None)
        if garment is None:
            found = ", ".join(sorted({g.kind for g in analysis.garments})) or "nothing"
            raise BadRequest(
                f"no top or bottom found in the photo (found {found}): photograph one top or "
                "one bottom so that it fills most of the frame, or set kind to TOP or BOTTOM"
            )
        compat = garment.compat if garment.compat is not None and garment.compat.size else None
        if request.path == outfit_pb2.RANKING_PATH_COMPATIBILITY and compat is None:
            raise MissingModel(
                "the compatibility model is not installed on this server: use BLEND or LOOK_ALIKE, "
                "or ship the compat artifact"
            )
        loop = asyncio.get_running_loop()

        def rank() -> list[Candidate]:
            started = time.perf_counter()
            found = self.matcher.candidates(
                garment.kind, garment.embedding, compat, path=PATHS[request.path], tags=tags, limit=limit
            )
            observe_stage("rank", time.perf_counter() - started)
            return found

        matches = await loop.run_in_executor(self.executor, rank)
        pair = PAIR[garment.kind]
        response = outfit_pb2.MatchOutfitResponse(
            query=outfit_pb2.QueryGarment(
                kind=KIND_TO_PROTO[garment.kind], box=box_to_proto(garment.box), confidence=garment.confidence
            ),
            model_version=analysis.model_version,
        )
        for c in matches:
            box = getattr(c.look, f"{pair}_box")
            response.matches.append(
                outfit_pb2.Match(
                    look_id=c.look.look_id,
                    image_uri=self.image_url(c.look),
                    garment_kind=KIND_TO_PROTO[pair],
                    garment_box=box_to_proto(box),
                    score=c.score,
                    path_scores=outfit_pb2.PathScores(look_alike=c.look_alike, compatibility=c.compatibility),
                    tags=c.look.tags,
                    crop_uri=crop_uri(self.settings, c.look, pair),
                    featured=c.look.status == "featured",
                )
            )
        log.info("matched", extra={"kind": garment.kind, "matches": len(matches)})
        return response

    async def MatchOutfit(
        self, request: outfit_pb2.MatchOutfitRequest, context: grpc.aio.ServicerContext
    ) -> outfit_pb2.MatchOutfitResponse:
        try:
            return await self._match(request, context)
        except (BadRequest, ImageRejected) as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except (MissingModel, MissingModelError) as exc:
            code, message = grpc.StatusCode.FAILED_PRECONDITION, str(exc)
        except TimeoutError:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            message = "the photo was not analysed before the deadline: retry with a longer deadline"
        except VisionUnavailableError as exc:
            code, message = grpc.StatusCode.UNAVAILABLE, str(exc)
        except StoreError as exc:
            log.exception("look store failed")
            code, message = grpc.StatusCode.UNAVAILABLE, f"the look library is unavailable ({exc}): retry shortly"
        await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")

    async def ScorePair(
        self, request: outfit_pb2.ScorePairRequest, context: grpc.aio.ServicerContext
    ) -> outfit_pb2.ScorePairResponse:
        remaining = context.time_remaining()
        budget = self.settings.vision_timeout_s if remaining is None else min(remaining, self.settings.vision_timeout_s)
        try:
            score, version = await self.vision.score_pair(request.top_image, request.bottom_image, timeout=budget)
            return outfit_pb2.ScorePairResponse(score=score, model_version=version)
        except (ImageRejected, NoGarmentError) as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except MissingModelError as exc:
            code, message = grpc.StatusCode.FAILED_PRECONDITION, str(exc)
        except TimeoutError:
            code, message = grpc.StatusCode.DEADLINE_EXCEEDED, "the pair was not scored before the deadline: retry"
        except VisionUnavailableError as exc:
            code, message = grpc.StatusCode.UNAVAILABLE, str(exc)
        await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")

    async def GetLook(self, request: outfit_pb2.GetLookRequest, context: grpc.aio.ServicerContext) -> garment_pb2.Look:
        try:
            look = self.store.get(request.look_id)
        except InvalidLookError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        if look is None or look.status not in PUBLIC_STATUSES:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no look {request.look_id} in the library: use a look_id from MatchOutfit",
            )
            raise AssertionError("unreachable: abort raises")
        return look_to_proto(look, self.image_url)


def build_server(settings: Settings, vision: Vision, store: LookStore, port: int | None = None):  # type: ignore[no-untyped-def]
    """Returns (server, health servicer, bound port, service names); start it with `await server.start()`."""
    server = new_server(settings, interceptors=[ApiKeyInterceptor(settings.api_keys, settings.rate_limit_per_minute)])
    outfit_pb2_grpc.add_OutfitServiceServicer_to_server(OutfitServicer(settings, vision, store), server)
    health = add_health_and_reflection(server, [SERVICE_NAME])
    bound = bind(server, settings, settings.gateway_port if port is None else port)
    return server, health, bound, [SERVICE_NAME]
