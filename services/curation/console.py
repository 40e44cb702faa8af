"""The editor console: server-rendered pages and a small JSON API over the curation desk, for starlette.

Editors sign in with their password and get an HttpOnly, SameSite=Strict session cookie that
expires. Every page and API call without a valid session answers 401; every state-changing request
must also carry the session's CSRF token (a form field or the X-CSRF-Token header) and, when the
browser sends one, a same-origin Origin header.
"""

from __future__ import annotations

import hmac
import io
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse

from PIL import Image, ImageOps
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.curation.desk import REJECT_REASONS, SORTS, CurationDesk, CurationInputError, LookQuery
from services.curation.imports import (
    ImportJobNotFoundError,
    ImportJobs,
    ImportJobView,
    ImportsUnavailableError,
    NoImportJobs,
)
from services.curation.ledger import Credential, Ledger, SignInThrottledError
from shared.settings import Settings
from shared.store.model import (
    STATUSES,
    InvalidLookError,
    LookNotFoundError,
    LookRecord,
    LookStore,
    StaleVersionError,
    StoreError,
)

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "lookbook_session"
LOGIN_CSRF_COOKIE = "lookbook_login_csrf"
THUMB_WIDTH = 360
THUMB_CACHE = 512

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class SignedIn:
    credential: Credential
    token: str

    @property
    def editor(self) -> str:
        return self.credential.editor


def look_json(look: LookRecord) -> dict[str, Any]:
    return {
        "look_id": look.look_id,
        "version": look.version,
        "status": look.status,
        "tags": list(look.tags),
        "source": look.source,
        "quality_score": round(look.quality_score, 4),
        "quality_reasons": list(look.quality_reasons),
        "updated_at": look.updated_at,
    }


def job_json(job: ImportJobView) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "source": job.source,
        "state": job.state,
        "total": job.total,
        "processed": job.processed,
        "imported": job.imported,
        "skipped": job.skipped,
        "failed": job.failed,
        "error": job.error,
        "requested_by": job.requested_by,
        "created_at": job.created_at,
        "progress": round(job.progress, 4),
    }


def box_style(box: tuple[float, float, float, float] | None, width: int, height: int) -> str:
    """CSS placing a box over the thumbnail in percentages, so it scales with the image."""
    if box is None or width <= 0 or height <= 0:
        return ""
    x0, y0, x1, y1 = box
    return (
        f"left:{100 * x0 / width:.2f}%;top:{100 * y0 / height:.2f}%;"
        f"width:{100 * (x1 - x0) / width:.2f}%;height:{100 * (y1 - y0) / height:.2f}%"
    )


class Thumbnails:
    """Small JPEG thumbnails of look images, cached in memory by file and modification time."""

    def __init__(self, capacity: int = THUMB_CACHE) -> None:
        self.capacity = capacity
        self._cache: OrderedDict[tuple[str, float], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> bytes:
        key = (str(path), path.stat().st_mtime)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        with Image.open(path) as image:
            # Boxes are in pixels of the image as displayed, so the thumbnail applies EXIF orientation too.
            shown = ImageOps.exif_transpose(image).convert("RGB")
            shown.thumbnail((THUMB_WIDTH, THUMB_WIDTH * 4))
            out = io.BytesIO()
            shown.save(out, format="JPEG", quality=82)
        data = out.getvalue()
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return data


class Console:
    """The console's endpoints; `routes()` gives them for mounting under /console."""

    def __init__(self, settings: Settings, desk: CurationDesk) -> None:
        self.settings = settings
        self.desk = desk
        self.ledger: Ledger = desk.ledger
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.globals["statuses"] = STATUSES
        self.templates.env.globals["reject_reasons"] = REJECT_REASONS
        self.templates.env.filters["box_style"] = box_style
        self.templates.env.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + " UTC"
        self.thumbnails = Thumbnails()

    # ------------------------------------------------------------------ auth plumbing

    @staticmethod
    def base(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    async def signed_in(self, request: Request) -> SignedIn | None:
        token = request.cookies.get(SESSION_COOKIE, "")
        if not token:
            return None
        credential = await run_in_threadpool(self.ledger.authenticate, token)
        return SignedIn(credential, token) if credential else None

    def same_origin(self, request: Request) -> bool:
        """A cross-site request names another origin; requests without the header (old clients) pass."""
        origin = request.headers.get("origin")
        if not origin or origin == "null":
            return origin is None
        return urlparse(origin).netloc == request.headers.get("host", "")

    def csrf_ok(self, request: Request, session: SignedIn, sent: str | None) -> bool:
        return (
            bool(sent) and hmac.compare_digest(str(sent), session.credential.csrf_token) and self.same_origin(request)
        )

    def login_page(self, request: Request, *, status_code: int, error: str = "", next_url: str = "") -> Response:
        csrf = secrets.token_urlsafe(24)
        response = self.templates.TemplateResponse(
            request,
            "login.html",
            {
                "base": self.base(request),
                "error": error,
                "csrf": csrf,
                "next": next_url or self.base(request) + "/",
            },
            status_code=status_code,
        )
        response.set_cookie(
            LOGIN_CSRF_COOKIE,
            csrf,
            max_age=1800,
            httponly=True,
            samesite="strict",
            path=self.base(request) or "/",
            secure=request.url.scheme == "https",
        )
        return response

    def page(self, handler: Callable[[Request, SignedIn], Awaitable[Response]]) -> Endpoint:
        """A page for signed-in editors; others get 401 with the sign-in form."""

        async def endpoint(request: Request) -> Response:
            session = await self.signed_in(request)
            if session is None:
                return self.login_page(
                    request,
                    status_code=401,
                    error="Sign in to continue.",
                    next_url=str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
                )
            return await handler(request, session)

        return endpoint

    def api(self, handler: Callable[[Request, SignedIn], Awaitable[Response]], *, changes: bool) -> Endpoint:
        """A JSON endpoint: 401 without a session, 403 without the CSRF token on a change, errors as JSON."""

        async def endpoint(request: Request) -> Response:
            session = await self.signed_in(request)
            if session is None:
                return JSONResponse({"error": "not signed in, or the session expired: sign in again"}, 401)
            if changes and not self.csrf_ok(request, session, request.headers.get("x-csrf-token")):
                return JSONResponse({"error": "missing or wrong CSRF token: reload the page and try again"}, 403)
            try:
                return await handler(request, session)
            except StaleVersionError as exc:
                current = await run_in_threadpool(self.desk.store.get, exc.look_id)
                return JSONResponse(
                    {"error": str(exc), "conflict": True, "look": look_json(current) if current else None},
                    409,
                )
            except (LookNotFoundError, ImportJobNotFoundError) as exc:
                return JSONResponse({"error": str(exc)}, 404)
            except ImportsUnavailableError as exc:
                return JSONResponse({"error": str(exc)}, 503)
            except (CurationInputError, InvalidLookError, ValueError) as exc:
                return JSONResponse({"error": str(exc)}, 400)
            except StoreError as exc:
                return JSONResponse({"error": str(exc)}, 503)

        return endpoint

    @staticmethod
    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            raise CurationInputError("the request body is not JSON: send a JSON object") from None
        if not isinstance(data, dict):
            raise CurationInputError("the request body must be a JSON object")
        return data

    @staticmethod
    def version_of(data: dict[str, Any]) -> int | None:
        value = data.get("version")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
            raise CurationInputError("version must be a whole number: the look's version when you loaded it")
        return int(value)

    # ------------------------------------------------------------------ sign-in

    async def login_form(self, request: Request) -> Response:
        if await self.signed_in(request):
            return RedirectResponse(self.base(request) + "/", 303)
        return self.login_page(request, status_code=200, next_url=request.query_params.get("next", ""))

    async def login(self, request: Request) -> Response:
        form = await request.form()
        sent, expected = str(form.get("csrf", "")), request.cookies.get(LOGIN_CSRF_COOKIE, "")
        next_url = str(form.get("next", "")) or self.base(request) + "/"
        # Only local paths, so the form cannot be turned into an open redirect.
        if not next_url.startswith(self.base(request) + "/") or next_url.startswith("//"):
            next_url = self.base(request) + "/"
        if not (sent and expected and hmac.compare_digest(sent, expected) and self.same_origin(request)):
            return self.login_page(request, status_code=403, error="The form expired: sign in again.")
        name, password = str(form.get("editor", "")), str(form.get("password", ""))
        try:
            issued = await run_in_threadpool(
                self.ledger.login, name, password, kind="session", ttl_s=self.settings.editor_session_ttl_s
            )
        except SignInThrottledError as exc:
            return self.login_page(request, status_code=429, error=str(exc), next_url=next_url)
        if issued is None:
            log.warning("console sign-in refused", extra={"editor": name})
            return self.login_page(request, status_code=401, error="Wrong editor name or password.", next_url=next_url)
        log.info("console sign-in", extra={"editor": issued.credential.editor})
        response = RedirectResponse(next_url, 303)
        response.set_cookie(
            SESSION_COOKIE,
            issued.token,
            max_age=int(self.settings.editor_session_ttl_s),
            httponly=True,
            samesite="strict",
            path=self.base(request) or "/",
            secure=request.url.scheme == "https",
        )
        response.delete_cookie(LOGIN_CSRF_COOKIE, path=self.base(request) or "/")
        return response

    async def logout(self, request: Request, session: SignedIn) -> Response:
        form = await request.form()
        if not self.csrf_ok(request, session, str(form.get("csrf", ""))):
            return JSONResponse({"error": "missing or wrong CSRF token: reload the page and try again"}, 403)
        await run_in_threadpool(self.ledger.revoke, session.token)
        response = RedirectResponse(self.base(request) + "/login", 303)
        response.delete_cookie(SESSION_COOKIE, path=self.base(request) or "/")
        return response

    # ------------------------------------------------------------------ pages

    def context(self, request: Request, session: SignedIn, **values: Any) -> dict[str, Any]:
        return {
            "base": self.base(request),
            "editor": session.editor,
            "csrf": session.credential.csrf_token,
            "expires_at": session.credential.expires_at,
            **values,
        }

    @staticmethod
    def query_from(request: Request) -> tuple[LookQuery, str]:
        params = request.query_params

        def quality(name: str) -> float | None:
            raw = params.get(name, "").strip()
            if not raw:
                return None
            try:
                return float(raw)
            except ValueError:
                raise CurationInputError(f"{name} must be a number within [0, 1]") from None

        try:
            size = int(params.get("size", "48") or 48)
        except ValueError:
            raise CurationInputError("size must be a whole number") from None
        query = LookQuery(
            statuses=tuple(s for s in params.getlist("status") if s),
            tags=tuple(t.strip().lower() for t in params.get("tag", "").split(",") if t.strip()),
            source=params.get("source", "").strip(),
            min_quality=quality("qmin"),
            max_quality=quality("qmax"),
            sort=params.get("sort", "created_desc") or "created_desc",
            page_size=size,
            cursor=params.get("cursor", ""),
        )
        return query.checked(), params.get("cursor", "")

    async def looks_page(self, request: Request, session: SignedIn) -> Response:
        error, status_code = "", 200
        page, stats = None, None
        try:
            query, cursor = self.query_from(request)
        except CurationInputError as exc:
            error, status_code = str(exc), 400
            query, cursor = LookQuery(), ""
        try:
            if not error:
                page = await run_in_threadpool(self.desk.list_looks, query)
            stats = await run_in_threadpool(self.desk.stats)
        except (CurationInputError, InvalidLookError) as exc:
            error, status_code = str(exc), 400
        except StoreError as exc:
            error, status_code = str(exc), 503
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
        next_url = (
            f"{self.base(request)}/?{urlencode([*params, ('cursor', page.next_cursor)])}"
            if page and page.next_cursor
            else ""
        )
        first_url = f"{self.base(request)}/?{urlencode(params)}" if cursor else ""
        return self.templates.TemplateResponse(
            request,
            "looks.html",
            self.context(
                request,
                session,
                page=page,
                query=query,
                stats=stats,
                error=error,
                sorts=list(SORTS),
                next_url=next_url,
                first_url=first_url,
                tag_text=", ".join(query.tags),
            ),
            status_code=status_code,
        )

    async def look_image(self, request: Request, session: SignedIn) -> Response:
        look_id = request.path_params["look_id"]
        look = await run_in_threadpool(self.desk.store.get, look_id)
        if look is None:
            return Response("no such look", 404)
        path = self.desk.image_file(look)
        try:
            data = await run_in_threadpool(self.thumbnails.get, path)
        except (OSError, ValueError):
            log.warning("look image unreadable", extra={"look_id": look_id, "path": str(path)})
            return Response("the look image cannot be read", 404)
        return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=300"})

    async def imports_page(self, request: Request, session: SignedIn) -> Response:
        jobs = await run_in_threadpool(self.desk.recent_imports, 20)
        return self.templates.TemplateResponse(
            request,
            "imports.html",
            self.context(
                request,
                session,
                jobs=[job_json(j) for j in jobs],
                sources=self.settings.refresh_sources,
                available=not isinstance(self.desk.jobs, NoImportJobs),
            ),
        )

    async def stats_page(self, request: Request, session: SignedIn) -> Response:
        error = ""
        stats = None
        try:
            stats = await run_in_threadpool(self.desk.stats)
        except StoreError as exc:
            error = str(exc)
        peak = max([c for _, _, c in stats.quality_histogram] or [1]) if stats else 1
        return self.templates.TemplateResponse(
            request, "stats.html", self.context(request, session, stats=stats, error=error, peak=max(peak, 1))
        )

    async def audit_page(self, request: Request, session: SignedIn) -> Response:
        params = request.query_params
        before = params.get("before", "")
        filters = {k: params.get(k, "").strip() for k in ("look_id", "editor", "action")}
        size = 50
        events = await run_in_threadpool(
            lambda: self.ledger.events(
                look_id=filters["look_id"],
                editor=filters["editor"],
                action=filters["action"],
                before_id=int(before) if before.isdigit() else None,
                limit=size + 1,
            )
        )
        more = len(events) > size
        events = events[:size]
        keep = [(k, v) for k, v in filters.items() if v]
        older = f"{self.base(request)}/audit?{urlencode([*keep, ('before', events[-1].event_id)])}" if more else ""
        return self.templates.TemplateResponse(
            request,
            "audit.html",
            self.context(request, session, events=events, filters=filters, older_url=older),
        )

    # ------------------------------------------------------------------ JSON API

    async def api_set_status(self, request: Request, session: SignedIn) -> Response:
        data = await self.body(request)
        look = await run_in_threadpool(
            lambda: self.desk.set_status(
                session.editor,
                request.path_params["look_id"],
                str(data.get("status", "")),
                self.version_of(data),
                reason=str(data.get("reason", "")),
                request_id=request.headers.get("x-request-id", ""),
            )
        )
        return JSONResponse({"look": look_json(look)})

    async def api_bulk_status(self, request: Request, session: SignedIn) -> Response:
        data = await self.body(request)
        raw_items = data.get("items")
        if not isinstance(raw_items, list) or not raw_items:
            raise CurationInputError("items must be a non-empty list of {look_id, version}")
        items = []
        for item in raw_items:
            if not isinstance(item, dict):
                raise CurationInputError("each item must be {look_id, version}")
            version = self.version_of(item)
            if version is None:
                raise CurationInputError("each item needs the version of the look when you loaded it")
            items.append((str(item.get("look_id", "")), version))
        results = await run_in_threadpool(
            lambda: self.desk.set_status_many(
                session.editor,
                items,
                str(data.get("status", "")),
                reason=str(data.get("reason", "")),
                request_id=request.headers.get("x-request-id", ""),
            )
        )
        body = [
            {
                "look_id": r.look_id,
                "ok": r.look is not None,
                "error": r.error,
                "conflict": r.conflict,
                "look": look_json(r.look) if r.look else None,
            }
            for r in results
        ]
        conflicts = sum(r.conflict for r in results)
        return JSONResponse({"results": body, "conflicts": conflicts}, 409 if conflicts else 200)

    async def api_tags(self, request: Request, session: SignedIn) -> Response:
        data = await self.body(request)
        tags = data.get("tags")
        if isinstance(tags, str):
            tags = [t for t in tags.split(",")]
        if not isinstance(tags, list):
            raise CurationInputError("tags must be a list of strings or a comma-separated string")
        look = await run_in_threadpool(
            lambda: self.desk.update_tags(
                session.editor,
                request.path_params["look_id"],
                [str(t) for t in tags],
                self.version_of(data),
                reason=str(data.get("reason", "")),
                request_id=request.headers.get("x-request-id", ""),
            )
        )
        return JSONResponse({"look": look_json(look)})

    async def api_delete(self, request: Request, session: SignedIn) -> Response:
        data = await self.body(request)
        look_id = await run_in_threadpool(
            lambda: self.desk.delete_look(
                session.editor,
                request.path_params["look_id"],
                self.version_of(data),
                reason=str(data.get("reason", "")),
                request_id=request.headers.get("x-request-id", ""),
            )
        )
        return JSONResponse({"deleted": look_id})

    async def api_start_import(self, request: Request, session: SignedIn) -> Response:
        data = await self.body(request)
        job = await run_in_threadpool(
            lambda: self.desk.start_import(
                session.editor,
                str(data.get("source", "")),
                request_id=request.headers.get("x-request-id", ""),
            )
        )
        return JSONResponse({"job": job_json(job)}, 202)

    async def api_imports(self, request: Request, session: SignedIn) -> Response:
        jobs = await run_in_threadpool(self.desk.recent_imports, 20)
        return JSONResponse({"jobs": [job_json(j) for j in jobs]})

    async def api_import(self, request: Request, session: SignedIn) -> Response:
        job = await run_in_threadpool(self.desk.import_job, request.path_params["job_id"])
        return JSONResponse({"job": job_json(job)})

    async def api_stats(self, request: Request, session: SignedIn) -> Response:
        stats = await run_in_threadpool(self.desk.stats)
        return JSONResponse(
            {
                "total": stats.total,
                "by_status": stats.by_status,
                "by_source": stats.by_source,
                "quality_histogram": [list(b) for b in stats.quality_histogram],
            }
        )

    # ------------------------------------------------------------------ routing

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.page(self.looks_page), name="looks"),
            Route("/login", self.login_form, methods=["GET"], name="login_form"),
            Route("/login", self.login, methods=["POST"], name="login"),
            Route("/logout", self.page(self.logout), methods=["POST"], name="logout"),
            Route("/imports", self.page(self.imports_page), name="imports"),
            Route("/stats", self.page(self.stats_page), name="stats"),
            Route("/audit", self.page(self.audit_page), name="audit"),
            Route("/looks/{look_id}/image", self.api(self.look_image, changes=False), name="look_image"),
            Route("/api/looks/bulk-status", self.api(self.api_bulk_status, changes=True), methods=["POST"]),
            Route("/api/looks/{look_id}/status", self.api(self.api_set_status, changes=True), methods=["POST"]),
            Route("/api/looks/{look_id}/tags", self.api(self.api_tags, changes=True), methods=["POST"]),
            Route("/api/looks/{look_id}/delete", self.api(self.api_delete, changes=True), methods=["POST"]),
            Route("/api/imports", self.api(self.api_start_import, changes=True), methods=["POST"]),
            Route("/api/imports", self.api(self.api_imports, changes=False), methods=["GET"]),
            Route("/api/imports/{job_id}", self.api(self.api_import, changes=False), methods=["GET"]),
            Route("/api/stats", self.api(self.api_stats, changes=False), methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
        ]


def build_console_app(
    settings: Settings,
    store: LookStore,
    *,
    ledger: Ledger | None = None,
    jobs: ImportJobs | None = None,
) -> Starlette:
    """The console as a starlette app; mount it with `Mount("/console", app=build_console_app(...))`."""
    desk = CurationDesk(settings, store, ledger or Ledger.in_data_dir(settings.data_dir), jobs)
    return Starlette(routes=Console(settings, desk).routes(), middleware=[Middleware(SecurityHeaders)])


class SecurityHeaders:
    """Headers on every console response: no framing (keyboard shortcuts invite clickjacking), own scripts only."""

    HEADERS: tuple[tuple[bytes, bytes], ...] = (
        (
            b"content-security-policy",
            b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build_console_http(
    settings: Settings, store: LookStore, *, ledger: Ledger | None = None, jobs: ImportJobs | None = None
) -> Starlette:
    """A stand-alone HTTP app with the console at /console (the curation service run on its own)."""
    console = build_console_app(settings, store, ledger=ledger, jobs=jobs)
    return Starlette(
        routes=[
            Route("/", lambda request: RedirectResponse("/console/", 307)),
            Mount("/console", app=console),
        ]
    )


def console_routes(
    settings: Settings, store: LookStore, *, ledger: Ledger | None = None, jobs: ImportJobs | None = None
) -> list[BaseRoute]:
    """The console mounted at /console, for a process that serves other HTTP routes too (`extra_routes`)."""
    return [Mount("/console", app=build_console_app(settings, store, ledger=ledger, jobs=jobs))]
