"""The gateway and vision services over real gRPC, with the real backbone and a real Qdrant Edge shard."""

from __future__ import annotations

import io
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lookbook.common.v1 import garment_pb2
from lookbook.outfit.v1 import outfit_pb2, outfit_pb2_grpc
from lookbook.vision.v1 import vision_pb2, vision_pb2_grpc
from PIL import Image

from shared.images import crop_jpeg
from shared.library import import_looks, read_source
from shared.store import look_id_for
from tests.servers import ServiceThread
from tests.support import DEMO

pytestmark = pytest.mark.integration
N_LOOKS = 16


def demo_items() -> list:
    return read_source(DEMO / "looks.json")[:N_LOOKS]


def crop_bytes(item, kind: str) -> bytes:  # type: ignore[no-untyped-def]
    return crop_jpeg(item.path, next(k.box for k in item.known if k.kind == kind))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    from shared.settings import load_settings
    from tests.support import free_port

    settings = load_settings(
        data_dir=tmp_path_factory.mktemp("data"),
        http_port=free_port(),
        torch_threads=2,
        max_image_pixels=20_000_000,
    )
    svc = ServiceThread(settings, "all")
    running = svc.running
    from services.runtime import local_vision

    analyzer = local_vision(settings)
    import_looks(
        demo_items(),
        analyzer=analyzer,
        store=running.store,
        images_dir=settings.images_dir,
        auto_approve_quality=1.0,
        max_image_bytes=settings.max_image_bytes,
    )
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def outfit(service: ServiceThread) -> Iterator[outfit_pb2_grpc.OutfitServiceStub]:
    with grpc.insecure_channel(
        service.address("gateway"), options=[("grpc.max_send_message_length", 64 * 2**20)]
    ) as channel:
        yield outfit_pb2_grpc.OutfitServiceStub(channel)


def match(stub: outfit_pb2_grpc.OutfitServiceStub, image: bytes, **kw: object) -> outfit_pb2.MatchOutfitResponse:
    return stub.MatchOutfit(outfit_pb2.MatchOutfitRequest(image=image, **kw), timeout=60)  # type: ignore[arg-type]


def test_top_crop_returns_its_own_looks_bottom(
    outfit: outfit_pb2_grpc.OutfitServiceStub, service: ServiceThread
) -> None:
    item = demo_items()[3]
    response = match(outfit, crop_bytes(item, "top"), kind=outfit_pb2.QUERY_KIND_TOP)
    assert response.query.kind == garment_pb2.GARMENT_KIND_TOP
    assert response.model_version
    assert response.matches, "an approved library must answer"
    first = response.matches[0]
    assert first.look_id == look_id_for(item.path.read_bytes())
    own = service.running.store.get(first.look_id)
    assert own is not None
    assert first.garment_kind == garment_pb2.GARMENT_KIND_BOTTOM
    assert first.garment_box.y1 > first.garment_box.y0
    assert 0 < first.path_scores.look_alike <= 1.0001
    # The URIs the app gets can be fetched.
    with urllib.request.urlopen(first.image_uri, timeout=10) as reply:
        assert Image.open(io.BytesIO(reply.read())).size == (own.width, own.height)
    with urllib.request.urlopen(first.crop_uri, timeout=10) as reply:
        assert reply.headers["Content-Type"] == "image/jpeg"


def test_pending_looks_are_never_matched(outfit: outfit_pb2_grpc.OutfitServiceStub, service: ServiceThread) -> None:
    item = demo_items()[5]
    store = service.running.store
    first = match(outfit, crop_bytes(item, "top"), kind=outfit_pb2.QUERY_KIND_TOP).matches[0]
    look = store.get(first.look_id)
    store.update_look(look.look_id, {"status": "rejected"})
    try:
        again = match(outfit, crop_bytes(item, "top"), kind=outfit_pb2.QUERY_KIND_TOP, limit=50)
        assert first.look_id not in {m.look_id for m in again.matches}
        with pytest.raises(grpc.RpcError) as err:
            outfit.GetLook(outfit_pb2.GetLookRequest(look_id=first.look_id), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        store.update_look(look.look_id, {"status": "approved"})


def test_bottom_query_returns_tops(outfit: outfit_pb2_grpc.OutfitServiceStub) -> None:
    response = match(outfit, crop_bytes(demo_items()[2], "bottom"), kind=outfit_pb2.QUERY_KIND_BOTTOM, limit=3)
    assert len(response.matches) == 3
    assert all(m.garment_kind == garment_pb2.GARMENT_KIND_TOP for m in response.matches)
    scores = [m.score for m in response.matches]
    assert scores == sorted(scores, reverse=True)


def test_tag_filter_only_returns_tagged_looks(outfit: outfit_pb2_grpc.OutfitServiceStub) -> None:
    response = match(outfit, crop_bytes(demo_items()[0], "top"), kind=outfit_pb2.QUERY_KIND_TOP, tags=["skirt"])
    assert response.matches
    assert all("skirt" in m.tags for m in response.matches)


def test_get_look(outfit: outfit_pb2_grpc.OutfitServiceStub) -> None:
    first = match(outfit, crop_bytes(demo_items()[1], "top"), kind=outfit_pb2.QUERY_KIND_TOP).matches[0]
    look = outfit.GetLook(outfit_pb2.GetLookRequest(look_id=first.look_id), timeout=10)
    assert look.look_id == first.look_id and look.HasField("bottom_box")
    for bad, code in (
        ("not-a-uuid", grpc.StatusCode.INVALID_ARGUMENT),
        ("00000000-0000-0000-0000-000000000000", grpc.StatusCode.NOT_FOUND),
    ):
        with pytest.raises(grpc.RpcError) as err:
            outfit.GetLook(outfit_pb2.GetLookRequest(look_id=bad), timeout=10)
        assert err.value.code() == code
        assert err.value.details()


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def bad_inputs() -> dict[str, bytes]:
    good = (DEMO / "images" / "0007.jpg").read_bytes()
    return {
        "empty": b"",
        "corrupt": b"\xff\xd8\xff\xe0" + b"\x00garbage" * 100,
        "truncated": good[: len(good) // 2],
        "cut inside its header": good[:200],
        "50 megapixel png": _png(10_000, 5_000),
        "text file": b"this is not a photo\n" * 50,
        "20 MB message": b"\xff\xd8\xff" + b"\x00" * (20 * 2**20),
    }


@pytest.mark.parametrize("name", list(bad_inputs()))
def test_bad_input_is_invalid_argument_and_server_keeps_serving(
    name: str, outfit: outfit_pb2_grpc.OutfitServiceStub, service: ServiceThread
) -> None:
    before = service.running.store.count()
    with pytest.raises(grpc.RpcError) as err:
        match(outfit, bad_inputs()[name])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert len(err.value.details()) > 20
    assert service.running.store.count() == before
    # ... and it still answers a good request.
    assert match(outfit, crop_bytes(demo_items()[0], "top"), kind=outfit_pb2.QUERY_KIND_TOP).matches


@pytest.mark.parametrize("limit", [-1, 10_000])
def test_bad_limit(limit: int, outfit: outfit_pb2_grpc.OutfitServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        match(outfit, crop_bytes(demo_items()[0], "top"), limit=limit)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit" in err.value.details()


def test_deadline_is_honoured(outfit: outfit_pb2_grpc.OutfitServiceStub) -> None:
    request = outfit_pb2.MatchOutfitRequest(image=crop_bytes(demo_items()[0], "top"))
    with pytest.raises(grpc.RpcError) as err:
        outfit.MatchOutfit(request, timeout=0.001)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_health_and_reflection(service: ServiceThread) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    for name, svc in (
        ("gateway", "lookbook.outfit.v1.OutfitService"),
        ("vision", "lookbook.vision.v1.VisionService"),
    ):
        with grpc.insecure_channel(service.address(name)) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=svc), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            names = {s.name for reply in replies for s in reply.list_services_response.service}
            assert svc in names


def test_vision_analyze_and_batch(service: ServiceThread) -> None:
    items = [i for i in demo_items() if {k.kind for k in i.known} >= {"top", "bottom"}]
    assert len(items) >= 8
    with grpc.insecure_channel(service.address("vision")) as channel:
        stub = vision_pb2_grpc.VisionServiceStub(channel)
        both = 0
        for item in items:
            response = stub.Analyze(vision_pb2.AnalyzeRequest(image=item.path.read_bytes()), timeout=60)
            assert response.model_version
            kinds = {g.kind for g in response.garments}
            both += {garment_pb2.GARMENT_KIND_TOP, garment_pb2.GARMENT_KIND_BOTTOM} <= kinds
            for g in response.garments:
                assert abs(sum(v * v for v in g.embedding) - 1.0) < 1e-3
        # The trained detector finds the top and the bottom of (nearly) every demo look that has both.
        assert both >= 0.8 * len(items), f"top and bottom found in {both} of {len(items)} looks"
        first = stub.Analyze(vision_pb2.AnalyzeRequest(image=items[0].path.read_bytes()), timeout=60)
        batch = stub.AnalyzeBatch(
            vision_pb2.AnalyzeBatchRequest(
                requests=[
                    vision_pb2.AnalyzeRequest(image=items[0].path.read_bytes()),
                    vision_pb2.AnalyzeRequest(image=b"nope"),
                ]
            ),
            timeout=60,
        )
        assert batch.results[0].HasField("response")
        assert [g.kind for g in batch.results[0].response.garments] == [g.kind for g in first.garments]
        assert batch.results[1].error.code == "INVALID_ARGUMENT"


def test_reimport_adds_nothing(service: ServiceThread) -> None:
    from services.runtime import local_vision

    running = service.running
    store = running.store
    ids_before = {look.look_id for look in store.scroll(None, limit=1000).looks}
    report = import_looks(
        demo_items(),
        analyzer=local_vision(running.settings),
        store=store,
        images_dir=running.settings.images_dir,
        auto_approve_quality=1.0,
        max_image_bytes=running.settings.max_image_bytes,
    )
    assert report.added == 0 and report.skipped == N_LOOKS
    assert {look.look_id for look in store.scroll(None, limit=1000).looks} == ids_before


def test_score_pair_scores_a_top_and_a_bottom(outfit: outfit_pb2_grpc.OutfitServiceStub) -> None:
    item = demo_items()[4]
    reply = outfit.ScorePair(
        outfit_pb2.ScorePairRequest(top_image=crop_bytes(item, "top"), bottom_image=crop_bytes(item, "bottom")),
        timeout=60,
    )
    assert 0.0 <= reply.score <= 1.0
    assert "compat" in reply.model_version


@pytest.mark.parametrize("name", ["empty", "corrupt", "text file", "20 MB message"])
def test_score_pair_bad_input_is_invalid_argument(name: str, outfit: outfit_pb2_grpc.OutfitServiceStub) -> None:
    good = crop_bytes(demo_items()[4], "bottom")
    with pytest.raises(grpc.RpcError) as err:
        outfit.ScorePair(outfit_pb2.ScorePairRequest(top_image=bad_inputs()[name], bottom_image=good), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert outfit.ScorePair(
        outfit_pb2.ScorePairRequest(top_image=crop_bytes(demo_items()[4], "top"), bottom_image=good), timeout=60
    ).model_version


def test_each_ranking_path_reports_its_scores(outfit: outfit_pb2_grpc.OutfitServiceStub) -> None:
    query = crop_bytes(demo_items()[6], "top")
    compat = match(outfit, query, kind=outfit_pb2.QUERY_KIND_TOP, path=outfit_pb2.RANKING_PATH_COMPATIBILITY)
    assert compat.matches and all(m.path_scores.compatibility != 0 for m in compat.matches)
    alike = match(outfit, query, kind=outfit_pb2.QUERY_KIND_TOP, path=outfit_pb2.RANKING_PATH_LOOK_ALIKE)
    assert all(m.path_scores.compatibility == 0 for m in alike.matches)
    assert all(m.score == pytest.approx(m.path_scores.look_alike, abs=1e-6) for m in alike.matches)
    blend = match(outfit, query, kind=outfit_pb2.QUERY_KIND_TOP, limit=N_LOOKS)
    assert any(m.path_scores.look_alike and m.path_scores.compatibility for m in blend.matches)
