"""What every Lookbook gRPC server shares: options, TLS, health, reflection and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared.settings import Settings

log = logging.getLogger(__name__)


def channel_options(settings: Settings) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
        ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
    ]


def new_server(settings: Settings, interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> grpc.aio.Server:
    from shared.metrics import aio_server_interceptors

    # Request ids (x-request-id into every log line) and Prometheus metrics wrap every RPC.
    return grpc.aio.server(
        interceptors=[*aio_server_interceptors(), *interceptors],
        options=channel_options(settings),
        maximum_concurrent_rpcs=settings.grpc_workers * 8,
    )


def bind(server: grpc.aio.Server, settings: Settings, port: int) -> int:
    """Binds host:port (0 picks a free port), over TLS when a certificate is configured."""
    address = f"{settings.host}:{port}"
    if settings.tls_cert and settings.tls_key:
        credentials = grpc.ssl_server_credentials([(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())])
        bound = server.add_secure_port(address, credentials)
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen on {address}: free the port or set another one in the settings")
    return bound


def add_health_and_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> health.aio.HealthServicer:
    """Health reports SERVING per service once the server is started; reflection lists the services."""
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    names = list(service_names)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    return servicer


async def set_serving(servicer: health.aio.HealthServicer, names: Iterable[str], serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *names]:
        await servicer.set(name, status)


async def wait_for_signal() -> None:
    """Returns on SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutdown signal received")


async def drain(
    servers: Sequence[tuple[grpc.aio.Server, health.aio.HealthServicer, Sequence[str]]], grace: float
) -> None:
    """Health goes NOT_SERVING first, then in-flight RPCs get `grace` seconds while new ones are refused."""
    for _, servicer, names in servers:
        await set_serving(servicer, names, False)
    await asyncio.gather(*(server.stop(grace) for server, _, _ in servers))
    log.info("servers stopped", extra={"grace_s": grace})
