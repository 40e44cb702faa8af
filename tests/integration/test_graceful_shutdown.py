"""Graceful shutdown of a real server: health goes NOT_SERVING first, the call in flight completes, new
calls are refused.

The in-flight MatchOutfit is held inside the real vision pipeline by a gate (the pipeline's analyze
waits on an event before running), so "in flight" is certain rather than a matter of timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lookbook.outfit.v1 import outfit_pb2, outfit_pb2_grpc

from shared.images import crop_jpeg
from shared.library import import_looks, read_source
from shared.models.pipeline import VisionPipeline
from tests.servers import ServiceThread
from tests.support import DEMO, free_port

pytestmark = pytest.mark.integration
OUTFIT = "lookbook.outfit.v1.OutfitService"


class Gate:
    """Holds every analyze call while closed; counts the calls that are waiting."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.waiting = threading.Semaphore(0)


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> Gate:
    gate = Gate()
    real = VisionPipeline.analyze

    def analyze(self: VisionPipeline, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if not gate.open.is_set():
            gate.waiting.release()
            assert gate.open.wait(60), "the test never opened the gate"
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(VisionPipeline, "analyze", analyze)
    return gate


@pytest.fixture
def service(gated: Gate, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    from services.runtime import local_vision
    from shared.settings import load_settings

    settings = load_settings(data_dir=tmp_path_factory.mktemp("data"), http_port=free_port(), torch_threads=2)
    svc = ServiceThread(settings, "all")
    assert svc.running.store is not None
    import_looks(
        read_source(DEMO / "looks.json")[:4],
        analyzer=local_vision(settings),
        store=svc.running.store,
        images_dir=settings.images_dir,
        auto_approve_quality=1.0,
        max_image_bytes=settings.max_image_bytes,
    )
    yield svc
    gated.open.set()
    # The test has usually stopped the servers already; this also stops the event loop.
    with contextlib.suppress(Exception):
        svc.stop()


def _query() -> bytes:
    item = read_source(DEMO / "looks.json")[0]
    return crop_jpeg(item.path, next(k.box for k in item.known if k.kind == "top"))


def test_sigterm_path_health_first_in_flight_completes_new_refused(service: ServiceThread, gated: Gate) -> None:
    address = service.address("gateway")
    query = _query()
    request = outfit_pb2.MatchOutfitRequest(image=query, kind=outfit_pb2.QUERY_KIND_TOP)

    with grpc.insecure_channel(address) as channel:
        # Health is watched from before the shutdown, as a load balancer would.
        statuses: list[int] = []
        seen_not_serving = threading.Event()
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=OUTFIT), timeout=60)

        def follow() -> None:
            try:
                for update in watch:
                    statuses.append(update.status)
                    if update.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        seen_not_serving.set()
            except grpc.RpcError:
                pass  # the stream ends when the server stops

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()

        # One MatchOutfit in flight, held inside the vision pipeline.
        gated.open.clear()
        in_flight = outfit_pb2_grpc.OutfitServiceStub(channel).MatchOutfit.future(request, timeout=60)
        assert gated.waiting.acquire(timeout=30), "the MatchOutfit call never reached the vision pipeline"

        # The same path as SIGTERM: services.runtime.Running.stop -> shared.grpc_runtime.drain.
        stopping = asyncio.run_coroutine_threadsafe(service.running.stop(15), service.loop)
        assert seen_not_serving.wait(10), f"health never went NOT_SERVING (saw {statuses})"
        assert statuses[0] == health_pb2.HealthCheckResponse.SERVING

        # A new call, on a new connection, is refused while the old one is still running.
        deadline = time.monotonic() + 10
        refused: grpc.RpcError | None = None
        while refused is None and time.monotonic() < deadline:
            with grpc.insecure_channel(address) as fresh:
                try:
                    outfit_pb2_grpc.OutfitServiceStub(fresh).MatchOutfit(request, timeout=3)
                except grpc.RpcError as error:
                    refused = error
            time.sleep(0.1)
        assert refused is not None, "a new call was served during the drain"
        assert refused.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert not in_flight.done(), "the in-flight call ended before it was released"

        # Released, the in-flight call completes normally within the grace period.
        gated.open.set()
        response = in_flight.result(timeout=60)
        assert response.matches, "the in-flight call completed without its matches"
        stopping.result(timeout=60)
        follower.join(10)
