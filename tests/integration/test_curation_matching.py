"""Curation in the all-in-one process: statuses set through CurationService show in MatchOutfit at once,
and StartImport runs a real import on the refresh workers' runner.

Runs the all-in-one process (gateway, vision, store, curation) on the first demo looks. A rejected
or pending look never matches on any path or kind; approving brings it back; featuring it flags
it and adds LOOKBOOK_FEATURED_BOOST to its score.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from lookbook.common.v1 import garment_pb2
from lookbook.curation.v1 import curation_pb2, curation_pb2_grpc
from lookbook.outfit.v1 import outfit_pb2, outfit_pb2_grpc
from PIL import Image

from services.curation.ledger import Ledger
from shared.settings import Settings, load_settings
from shared.store import LookFilter, LookRecord
from tests.servers import ServiceThread

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEMO_LOOKS = 16
PASSWORD = "correct-horse-battery"
PATHS = (outfit_pb2.RANKING_PATH_BLEND, outfit_pb2.RANKING_PATH_LOOK_ALIKE, outfit_pb2.RANKING_PATH_COMPATIBILITY)


@dataclass
class Library:
    service: ServiceThread
    settings: Settings
    curation: curation_pb2_grpc.CurationServiceStub
    gateway: outfit_pb2_grpc.OutfitServiceStub
    auth: list[tuple[str, str]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _small_demo(folder: Path) -> Path:
    manifest = json.loads((REPO / "demo" / "looks.json").read_text())
    subset = [dict(rec, image=str(REPO / "demo" / rec["image"])) for rec in manifest[:DEMO_LOOKS]]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "looks.json").write_text(json.dumps(subset))
    return folder


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Library]:
    root = tmp_path_factory.mktemp("matching")
    with pytest.MonkeyPatch.context() as env:
        for key in [k for k in os.environ if k.upper().startswith("LOOKBOOK_")]:
            env.delenv(key)
        settings = load_settings(
            data_dir=root / "data",
            demo_dir=_small_demo(root / "demo"),
            gateway_port=free_port(),
            vision_port=free_port(),
            curation_port=free_port(),
            http_port=free_port(),
            torch_threads=2,
        )
    service = ServiceThread(settings, "all", import_demo=True)
    channels: list[grpc.Channel] = []
    servers = []
    try:
        running = service.running
        assert running.store is not None
        Ledger.in_data_dir(settings.data_dir).add_editor("ada", PASSWORD)
        if "curation" in running.ports:
            curation_address = service.address("curation")
        else:  # a process that does not compose curation yet: serve it on the same store
            from services.curation.imports import BoardImportJobs
            from services.curation.server import build_server
            from services.workers.embedded import library_runner

            runner = library_runner(running.settings, store=running.store)
            jobs = BoardImportJobs(runner.jobs, runner.launch, check_source=runner.check_source)
            server, _, port, _ = build_server(running.settings, running.store, jobs=jobs, port=0)
            service.call(server.start())
            servers.append(server)
            curation_address = f"127.0.0.1:{port}"
        channels = [grpc.insecure_channel(curation_address), grpc.insecure_channel(service.address("gateway"))]
        curation = curation_pb2_grpc.CurationServiceStub(channels[0])
        token = curation.Login(curation_pb2.LoginRequest(editor="ada", password=PASSWORD), timeout=60).token
        yield Library(
            service,
            running.settings,
            curation,
            outfit_pb2_grpc.OutfitServiceStub(channels[1]),
            [("authorization", f"Bearer {token}")],
        )
    finally:
        for channel in channels:
            channel.close()
        for server in servers:
            service.call(server.stop(0))
        service.stop()


def _crop(settings: Settings, look: LookRecord, box: tuple[float, float, float, float]) -> bytes:
    with Image.open(settings.images_dir / look.image_path) as image:
        piece = image.convert("RGB").crop(tuple(int(v) for v in box))  # type: ignore[arg-type]
    out = io.BytesIO()
    piece.save(out, format="JPEG", quality=92)
    return out.getvalue()


def _matches(lib: Library, photo: bytes, kind: int, path: int) -> list[outfit_pb2.Match]:
    """The matches; none for a path whose model this server has not shipped (FAILED_PRECONDITION)."""
    try:
        reply = lib.gateway.MatchOutfit(
            outfit_pb2.MatchOutfitRequest(image=photo, kind=kind, limit=lib.settings.max_limit, path=path),  # type: ignore[arg-type]
            timeout=120,
        )
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and path != outfit_pb2.RANKING_PATH_LOOK_ALIKE:
            return []
        raise
    return list(reply.matches)


def _set(lib: Library, look_id: str, status: int) -> garment_pb2.Look:
    current = lib.curation.GetLook(curation_pb2.GetLookRequest(look_id=look_id), metadata=lib.auth, timeout=60)
    return lib.curation.SetStatus(
        curation_pb2.SetStatusRequest(look_id=look_id, status=status, expected_version=current.version),  # type: ignore[arg-type]
        metadata=lib.auth,
        timeout=60,
    )


@pytest.fixture(scope="module")
def target(library: Library) -> tuple[LookRecord, bytes, bytes]:
    """An approved look that its own top crop finds on the look-alike path, with its top and bottom crops."""
    store = library.service.running.store
    assert store is not None
    for look in store.scroll(LookFilter(statuses=("approved",)), limit=DEMO_LOOKS).looks:
        if look.top_box is None or look.bottom_box is None:
            continue
        top = _crop(library.settings, look, look.top_box)
        found = _matches(library, top, outfit_pb2.QUERY_KIND_TOP, outfit_pb2.RANKING_PATH_LOOK_ALIKE)
        if look.look_id in [m.look_id for m in found]:
            return look, top, _crop(library.settings, look, look.bottom_box)
    raise AssertionError("no approved demo look is found by its own top crop: check the demo import")


def test_rejected_and_pending_looks_never_match(library: Library, target: tuple[LookRecord, bytes, bytes]) -> None:
    look, top, bottom = target
    for status in (garment_pb2.LOOK_STATUS_REJECTED, garment_pb2.LOOK_STATUS_PENDING):
        _set(library, look.look_id, status)
        for photo, kind in ((top, outfit_pb2.QUERY_KIND_TOP), (bottom, outfit_pb2.QUERY_KIND_BOTTOM)):
            for path in PATHS:
                ids = [m.look_id for m in _matches(library, photo, kind, path)]
                assert look.look_id not in ids, (status, kind, path)
    _set(library, look.look_id, garment_pb2.LOOK_STATUS_APPROVED)
    ids = [m.look_id for m in _matches(library, top, outfit_pb2.QUERY_KIND_TOP, outfit_pb2.RANKING_PATH_LOOK_ALIKE)]
    assert look.look_id in ids


def test_featuring_flags_the_look_and_boosts_its_score(
    library: Library, target: tuple[LookRecord, bytes, bytes]
) -> None:
    look, top, _ = target
    _set(library, look.look_id, garment_pb2.LOOK_STATUS_APPROVED)
    path, kind = outfit_pb2.RANKING_PATH_LOOK_ALIKE, outfit_pb2.QUERY_KIND_TOP
    before = next(m for m in _matches(library, top, kind, path) if m.look_id == look.look_id)
    assert not before.featured
    _set(library, look.look_id, garment_pb2.LOOK_STATUS_FEATURED)
    after = next(m for m in _matches(library, top, kind, path) if m.look_id == look.look_id)
    assert after.featured
    assert after.score == pytest.approx(before.score + library.settings.featured_boost, abs=1e-4)


def test_start_import_runs_on_the_workers_and_reports_progress(library: Library, tmp_path: Path) -> None:
    manifest = json.loads((REPO / "demo" / "looks.json").read_text())
    fresh = [dict(rec, image=str(REPO / "demo" / rec["image"]), status="pending") for rec in manifest[-2:]]
    source = tmp_path / "looks.json"
    source.write_text(json.dumps(fresh))
    with pytest.raises(grpc.RpcError) as caught:
        library.curation.StartImport(
            curation_pb2.StartImportRequest(source=str(tmp_path / "missing")), metadata=library.auth, timeout=60
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    job = library.curation.StartImport(
        curation_pb2.StartImportRequest(source=str(source)), metadata=library.auth, timeout=60
    )
    assert job.job_id and job.requested_by == "ada"
    deadline = time.monotonic() + 600
    while job.state not in (curation_pb2.IMPORT_STATE_SUCCEEDED, curation_pb2.IMPORT_STATE_FAILED):
        assert time.monotonic() < deadline, f"import job still {job.state} after 600 s"
        time.sleep(0.5)
        job = library.curation.GetImportJob(
            curation_pb2.GetImportJobRequest(job_id=job.job_id), metadata=library.auth, timeout=60
        )
    assert job.state == curation_pb2.IMPORT_STATE_SUCCEEDED, job.error
    assert job.imported == 2 and job.processed == job.total == 2
    listed = library.curation.ListImportJobs(curation_pb2.ListImportJobsRequest(), metadata=library.auth, timeout=60)
    assert job.job_id in [j.job_id for j in listed.jobs]
    pending = library.curation.ListLooks(
        curation_pb2.ListLooksRequest(statuses=[garment_pb2.LOOK_STATUS_PENDING], page_size=100),
        metadata=library.auth,
        timeout=60,
    )
    assert len({look.look_id for look in pending.looks}) >= 2
