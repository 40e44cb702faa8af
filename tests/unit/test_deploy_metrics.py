"""The metrics and request-id interceptors of shared/metrics.py, on real gRPC servers bound to port 0."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from concurrent import futures

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1 import health as sync_health
from prometheus_client import CollectorRegistry, Counter

from shared import metrics as lookbook_metrics
from shared.logs import request_id
from shared.metrics import (
    REQUEST_ID_KEY,
    AioObservingServerInterceptor,
    AioRequestIdClientInterceptor,
    Metrics,
    ObservingServerInterceptor,
    RequestIdClientInterceptor,
    TracingUnavailable,
    configure_tracing,
    request_id_from,
    start_metrics_server,
    stop_metrics_servers,
)

pytestmark = pytest.mark.unit

HEALTH = "grpc.health.v1.Health"
WHOAMI = "/lookbook.test.v1.Probe/WhoAmI"
RELAY = "/lookbook.test.v1.Probe/Relay"


def _identity(data: bytes) -> bytes:
    return data


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return found or 0.0


def _probe_handler(relay_target: str | None = None) -> grpc.GenericRpcHandler:
    """WhoAmI answers the request id its handler sees; Relay calls another's WhoAmI (gateway -> vision)."""

    def whoami(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request_id.get().encode()

    def relay(request: bytes, context: grpc.ServicerContext) -> bytes:
        assert relay_target is not None
        with grpc.insecure_channel(relay_target) as raw:
            channel = grpc.intercept_channel(raw, RequestIdClientInterceptor())
            call = channel.unary_unary(WHOAMI, request_serializer=_identity, response_deserializer=_identity)
            downstream: bytes = call(b"", timeout=10)
        return request_id.get().encode() + b"|" + downstream

    handlers = {
        "WhoAmI": grpc.unary_unary_rpc_method_handler(whoami, _identity, _identity),
        "Relay": grpc.unary_unary_rpc_method_handler(relay, _identity, _identity),
    }
    return grpc.method_handlers_generic_handler("lookbook.test.v1.Probe", handlers)


def _sync_server(registry_metrics: Metrics, relay_target: str | None = None) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         interceptors=[ObservingServerInterceptor(registry_metrics=registry_metrics)])
    servicer = sync_health.HealthServicer()
    servicer.set("lookbook.outfit.v1.OutfitService", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((_probe_handler(relay_target),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture()
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture()
def sync_target(registry: CollectorRegistry) -> Iterator[tuple[str, CollectorRegistry]]:
    server, target = _sync_server(Metrics.create(registry))
    yield target, registry
    server.stop(None)


def test_sync_interceptor_counts_ok_and_not_found(sync_target: tuple[str, CollectorRegistry]) -> None:
    target, registry = sync_target
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        ok = stub.Check(health_pb2.HealthCheckRequest(service="lookbook.outfit.v1.OutfitService"), timeout=10)
        assert ok.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as missing:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    rpc = {"grpc_service": HEALTH, "grpc_method": "Check"}
    assert _value(registry, "lookbook_grpc_requests_total", **rpc, grpc_code="OK") == 1
    assert _value(registry, "lookbook_grpc_requests_total", **rpc, grpc_code="NOT_FOUND") == 1
    assert _value(registry, "lookbook_grpc_errors_total", **rpc, grpc_code="NOT_FOUND") == 1
    assert _value(registry, "lookbook_grpc_errors_total", **rpc, grpc_code="OK") == 0
    assert _value(registry, "lookbook_grpc_request_seconds_count", **rpc) == 2
    assert _value(registry, "lookbook_grpc_in_flight", **rpc) == 0


def test_sync_interceptor_wraps_server_streaming(sync_target: tuple[str, CollectorRegistry]) -> None:
    target, registry = sync_target
    with grpc.insecure_channel(target) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="lookbook.outfit.v1.OutfitService"), timeout=10)
        first = next(stream)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stream.cancel()
    rpc = {"grpc_service": HEALTH, "grpc_method": "Watch"}
    # The cancelled stream is recorded once the server notices; it must never stay in flight twice.
    assert _value(registry, "lookbook_grpc_in_flight", **rpc) <= 1


def test_request_id_is_kept_or_created(sync_target: tuple[str, CollectorRegistry]) -> None:
    target, _ = sync_target
    with grpc.insecure_channel(target) as channel:
        whoami = channel.unary_unary(WHOAMI, request_serializer=_identity, response_deserializer=_identity)
        assert whoami(b"", metadata=((REQUEST_ID_KEY, "req-42"),), timeout=10) == b"req-42"
        created = whoami(b"", timeout=10).decode()
        assert len(created) == 32 and created != "req-42"
        # Junk from the caller is not written into logs verbatim.
        replaced = whoami(b"", metadata=((REQUEST_ID_KEY, "x" * 500),), timeout=10).decode()
        assert replaced != "x" * 500 and len(replaced) == 32
    assert request_id.get() == ""


def test_request_id_travels_gateway_to_vision(registry: CollectorRegistry) -> None:
    vision, vision_target = _sync_server(Metrics.create(registry))
    gateway, gateway_target = _sync_server(Metrics.create(CollectorRegistry()), relay_target=vision_target)
    try:
        with grpc.insecure_channel(gateway_target) as channel:
            relay = channel.unary_unary(RELAY, request_serializer=_identity, response_deserializer=_identity)
            answer = relay(b"", metadata=((REQUEST_ID_KEY, "trace-me-1"),), timeout=10)
        assert answer == b"trace-me-1|trace-me-1"
        labels = {"grpc_service": "lookbook.test.v1.Probe", "grpc_method": "WhoAmI", "grpc_code": "OK"}
        assert _value(registry, "lookbook_grpc_requests_total", **labels) == 1
    finally:
        gateway.stop(None)
        vision.stop(None)


def test_aio_interceptors_count_and_forward_request_ids(registry: CollectorRegistry) -> None:
    async def scenario() -> None:
        server = grpc.aio.server(interceptors=[AioObservingServerInterceptor(
            registry_metrics=Metrics.create(registry))])
        servicer = health.aio.HealthServicer()
        await servicer.set("lookbook.vision.v1.VisionService", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)

        async def whoami(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return request_id.get().encode()

        probe = {"WhoAmI": grpc.unary_unary_rpc_method_handler(whoami, _identity, _identity)}
        probe_handler = grpc.method_handlers_generic_handler("lookbook.test.v1.Probe", probe)
        server.add_generic_rpc_handlers((probe_handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                                 interceptors=[AioRequestIdClientInterceptor()]) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                vision = health_pb2.HealthCheckRequest(service="lookbook.vision.v1.VisionService")
                reply = await stub.Check(vision, timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                with pytest.raises(grpc.aio.AioRpcError) as missing:
                    await stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND
                watch = stub.Watch(health_pb2.HealthCheckRequest(service="lookbook.vision.v1.VisionService"),
                                   timeout=10)
                first = await watch.read()
                assert first.status == health_pb2.HealthCheckResponse.SERVING
                watch.cancel()

                whoami_call = channel.unary_unary(WHOAMI, request_serializer=_identity,
                                                  response_deserializer=_identity)
                token = request_id.set("from-gateway-7")
                try:
                    assert await whoami_call(b"", timeout=10) == b"from-gateway-7"
                finally:
                    request_id.reset(token)
                assert len(await whoami_call(b"", timeout=10)) == 32
        finally:
            await server.stop(None)

    asyncio.run(scenario())
    rpc = {"grpc_service": HEALTH, "grpc_method": "Check"}
    assert _value(registry, "lookbook_grpc_requests_total", **rpc, grpc_code="OK") == 1
    assert _value(registry, "lookbook_grpc_errors_total", **rpc, grpc_code="NOT_FOUND") == 1
    assert _value(registry, "lookbook_grpc_request_seconds_count", **rpc) == 2
    assert _value(registry, "lookbook_grpc_requests_total", grpc_service="lookbook.test.v1.Probe",
                  grpc_method="WhoAmI", grpc_code="OK") == 2


def test_sync_handler_exception_counts_as_unknown(registry: CollectorRegistry) -> None:
    def broken(request: bytes, context: grpc.ServicerContext) -> bytes:
        raise RuntimeError("boom")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                         interceptors=[ObservingServerInterceptor(registry_metrics=Metrics.create(registry))])
    probe = {"Broken": grpc.unary_unary_rpc_method_handler(broken, _identity, _identity)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("lookbook.test.v1.Probe", probe),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/lookbook.test.v1.Probe/Broken", request_serializer=_identity,
                                       response_deserializer=_identity)
            with pytest.raises(grpc.RpcError) as failed:
                call(b"", timeout=10)
            assert failed.value.code() == grpc.StatusCode.UNKNOWN
    finally:
        server.stop(None)
    assert _value(registry, "lookbook_grpc_errors_total", grpc_service="lookbook.test.v1.Probe",
                  grpc_method="Broken", grpc_code="UNKNOWN") == 1


def test_request_id_from_metadata() -> None:
    assert request_id_from([("other", "1"), (REQUEST_ID_KEY, b"abc-1")]) == "abc-1"
    assert len(request_id_from([(REQUEST_ID_KEY, "bad id with spaces")])) == 32
    assert len(request_id_from(None)) == 32


def test_metrics_endpoint_serves_and_zero_disables() -> None:
    registry = CollectorRegistry()
    Counter("lookbook_probe", "A probe counter.", registry=registry).inc(3)
    assert start_metrics_server(0, registry=registry) is None
    with __import__("socket").socket() as sock:  # a free port: the endpoint itself has no port-0 mode
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        assert start_metrics_server(port, addr="127.0.0.1", registry=registry) == port
        assert start_metrics_server(port, addr="127.0.0.1", registry=registry) == port  # idempotent
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            body = response.read().decode()
        assert "lookbook_probe_total 3.0" in body
    finally:
        stop_metrics_servers()


def test_default_metrics_helpers_register_once() -> None:
    lookbook_metrics.count_ingested("test")
    lookbook_metrics.count_ingest_failure("timeout")
    lookbook_metrics.count_quarantined("corrupt")
    lookbook_metrics.observe_queue_depth("library", 7)
    lookbook_metrics.record_model_load("backbone", 1.5)
    assert lookbook_metrics.metrics() is lookbook_metrics.metrics()


def test_tracing_off_without_endpoint_and_clear_when_packages_missing() -> None:
    assert configure_tracing("", "lookbook-test") is False
    try:
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        with pytest.raises(TracingUnavailable, match="LOOKBOOK_OTEL_ENDPOINT"):
            configure_tracing("http://collector:4317", "lookbook-test")
