"""CurationService over gRPC: editor actions for tools and scripts, behind bearer-token auth.

Every RPC but Login checks `authorization: Bearer <token>` before it reads or changes anything, and
maps the desk's errors to gRPC statuses with messages that say what to do next.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc
from grpc_health.v1 import health
from lookbook.common.v1 import garment_pb2
from lookbook.curation.v1 import curation_pb2, curation_pb2_grpc

from services.curation.contract import (
    PROTO_TO_STATUS,
    SORT_FROM_PROTO,
    ImageUrl,
    default_image_url,
    event_to_proto,
    job_to_proto,
    look_to_proto,
    stats_to_proto,
    timestamp,
)
from services.curation.desk import MAX_PAGE, CurationDesk, CurationInputError, LookQuery
from services.curation.imports import ImportJobNotFoundError, ImportJobs, ImportsUnavailableError
from services.curation.ledger import Ledger, SignInThrottledError
from shared.grpc_runtime import add_health_and_reflection, bind, new_server
from shared.logs import request_id
from shared.settings import Settings
from shared.store.model import (
    InvalidLookError,
    LookNotFoundError,
    LookStore,
    StaleVersionError,
    StoreUnavailableError,
)

log = logging.getLogger(__name__)
SERVICE_NAME = curation_pb2.DESCRIPTOR.services_by_name["CurationService"].full_name
T = TypeVar("T")

MISSING_TOKEN = (
    "no editor credentials: send `authorization: Bearer <token>` metadata, with a token from the Login RPC "
    "or `lookbook editors token NAME`"
)
BAD_TOKEN = "the token is unknown, revoked or expired: sign in again with Login or `lookbook editors token NAME`"


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")


class CurationServicer(curation_pb2_grpc.CurationServiceServicer):
    def __init__(self, settings: Settings, desk: CurationDesk, image_url: ImageUrl | None = None) -> None:
        self.settings = settings
        self.desk = desk
        self.ledger: Ledger = desk.ledger
        self.image_url = image_url or default_image_url(settings)

    # ------------------------------------------------------------------ plumbing

    async def _editor(self, context: grpc.aio.ServicerContext) -> str:
        """The signed-in editor, or UNAUTHENTICATED before anything else happens."""
        metadata = {key.lower(): value for key, value in (context.invocation_metadata() or ())}
        scheme, _, token = str(metadata.get("authorization", "")).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, MISSING_TOKEN)
        credential = await asyncio.to_thread(self.ledger.authenticate, token.strip())
        if credential is None:
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, BAD_TOKEN)
        return credential.editor

    async def _run(self, context: grpc.aio.ServicerContext, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs blocking desk work on a thread within the call's deadline and turns its errors into statuses."""
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), context.time_remaining())
        except TimeoutError:
            await _abort(
                context,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "the deadline passed before the library answered: retry with a longer deadline; a change may "
                "still have been applied, so re-read the look (its version tells)",
            )
        except StaleVersionError as exc:
            await _abort(context, grpc.StatusCode.ABORTED, str(exc))
        except (LookNotFoundError, ImportJobNotFoundError) as exc:
            await _abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        except (CurationInputError, InvalidLookError) as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ImportsUnavailableError as exc:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except StoreUnavailableError as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        except ValueError as exc:  # the import jobs reject a bad source with ValueError
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    @staticmethod
    def _version(request: Any) -> int | None:
        return request.expected_version if request.HasField("expected_version") else None

    # ------------------------------------------------------------------ RPCs

    async def Login(
        self, request: curation_pb2.LoginRequest, context: grpc.aio.ServicerContext
    ) -> curation_pb2.LoginResponse:
        try:
            issued = await asyncio.to_thread(
                self.ledger.login,
                request.editor,
                request.password,
                kind="api",
                ttl_s=self.settings.editor_session_ttl_s,
            )
        except SignInThrottledError as exc:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        if issued is None:
            log.warning("editor sign-in refused", extra={"editor": request.editor})
            await _abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "wrong editor name or password: check both, or ask for an account (`lookbook editors add NAME`)",
            )
        return curation_pb2.LoginResponse(
            token=issued.token,
            expires_at=timestamp(issued.credential.expires_at),
            editor=issued.credential.editor,
        )

    async def ListLooks(
        self, request: curation_pb2.ListLooksRequest, context: grpc.aio.ServicerContext
    ) -> curation_pb2.ListLooksResponse:
        await self._editor(context)
        statuses = []
        for value in request.statuses:
            status = PROTO_TO_STATUS.get(value)
            if status is None:
                await _abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "statuses holds LOOK_STATUS_UNSPECIFIED or an unknown value: use PENDING, APPROVED, "
                    "REJECTED or FEATURED",
                )
            statuses.append(status)
        if request.sort not in SORT_FROM_PROTO:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"sort {request.sort} is unknown: see LookSort")
        query = LookQuery(
            statuses=tuple(statuses),
            tags=tuple(t.strip().lower() for t in request.tags if t.strip()),
            source=request.source.strip(),
            min_quality=request.min_quality if request.HasField("min_quality") else None,
            max_quality=request.max_quality if request.HasField("max_quality") else None,
            sort=SORT_FROM_PROTO[request.sort],
            page_size=request.page_size,
            cursor=request.page_token,
        )
        page = await self._run(context, self.desk.list_looks, query)
        return curation_pb2.ListLooksResponse(
            looks=[look_to_proto(look, self.image_url) for look in page.looks],
            next_page_token=page.next_cursor,
            total=page.total,
        )

    async def GetLook(
        self, request: curation_pb2.GetLookRequest, context: grpc.aio.ServicerContext
    ) -> garment_pb2.Look:
        await self._editor(context)
        look = await self._run(context, self.desk.get_look, request.look_id)
        return look_to_proto(look, self.image_url)

    async def SetStatus(
        self, request: curation_pb2.SetStatusRequest, context: grpc.aio.ServicerContext
    ) -> garment_pb2.Look:
        editor = await self._editor(context)
        status = PROTO_TO_STATUS.get(request.status)
        if status is None:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "status must be PENDING, APPROVED, REJECTED or FEATURED",
            )
        look = await self._run(
            context,
            self.desk.set_status,
            editor,
            request.look_id,
            status,
            self._version(request),
            reason=request.reason,
            request_id=request_id.get(),
        )
        return look_to_proto(look, self.image_url)

    async def UpdateTags(
        self, request: curation_pb2.UpdateTagsRequest, context: grpc.aio.ServicerContext
    ) -> garment_pb2.Look:
        editor = await self._editor(context)
        look = await self._run(
            context,
            self.desk.update_tags,
            editor,
            request.look_id,
            list(request.tags),
            self._version(request),
            reason=request.reason,
            request_id=request_id.get(),
        )
        return look_to_proto(look, self.image_url)

    async def DeleteLook(
        self, request: curation_pb2.DeleteLookRequest, context: grpc.aio.ServicerContext
    ) -> curation_pb2.DeleteLookResponse:
        editor = await self._editor(context)
        look_id = await self._run(
            context,
            self.desk.delete_look,
            editor,
            request.look_id,
            self._version(request),
            reason=request.reason,
            request_id=request_id.get(),
        )
        return curation_pb2.DeleteLookResponse(look_id=look_id)

    async def StartImport(
        self, request: curation_pb2.StartImportRequest, context: grpc.aio.ServicerContext
    ) -> curation_pb2.ImportJob:
        editor = await self._editor(context)
        job = await self._run(context, self.desk.start_import, editor, request.source, request_id=request_id.get())
        return job_to_proto(job)

    async def GetImportJob(
        self, request: curation_pb2.GetImportJobRequest, context: grpc.aio.ServicerContext
    ) -> curation_pb2.ImportJob:
        await self._editor(context)
        job = await self._run(context, self.desk.import_job, request.job_id)
        return job_to_proto(job)

    async def ListImportJobs(
        self, request: curation_pb2.ListImportJobsRequest, context: grpc.aio.ServicerContext
    ) -> curation_pb2.ListImportJobsResponse:
        await self._editor(context)
        if not 0 <= request.limit <= MAX_PAGE:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"limit must be within 0..{MAX_PAGE}")
        jobs = await self._run(context, self.desk.recent_imports, request.limit or 20)
        return curation_pb2.ListImportJobsResponse(jobs=[job_to_proto(job) for job in jobs])

    async def LibraryStats(
        self, request: curation_pb2.LibraryStatsRequest, context: grpc.aio.ServicerContext
    ) -> curation_pb2.LibraryStatsResponse:
        await self._editor(context)
        stats = await self._run(context, self.desk.stats)
        return stats_to_proto(stats)

    async def ListAuditEvents(
        self, request: curation_pb2.ListAuditEventsRequest, context: grpc.aio.ServicerContext
    ) -> curation_pb2.ListAuditEventsResponse:
        await self._editor(context)
        if not 0 <= request.page_size <= MAX_PAGE:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"page_size must be within 0..{MAX_PAGE}")
        before_id: int | None = None
        if request.page_token:
            if not request.page_token.isdigit():
                await _abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "page_token is malformed: pass next_page_token of the previous page",
                )
            before_id = int(request.page_token)
        size = request.page_size or 50
        events = await self._run(
            context,
            self.desk.events,
            look_id=request.look_id,
            editor=request.editor,
            action=request.action,
            before_id=before_id,
            limit=size + 1,
        )
        more = len(events) > size
        events = events[:size]
        return curation_pb2.ListAuditEventsResponse(
            events=[event_to_proto(e) for e in events],
            next_page_token=str(events[-1].event_id) if more and events else "",
        )


def build_servicer(
    settings: Settings,
    store: LookStore,
    *,
    ledger: Ledger | None = None,
    jobs: ImportJobs | None = None,
    image_url: ImageUrl | None = None,
) -> CurationServicer:
    """The servicer alone, for a process that adds it to a server it already runs."""
    desk = CurationDesk(settings, store, ledger or Ledger.in_data_dir(settings.data_dir), jobs)
    return CurationServicer(settings, desk, image_url)


def build_server(
    settings: Settings,
    store: LookStore,
    *,
    ledger: Ledger | None = None,
    jobs: ImportJobs | None = None,
    image_url: ImageUrl | None = None,
    port: int | None = None,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int, list[str]]:
    """Returns (server, health servicer, bound port, service names); start it with `await server.start()`."""
    server = new_server(settings)
    servicer = build_servicer(settings, store, ledger=ledger, jobs=jobs, image_url=image_url)
    curation_pb2_grpc.add_CurationServiceServicer_to_server(servicer, server)
    health_servicer = add_health_and_reflection(server, [SERVICE_NAME])
    bound = bind(server, settings, settings.curation_port if port is None else port)
    return server, health_servicer, bound, [SERVICE_NAME]
