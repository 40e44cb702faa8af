"""Prometheus metrics, request ids and optional tracing shared by every Lookbook service.

Services plug in `server_interceptors()` (sync `grpc.server`) or `aio_server_interceptors()`
(`grpc.aio.server`), clients add `RequestIdClientInterceptor` / `AioRequestIdClientInterceptor`
so the id of the request being handled travels from gateway to vision, and each process calls
`start_metrics_server(settings.metrics_port)` once.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import grpc
import grpc.aio
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from shared.logs import request_id

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
# A caller-supplied id longer than this, or with odd characters, is replaced: it ends up in logs.
_MAX_REQUEST_ID = 128
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class Metrics:
    """Every Lookbook metric, in one registry: the process default, or a test's own."""

    requests: Counter
    latency: Histogram
    errors: Counter
    in_flight: Gauge
    queue_depth: Gauge
    ingested: Counter
    ingest_failed: Counter
    quarantined: Counter
    model_load_seconds: Gauge
    stage_latency: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Metrics:
        rpc = ("grpc_service", "grpc_method")
        return cls(
            requests=Counter("lookbook_grpc_requests", "RPCs handled, by final status code.",
                             [*rpc, "grpc_code"], registry=registry),
            latency=Histogram("lookbook_grpc_request_seconds", "Time to handle one RPC, in seconds.",
                              rpc, buckets=_LATENCY_BUCKETS, registry=registry),
            errors=Counter("lookbook_grpc_errors", "RPCs that ended with a status other than OK.",
                           [*rpc, "grpc_code"], registry=registry),
            in_flight=Gauge("lookbook_grpc_in_flight", "RPCs being handled now.", rpc, registry=registry),
            queue_depth=Gauge("lookbook_queue_depth", "Tasks waiting in a Celery queue.", ["queue"],
                              registry=registry),
            ingested=Counter("lookbook_ingested_looks", "Looks imported into the library.", ["source"],
                             registry=registry),
            ingest_failed=Counter("lookbook_ingest_failures", "Imports that failed (and may be retried).",
                                  ["reason"], registry=registry),
            quarantined=Counter("lookbook_quarantined_looks", "Poison images moved to quarantine.",
                                ["reason"], registry=registry),
            model_load_seconds=Gauge("lookbook_model_load_seconds", "Time the last load of a model took.",
                                     ["model"], registry=registry),
            stage_latency=Histogram("lookbook_stage_seconds",
                                    "Time one stage of a request took (queue wait, analyze, rank), in seconds.",
                                    ["stage"], buckets=_LATENCY_BUCKETS, registry=registry),
        )


@lru_cache(maxsize=1)
def metrics() -> Metrics:
    """The process-wide metrics in the default registry (what `/metrics` serves)."""
    return Metrics.create(REGISTRY)


# --- convenience for the workers and the model loaders; label values must be short fixed words


def observe_queue_depth(queue: str, depth: int) -> None:
    metrics().queue_depth.labels(queue=queue).set(depth)


def count_ingested(source: str = "import", n: int = 1) -> None:
    metrics().ingested.labels(source=source).inc(n)


def count_ingest_failure(reason: str) -> None:
    metrics().ingest_failed.labels(reason=reason).inc()


def count_quarantined(reason: str) -> None:
    metrics().quarantined.labels(reason=reason).inc()


def record_model_load(model: str, seconds: float) -> None:
    metrics().model_load_seconds.labels(model=model).set(seconds)


def observe_stage(stage: str, seconds: float) -> None:
    """One stage of a request: vision_queue (waiting for a vision thread), analyze, rank."""
    metrics().stage_latency.labels(stage=stage).observe(seconds)


_servers: dict[int, Any] = {}
_servers_lock = threading.Lock()


def start_metrics_server(
    port: int, addr: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY
) -> int | None:
    """Serves `/metrics` on `port` in a daemon thread; 0 disables. Returns the port, or None.

    Safe to call from each service of the all-in-one process: the second call on a port is a no-op.
    """
    if port == 0:
        return None
    with _servers_lock:
        if port not in _servers:
            try:
                server, _thread = start_http_server(port, addr=addr, registry=registry)
            except OSError as exc:
                raise RuntimeError(
                    f"cannot serve metrics on {addr}:{port} ({exc}): free the port, or change or set "
                    "LOOKBOOK_METRICS_PORT=0 to disable the endpoint"
                ) from exc
            _servers[port] = server
            log.info("metrics endpoint started", extra={"port": port})
    return port


def stop_metrics_servers() -> None:
    """Stops every endpoint this process started (tests, and the end of a graceful shutdown)."""
    with _servers_lock:
        for server in _servers.values():
            server.shutdown()
            server.server_close()
        _servers.clear()


# --------------------------------------------------------------------------- request ids


def _valid_request_id(value: str) -> bool:
    return 0 < len(value) <= _MAX_REQUEST_ID and all(c.isalnum() or c in "-_.:" for c in value)


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_from(metadata: Sequence[tuple[str, Any]] | None) -> str:
    """The caller's `x-request-id` if it is sane, else a fresh one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            if _valid_request_id(text):
                return text
    return new_request_id()


def _split_method(full_method: str) -> tuple[str, str]:
    # "/lookbook.outfit.v1.OutfitService/MatchOutfit" -> ("lookbook.outfit.v1.OutfitService", "MatchOutfit")
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or full_method


def _code_name(code: grpc.StatusCode | None) -> str:
    return (code or grpc.StatusCode.OK).name


def _abort_code(context: Any, exc: BaseException | None) -> str:
    """The status an RPC ended with: what the handler set, else UNKNOWN for an escaped exception."""
    code = None
    try:
        code = context.code()
    except (AttributeError, NotImplementedError):  # older or fake contexts
        code = None
    if isinstance(code, int) and not isinstance(code, grpc.StatusCode):
        # grpc.aio returns the cygrpc integer code; map it to the enum.
        code = next((c for c in grpc.StatusCode if c.value[0] == code), None)
    if code is None and exc is not None:
        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            return _code_name(exc.code())
        return "UNKNOWN" if not isinstance(exc, (KeyboardInterrupt, SystemExit)) else "CANCELLED"
    return _code_name(code)


class _Observation:
    """Request id, in-flight gauge, count and latency around one RPC, whatever its shape."""

    def __init__(self, full_method: str, metadata: Sequence[tuple[str, Any]] | None, *,
                 with_metrics: bool, with_request_id: bool, registry_metrics: Metrics | None) -> None:
        self.service, self.method = _split_method(full_method)
        self.metadata = metadata
        self.with_metrics = with_metrics
        self.with_request_id = with_request_id
        self.m = registry_metrics or metrics()
        self.token: Any = None
        self.started = 0.0

    def begin(self) -> None:
        if self.with_request_id:
            self.token = request_id.set(request_id_from(self.metadata))
        if self.with_metrics:
            self.m.in_flight.labels(self.service, self.method).inc()
        self.started = time.perf_counter()

    def end(self, context: Any, exc: BaseException | None) -> None:
        if self.with_metrics:
            code = _abort_code(context, exc)
            labels = (self.service, self.method)
            self.m.latency.labels(*labels).observe(time.perf_counter() - self.started)
            self.m.requests.labels(*labels, code).inc()
            if code != "OK":
                self.m.errors.labels(*labels, code).inc()
            self.m.in_flight.labels(*labels).dec()
        if self.token is not None:
            request_id.reset(self.token)
            self.token = None


def _handler_factory(handler: grpc.RpcMethodHandler) -> tuple[Callable[..., Any], str]:
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler, "unary_unary"
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler, "unary_stream"
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler, "stream_unary"
    return grpc.stream_stream_rpc_method_handler, "stream_stream"


def _rewrap(handler: grpc.RpcMethodHandler, behavior: Callable[..., Any]) -> grpc.RpcMethodHandler:
    factory, _ = _handler_factory(handler)
    return factory(behavior, request_deserializer=handler.request_deserializer,
                   response_serializer=handler.response_serializer)


class ObservingServerInterceptor(grpc.ServerInterceptor):
    """Sync-server interceptor: sets the request id for the handler's logs and records the RPC's metrics.

    Both happen inside the wrapped behaviour because the sync server runs handlers on pool threads,
    not on the thread that calls `intercept_service`.
    """

    def __init__(self, *, with_metrics: bool = True, with_request_id: bool = True,
                 registry_metrics: Metrics | None = None) -> None:
        self._options = {"with_metrics": with_metrics, "with_request_id": with_request_id,
                         "registry_metrics": registry_metrics}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        metadata = handler_call_details.invocation_metadata  # type: ignore[attr-defined]
        _, shape = _handler_factory(handler)
        inner = getattr(handler, shape)
        options = self._options

        if shape in ("unary_unary", "stream_unary"):
            def behavior(request: Any, context: grpc.ServicerContext) -> Any:
                seen = _Observation(method, metadata, **options)  # type: ignore[arg-type]
                seen.begin()
                failure: BaseException | None = None
                try:
                    return inner(request, context)
                except BaseException as exc:
                    failure = exc
                    raise
                finally:
                    seen.end(context, failure)
            return _rewrap(handler, behavior)

        def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            seen = _Observation(method, metadata, **options)  # type: ignore[arg-type]
            seen.begin()
            failure: BaseException | None = None
            try:
                yield from inner(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                seen.end(context, failure)
        return _rewrap(handler, streaming)


class AioObservingServerInterceptor(grpc.aio.ServerInterceptor):
    """grpc.aio twin of ObservingServerInterceptor."""

    def __init__(self, *, with_metrics: bool = True, with_request_id: bool = True,
                 registry_metrics: Metrics | None = None) -> None:
        self._options = {"with_metrics": with_metrics, "with_request_id": with_request_id,
                         "registry_metrics": registry_metrics}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # type: ignore[unreachable]
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        metadata = handler_call_details.invocation_metadata  # type: ignore[attr-defined]
        _, shape = _handler_factory(handler)
        inner = getattr(handler, shape)
        options = self._options

        if inspect.isasyncgenfunction(inner):
            async def streaming(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                seen = _Observation(method, metadata, **options)  # type: ignore[arg-type]
                seen.begin()
                failure: BaseException | None = None
                try:
                    async for item in inner(request, context):
                        yield item
                except BaseException as exc:
                    failure = exc
                    raise
                finally:
                    seen.end(context, failure)
            return _rewrap(handler, streaming)

        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            seen = _Observation(method, metadata, **options)  # type: ignore[arg-type]
            seen.begin()
            failure: BaseException | None = None
            try:
                result = inner(request, context)
                # A streaming handler that writes with context.write returns a coroutine too.
                return await result if inspect.isawaitable(result) else result
            except BaseException as exc:
                failure = exc
                raise
            finally:
                seen.end(context, failure)
        return _rewrap(handler, behavior)


def server_interceptors() -> list[grpc.ServerInterceptor]:
    """Interceptors for `grpc.server(..., interceptors=...)`: request ids and metrics."""
    return [ObservingServerInterceptor()]


def aio_server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """Interceptors for `grpc.aio.server(interceptors=...)`: request ids and metrics."""
    return [AioObservingServerInterceptor()]


# --------------------------------------------------------------------------- client side


def _with_request_id(metadata: Sequence[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    merged = [(k, v) for k, v in (metadata or ()) if k != REQUEST_ID_KEY]
    rid = request_id.get()
    if rid:
        merged.append((REQUEST_ID_KEY, rid))
    return merged


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, Any]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: Any


def _forwarding(details: grpc.ClientCallDetails) -> _CallDetails:
    return _CallDetails(details.method, details.timeout, _with_request_id(details.metadata),  # type: ignore[attr-defined]
                        details.credentials, getattr(details, "wait_for_ready", None),  # type: ignore[attr-defined]
                        getattr(details, "compression", None))


class RequestIdClientInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                                 grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Sync channel interceptor: forwards the current request id as `x-request-id`.

    Use with `grpc.intercept_channel(channel, RequestIdClientInterceptor())`.
    """

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(_forwarding(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(_forwarding(client_call_details), request)

    def intercept_stream_unary(self, continuation: Any, client_call_details: Any,
                               request_iterator: Any) -> Any:
        return continuation(_forwarding(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, client_call_details: Any,
                                request_iterator: Any) -> Any:
        return continuation(_forwarding(client_call_details), request_iterator)


def _aio_forwarding(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        method=details.method, timeout=details.timeout,
        metadata=grpc.aio.Metadata(*_with_request_id(list(details.metadata or ()))),
        credentials=details.credentials, wait_for_ready=details.wait_for_ready,
    )


class AioRequestIdClientInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """grpc.aio channel interceptor that forwards the current request id as `x-request-id`.

    Use with `grpc.aio.insecure_channel(addr, interceptors=[AioRequestIdClientInterceptor()])`.
    """

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_aio_forwarding(client_call_details), request)

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_aio_forwarding(client_call_details), request)

    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any,
                                     request_iterator: Any) -> Any:
        return await continuation(_aio_forwarding(client_call_details), request_iterator)

    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any,
                                      request_iterator: Any) -> Any:
        return await continuation(_aio_forwarding(client_call_details), request_iterator)


# --------------------------------------------------------------------------- optional tracing


class TracingUnavailable(RuntimeError):
    """LOOKBOOK_OTEL_ENDPOINT is set but the OpenTelemetry packages are not installed."""


def configure_tracing(endpoint: str, service_name: str) -> bool:
    """Exports traces over OTLP/gRPC to `endpoint` when set; returns whether tracing is on.

    OpenTelemetry is not a dependency of Lookbook: install `opentelemetry-sdk`,
    `opentelemetry-exporter-otlp-proto-grpc` and `opentelemetry-instrumentation-grpc` to use it.
    """
    if not endpoint:
        return False
    try:
        from opentelemetry import trace  # type: ignore[import-not-found,unused-ignore]
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
            OTLPSpanExporter,
        )
        from opentelemetry.sdk.resources import Resource  # type: ignore[import-not-found,unused-ignore]
        from opentelemetry.sdk.trace import TracerProvider  # type: ignore[import-not-found,unused-ignore]
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise TracingUnavailable(
            f"LOOKBOOK_OTEL_ENDPOINT={endpoint!r} is set but OpenTelemetry is not installed "
            f"({exc.name} missing): "
            "run `pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-grpc "
            "opentelemetry-instrumentation-grpc`, or unset LOOKBOOK_OTEL_ENDPOINT"
        ) from None
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    try:  # spans per RPC, with context propagated gateway -> vision, when the instrumentation is there
        from opentelemetry.instrumentation.grpc import (  # type: ignore[import-not-found,unused-ignore]
            GrpcAioInstrumentorClient,
            GrpcAioInstrumentorServer,
            GrpcInstrumentorClient,
            GrpcInstrumentorServer,
        )
    except ImportError:
        log.warning("opentelemetry-instrumentation-grpc is not installed: only manual spans are exported")
    else:
        for instrumentor in (GrpcInstrumentorServer, GrpcInstrumentorClient,
                             GrpcAioInstrumentorServer, GrpcAioInstrumentorClient):
            instrumentor().instrument()
    log.info("tracing on", extra={"otel_endpoint": endpoint, "service": service_name})
    return True


def setup_observability(settings: Any, service: str) -> None:
    """What each service's start-up calls once: the metrics endpoint and, when configured, tracing."""
    start_metrics_server(settings.metrics_port)
    configure_tracing(settings.otel_endpoint, f"lookbook-{service}")
