"""The whole system as a user runs it: `lookbook serve` in its own process, called through the public API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lookbook.common.v1 import garment_pb2
from lookbook.outfit.v1 import outfit_pb2, outfit_pb2_grpc

from shared.images import crop_jpeg
from shared.library import read_source
from shared.store import look_id_for
from tests.support import DEMO, REPO, free_port

pytestmark = pytest.mark.e2e
START_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    data_dir = tmp_path_factory.mktemp("e2e-data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKBOOK_")}
    ports = {name: free_port() for name in ("GATEWAY", "VISION", "CURATION", "HTTP", "METRICS")}
    env.update({f"LOOKBOOK_{name}_PORT": str(port) for name, port in ports.items()})
    env.update({"LOOKBOOK_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"})
    log = (data_dir / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    address = f"127.0.0.1:{ports['GATEWAY']}"
    deadline = time.monotonic() + START_TIMEOUT_S
    assert process.stdout is not None
    banner = ""
    while "Lookbook is serving" not in banner:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            pytest.fail(
                f"lookbook serve exited with {process.returncode}: {(data_dir / 'serve.log').read_text()[-3000:]}"
            )
        banner += line
        assert time.monotonic() < deadline, "lookbook serve did not start in time"
    yield process, address, data_dir
    if process.poll() is None:
        process.terminate()
        process.wait(60)
    log.close()


def test_a_top_photo_returns_its_looks_bottom(server: tuple[subprocess.Popen[str], str, Path]) -> None:
    _, address, _ = server
    item = read_source(DEMO / "looks.json")[7]
    top = next(k.box for k in item.known if k.kind == "top")
    query = crop_jpeg(item.path, top)
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        response = outfit_pb2_grpc.OutfitServiceStub(channel).MatchOutfit(
            outfit_pb2.MatchOutfitRequest(image=query, kind=outfit_pb2.QUERY_KIND_TOP), timeout=60
        )
    assert response.query.kind == garment_pb2.GARMENT_KIND_TOP
    ids = [m.look_id for m in response.matches]
    assert look_id_for(item.path.read_bytes()) in ids
    assert all(m.garment_kind == garment_pb2.GARMENT_KIND_BOTTOM for m in response.matches)


def test_sigterm_drains_and_exits_cleanly(server: tuple[subprocess.Popen[str], str, Path]) -> None:
    process, _, _ = server
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
