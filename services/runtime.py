"""Composes the services into a running process: all-in-one (the embedded default) or one service alone.

Every service comes from its own `build_server` factory; this module only wires them to one store,
one vision pipeline and one HTTP app, starts them, and drains them on SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import uvicorn
from grpc_health.v1 import health

from shared.grpc_runtime import drain, set_serving, wait_for_signal
from shared.heap import settle_heap
from shared.settings import Settings
from shared.store import LookStore, open_store

log = logging.getLogger(__name__)
SERVICES = ("all", "gateway", "vision", "curation")


@dataclass
class Running:
    """What a started process holds; tests read the bound ports from here."""

    settings: Settings
    store: LookStore | None = None
    servers: list[tuple[grpc.aio.Server, health.aio.HealthServicer, list[str]]] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    http: uvicorn.Server | None = None
    http_task: asyncio.Task[Any] | None = None
    closers: list[Callable[[], Any]] = field(default_factory=list)

    async def stop(self, grace: float | None = None) -> None:
        await drain(self.servers, self.settings.shutdown_grace_s if grace is None else grace)
        if self.http is not None and self.http_task is not None:
            self.http.should_exit = True
            await self.http_task
        for close in reversed(self.closers):
            close()


def local_vision(settings: Settings):  # type: ignore[no-untyped-def]
    from services.vision.server import LocalVision
    from shared.models.pipeline import pipeline_for

    return LocalVision(pipeline_for(settings), settings)


def prepare_library(settings: Settings, store: LookStore, vision: Any, *, import_demo: bool = True) -> None:
    """Makes the live collection match the vision models, and fills an empty library with the demo looks."""
    from tqdm import tqdm

    from shared.library import import_looks, read_source, reembed_library, vector_dims

    dims = vector_dims((vision.pipeline.embedding_dim, vision.pipeline.compat_dim))
    live = store.live_version()
    if live is not None and live != vision.model_version:
        log.info("re-embedding the library for new models", extra={"from": live, "to": vision.model_version})
        with tqdm(desc=f"re-embed for {vision.model_version}", unit="look", file=sys.stderr) as bar:

            def step(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            reembed_library(store, analyzer=vision, images_dir=settings.images_dir, dims=dims, progress=step)
    store.ensure(vision.model_version, dims)
    if import_demo and store.count() == 0 and (settings.demo_dir / "looks.json").is_file():
        items = read_source(settings.demo_dir / "looks.json")
        with tqdm(items, desc="importing the demo library", unit="look", file=sys.stderr) as bar:
            report = import_looks(
                items,
                analyzer=vision,
                store=store,
                images_dir=settings.images_dir,
                auto_approve_quality=settings.auto_approve_quality,
                max_image_bytes=settings.max_image_bytes,
                progress=lambda _: bar.update(),
            )
        log.info("demo library imported", extra={"added": report.added, "rejected": len(report.rejected)})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def compose_curation(settings: Settings, running: Running, vision: Any) -> tuple[Any, list[Any]]:
    """The curation service and its console over the shared store, with imports on the library runner."""
    from services.curation.console import console_routes
    from services.curation.imports import BoardImportJobs
    from services.curation.ledger import Ledger
    from services.curation.server import build_server as curation_server
    from services.workers.embedded import library_runner

    assert running.store is not None
    store = running.store
    ledger = Ledger.in_data_dir(settings.data_dir)
    runner = library_runner(settings, store=store, analyzer_factory=(lambda: vision) if vision else None)
    running.closers.append(runner.close)
    jobs = BoardImportJobs(runner.jobs, runner.launch, check_source=runner.check_source)

    def build(bind_port: int) -> Any:
        return curation_server(settings, store, ledger=ledger, jobs=jobs, port=bind_port)

    return build, console_routes(settings, store, ledger=ledger, jobs=jobs)


async def start_http(settings: Settings, running: Running, extra_routes: list[Any]) -> None:
    """Serves look images, crops and (when given) the console; returns once the socket listens."""
    from services.http_app import build_http_app

    assert running.store is not None
    app = build_http_app(settings, running.store, extra_routes)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.http_port, log_config=None, access_log=False, lifespan="off"
    )
    running.http = uvicorn.Server(config)
    running.http_task = asyncio.create_task(running.http.serve())
    while not running.http.started:
        if running.http_task.done():
            running.http_task.result()
            raise OSError(
                f"the HTTP server could not listen on {settings.host}:{settings.http_port}: "
                "free the port or set LOOKBOOK_HTTP_PORT"
            )
        await asyncio.sleep(0.02)
    running.ports["http"] = settings.http_port


async def start(
    settings: Settings, service: str = "all", *, import_demo: bool = True, random_ports: bool = False
) -> Running:
    """Starts the named service(s); ports are taken from settings, or picked free with random_ports."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}: use one of {', '.join(SERVICES)}")
    if random_ports:
        # Image URIs name the HTTP port, so it is picked before anything that builds them.
        settings = settings.model_copy(update={"http_port": free_port()})
    running = Running(settings)
    from shared.metrics import setup_observability

    setup_observability(settings, service)
    port = (lambda configured: 0) if random_ports else (lambda configured: configured)
    try:
        vision = None
        if service in ("all", "vision") or (service == "gateway" and not settings.vision_addr):
            vision = await asyncio.to_thread(local_vision, settings)
        if service in ("all", "gateway", "curation"):
            store = open_store(settings)
            running.store = store
            running.closers.append(store.close)
            if vision is not None:
                await asyncio.to_thread(prepare_library, settings, store, vision, import_demo=import_demo)
        extra_routes: list[Any] = []
        curation = None
        if running.store is not None and service in ("all", "curation"):
            curation, extra_routes = compose_curation(settings, running, vision)
        if running.store is not None:
            await start_http(settings, running, extra_routes)
        if service in ("all", "vision"):
            from services.vision.server import build_server as vision_server

            assert vision is not None

            server, health_servicer, bound, names = vision_server(settings, vision, port(settings.vision_port))
            running.servers.append((server, health_servicer, names))
            running.ports["vision"] = bound
        if service in ("all", "gateway"):
            from services.gateway.server import build_server as gateway_server

            gateway_vision = vision
            if gateway_vision is None:
                from services.vision.client import RemoteVision

                gateway_vision = RemoteVision(settings)
            assert running.store is not None
            server, health_servicer, bound, names = gateway_server(
                settings, gateway_vision, running.store, port(settings.gateway_port)
            )
            running.servers.append((server, health_servicer, names))
            running.ports["gateway"] = bound
        if curation is not None:
            server, health_servicer, bound, names = curation(port(settings.curation_port))
            running.servers.append((server, health_servicer, names))
            running.ports["curation"] = bound
        for server, health_servicer, names in running.servers:
            await server.start()
            await set_serving(health_servicer, names, True)
    except BaseException:
        await running.stop(grace=0)
        raise
    log.info("serving", extra={"service": service, "ports": running.ports, "mode": settings.mode.value})
    return running


async def serve_forever(settings: Settings, service: str = "all") -> None:
    running = await start(settings, service)
    settle_heap()  # a long-lived server: keep its start-up objects out of every later collection
    host = settings.host
    lines = [f"Lookbook is serving ({service}, {settings.mode.value} mode):"]
    for name, bound in running.ports.items():
        lines.append(f"  {name:<8} {host}:{bound}")
    if "gateway" in running.ports:
        lines.append(f"Try it:   .venv/bin/lookbook match PHOTO.jpg --gateway {host}:{running.ports['gateway']}")
    if "curation" in running.ports:
        lines.append(f"Console:  {settings.base_url}/console/  (create an editor: .venv/bin/lookbook editors add NAME)")
    print("\n".join(lines), flush=True)
    await wait_for_signal()
    await running.stop()
