"""CurationService over real gRPC (port 0) on a real Qdrant Edge store: every RPC, auth, conflicts, audit."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from argon2 import PasswordHasher
from curation_library import open_seeded_store
from lookbook.common.v1 import garment_pb2
from lookbook.curation.v1 import curation_pb2, curation_pb2_grpc

from services.curation.imports import BoardImportJobs
from services.curation.labels import export_labels
from services.curation.ledger import Ledger
from services.curation.server import build_server
from services.workers.jobs import MemoryJobBoard
from shared.settings import Settings, load_settings
from shared.store import EdgeLookStore, LookRecord

pytestmark = pytest.mark.integration

PASSWORD = "correct-horse-battery"
# Production uses argon2's defaults (~0.6 s a hash here); the tests check behaviour, not cost.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PENDING, APPROVED = garment_pb2.LOOK_STATUS_PENDING, garment_pb2.LOOK_STATUS_APPROVED
REJECTED, FEATURED = garment_pb2.LOOK_STATUS_REJECTED, garment_pb2.LOOK_STATUS_FEATURED


@dataclass
class Curation:
    settings: Settings
    store: EdgeLookStore
    ledger: Ledger
    looks: list[LookRecord]
    stub: curation_pb2_grpc.CurationServiceStub
    board: MemoryJobBoard
    launched: list[tuple[str, str]]
    token: str
    bob_token: str

    def auth(self, token: str | None = None) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {token or self.token}")]

    def pending(self) -> LookRecord:
        return next(look for look in self.looks if look.status == "pending")


class ServerThread:
    """Runs the aio server on its own event loop, so the tests can call it with a plain blocking channel."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture
def curation(tmp_path: Path) -> Iterator[Curation]:
    settings = load_settings(data_dir=tmp_path / "data")
    store, looks = open_seeded_store(settings.store_dir, tmp_path, count=12)
    ledger = Ledger(settings.data_dir / "curation.sqlite3", hasher=FAST_HASHER)
    ledger.add_editor("ada", PASSWORD)
    ledger.add_editor("bob", PASSWORD)
    board = MemoryJobBoard()
    launched: list[tuple[str, str]] = []

    def check_source(source: str) -> None:
        if not Path(source).exists():
            raise ValueError(f"source {source} does not exist: give a directory or a looks.json manifest")

    jobs = BoardImportJobs(board, lambda job_id, source: launched.append((job_id, source)), check_source=check_source)
    runner = ServerThread()

    async def start() -> tuple[grpc.aio.Server, int]:
        server, _, port, _ = build_server(settings, store, ledger=ledger, jobs=jobs, port=0)
        await server.start()
        return server, port

    server, port = runner.run(start())
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = curation_pb2_grpc.CurationServiceStub(channel)
    token = stub.Login(curation_pb2.LoginRequest(editor="ada", password=PASSWORD), timeout=30).token
    bob = stub.Login(curation_pb2.LoginRequest(editor="bob", password=PASSWORD), timeout=30).token
    try:
        yield Curation(settings, store, ledger, looks, stub, board, launched, token, bob)
    finally:
        channel.close()
        runner.run(server.stop(0))
        runner.close()
        store.close()


def _call_all(c: Curation, metadata: list[tuple[str, str]]) -> dict[str, grpc.StatusCode]:
    """Every RPC but Login once, with a request that would change or read something; their status codes."""
    look = c.pending()
    requests: dict[str, Any] = {
        "ListLooks": curation_pb2.ListLooksRequest(),
        "GetLook": curation_pb2.GetLookRequest(look_id=look.look_id),
        "SetStatus": curation_pb2.SetStatusRequest(
            look_id=look.look_id, status=APPROVED, expected_version=look.version
        ),
        "UpdateTags": curation_pb2.UpdateTagsRequest(
            look_id=look.look_id, tags=["hacked"], expected_version=look.version
        ),
        "DeleteLook": curation_pb2.DeleteLookRequest(look_id=look.look_id, expected_version=look.version),
        "StartImport": curation_pb2.StartImportRequest(source=str(c.settings.data_dir)),
        "GetImportJob": curation_pb2.GetImportJobRequest(job_id="x"),
        "ListImportJobs": curation_pb2.ListImportJobsRequest(),
        "LibraryStats": curation_pb2.LibraryStatsRequest(),
        "ListAuditEvents": curation_pb2.ListAuditEventsRequest(),
    }
    codes = {}
    for name, request in requests.items():
        with pytest.raises(grpc.RpcError) as caught:
            getattr(c.stub, name)(request, metadata=metadata, timeout=30)
        codes[name] = caught.value.code()
    return codes


def _assert_unchanged(c: Curation) -> None:
    for before in c.looks:
        after = c.store.get(before.look_id)
        assert after is not None and after.version == before.version and after.status == before.status
        assert after.tags == before.tags
    assert c.ledger.events() == []
    assert c.launched == [] and c.board.recent() == []


def test_every_rpc_without_credentials_is_unauthenticated_and_changes_nothing(curation: Curation) -> None:
    codes = _call_all(curation, [])
    assert set(codes.values()) == {grpc.StatusCode.UNAUTHENTICATED}, codes
    assert len(codes) == len(curation_pb2.DESCRIPTOR.services_by_name["CurationService"].methods) - 1
    _assert_unchanged(curation)


@pytest.mark.parametrize("header", ["Bearer lbk_not-a-real-token", "Basic YWRhOnB3", "Bearer ", "lbk_raw"])
def test_a_bad_token_is_unauthenticated_and_changes_nothing(curation: Curation, header: str) -> None:
    codes = _call_all(curation, [("authorization", header)])
    assert set(codes.values()) == {grpc.StatusCode.UNAUTHENTICATED}, codes
    _assert_unchanged(curation)


def test_expired_revoked_and_disabled_tokens_are_refused(curation: Curation) -> None:
    expired = curation.ledger.issue_token("ada", kind="api", ttl_s=-1).token
    revoked = curation.ledger.issue_token("ada", kind="api", ttl_s=3600).token
    curation.ledger.revoke(revoked)
    for token in (expired, revoked):
        with pytest.raises(grpc.RpcError) as caught:
            curation.stub.ListLooks(curation_pb2.ListLooksRequest(), metadata=curation.auth(token), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "sign in again" in (caught.value.details() or "")
    curation.ledger.set_disabled("bob", True)
    with pytest.raises(grpc.RpcError) as caught:
        curation.stub.ListLooks(curation_pb2.ListLooksRequest(), metadata=curation.auth(curation.bob_token), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_login_with_a_wrong_password_is_unauthenticated(curation: Curation) -> None:
    for editor, password in (("ada", "wrong-password"), ("nobody", PASSWORD), ("", "")):
        with pytest.raises(grpc.RpcError) as caught:
            curation.stub.Login(curation_pb2.LoginRequest(editor=editor, password=password), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    reply = curation.stub.Login(curation_pb2.LoginRequest(editor="ADA", password=PASSWORD), timeout=30)
    assert reply.editor == "ada" and reply.token.startswith("lbk_") and reply.expires_at.seconds > 0


def test_password_guessing_is_throttled(curation: Curation) -> None:
    for _ in range(5):
        with pytest.raises(grpc.RpcError) as caught:
            curation.stub.Login(curation_pb2.LoginRequest(editor="bob", password="guess-guess"), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as caught:
        curation.stub.Login(curation_pb2.LoginRequest(editor="bob", password=PASSWORD), timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many failed sign-ins" in (caught.value.details() or "")


def test_tokens_are_stored_only_as_digests(curation: Curation) -> None:
    raw = curation.ledger.path.read_bytes()
    wal = curation.ledger.path.with_name(curation.ledger.path.name + "-wal")
    raw += wal.read_bytes() if wal.exists() else b""
    assert curation.token.encode() not in raw
    assert PASSWORD.encode() not in raw
    assert b"$argon2" in raw


def test_list_looks_filters_sorts_and_pages(curation: Curation) -> None:
    c = curation
    everything = c.stub.ListLooks(curation_pb2.ListLooksRequest(page_size=100), metadata=c.auth(), timeout=30)
    assert everything.total == len(c.looks) == len(everything.looks)
    assert everything.next_page_token == ""

    pending = c.stub.ListLooks(curation_pb2.ListLooksRequest(statuses=[PENDING]), metadata=c.auth(), timeout=30)
    assert pending.total == sum(look.status == "pending" for look in c.looks) > 0
    assert {look.status for look in pending.looks} == {PENDING}

    denim = c.stub.ListLooks(curation_pb2.ListLooksRequest(tags=["denim"]), metadata=c.auth(), timeout=30)
    assert denim.total == sum("denim" in look.tags for look in c.looks) > 0
    assert all("denim" in look.tags for look in denim.looks)

    source = c.stub.ListLooks(curation_pb2.ListLooksRequest(source="blog-import"), metadata=c.auth(), timeout=30)
    assert source.total == sum(look.source == "blog-import" for look in c.looks) > 0

    ranged = c.stub.ListLooks(
        curation_pb2.ListLooksRequest(min_quality=0.3, max_quality=0.6, sort=curation_pb2.LOOK_SORT_QUALITY_ASC),
        metadata=c.auth(),
        timeout=30,
    )
    expected = sorted(look.quality_score for look in c.looks if 0.3 <= look.quality_score <= 0.6)
    assert ranged.total == len(expected) > 0
    assert [round(look.quality_score, 4) for look in ranged.looks] == [round(q, 4) for q in expected]

    descending = c.stub.ListLooks(
        curation_pb2.ListLooksRequest(sort=curation_pb2.LOOK_SORT_QUALITY_DESC), metadata=c.auth(), timeout=30
    )
    scores = [look.quality_score for look in descending.looks]
    assert scores == sorted(scores, reverse=True)

    seen: list[str] = []
    token = ""
    while True:
        page = c.stub.ListLooks(
            curation_pb2.ListLooksRequest(page_size=5, page_token=token), metadata=c.auth(), timeout=30
        )
        assert len(page.looks) <= 5
        seen += [look.look_id for look in page.looks]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(look.look_id for look in c.looks)


def test_list_looks_rejects_bad_arguments(curation: Curation) -> None:
    bad = [
        curation_pb2.ListLooksRequest(min_quality=0.8, max_quality=0.2),
        curation_pb2.ListLooksRequest(min_quality=1.5),
        curation_pb2.ListLooksRequest(page_size=10_000),
        curation_pb2.ListLooksRequest(page_token="not-a-cursor!"),
        curation_pb2.ListLooksRequest(statuses=[garment_pb2.LOOK_STATUS_UNSPECIFIED]),
    ]
    for request in bad:
        with pytest.raises(grpc.RpcError) as caught:
            curation.stub.ListLooks(request, metadata=curation.auth(), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request


def test_get_look(curation: Curation) -> None:
    look = curation.looks[0]
    got = curation.stub.GetLook(curation_pb2.GetLookRequest(look_id=look.look_id), metadata=curation.auth(), timeout=30)
    assert got.look_id == look.look_id and got.version == look.version
    assert got.HasField("top_box") and got.HasField("bottom_box")
    assert got.width == look.width and list(got.tags) == look.tags
    for look_id, code in (
        ("00000000-0000-0000-0000-000000000000", grpc.StatusCode.NOT_FOUND),
        ("not-a-uuid", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            curation.stub.GetLook(curation_pb2.GetLookRequest(look_id=look_id), metadata=curation.auth(), timeout=30)
        assert caught.value.code() == code


def test_set_status_changes_the_store_and_is_audited(curation: Curation) -> None:
    c = curation
    look = c.pending()
    for status, name in (
        (APPROVED, "approved"),
        (FEATURED, "featured"),
        (REJECTED, "rejected"),
        (PENDING, "pending"),
    ):
        current = c.store.get(look.look_id)
        assert current is not None
        reply = c.stub.SetStatus(
            curation_pb2.SetStatusRequest(
                look_id=look.look_id, status=status, reason=f"to {name}", expected_version=current.version
            ),
            metadata=c.auth(),
            timeout=30,
        )
        assert reply.status == status and reply.version == current.version + 1
        stored = c.store.get(look.look_id)
        assert stored is not None and stored.status == name and stored.version == reply.version
    events = c.stub.ListAuditEvents(
        curation_pb2.ListAuditEventsRequest(look_id=look.look_id), metadata=c.auth(), timeout=30
    ).events
    assert [e.action for e in events] == ["set_status"] * 4
    newest = events[0]
    assert newest.editor == "ada" and newest.reason == "to pending" and newest.at.seconds > 0
    assert json.loads(newest.before_json) == {"status": "rejected", "version": look.version + 3}
    assert json.loads(newest.after_json) == {"status": "pending", "version": look.version + 4}


def test_set_status_needs_a_version_and_a_real_status(curation: Curation) -> None:
    look = curation.pending()
    for request in (
        curation_pb2.SetStatusRequest(look_id=look.look_id, status=APPROVED),
        curation_pb2.SetStatusRequest(
            look_id=look.look_id, status=garment_pb2.LOOK_STATUS_UNSPECIFIED, expected_version=look.version
        ),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            curation.stub.SetStatus(request, metadata=curation.auth(), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert curation.store.get(look.look_id).status == "pending"  # type: ignore[union-attr]
    assert curation.ledger.events() == []


def test_a_stale_edit_is_aborted_and_never_overwrites(curation: Curation) -> None:
    c = curation
    look = c.pending()
    # Both editors load version N; ada approves first, bob's reject is based on what he saw.
    c.stub.SetStatus(
        curation_pb2.SetStatusRequest(look_id=look.look_id, status=APPROVED, expected_version=look.version),
        metadata=c.auth(),
        timeout=30,
    )
    stale = [
        (
            "SetStatus",
            curation_pb2.SetStatusRequest(look_id=look.look_id, status=REJECTED, expected_version=look.version),
        ),
        (
            "UpdateTags",
            curation_pb2.UpdateTagsRequest(look_id=look.look_id, tags=["x"], expected_version=look.version),
        ),
        ("DeleteLook", curation_pb2.DeleteLookRequest(look_id=look.look_id, expected_version=look.version)),
    ]
    for name, request in stale:
        with pytest.raises(grpc.RpcError) as caught:
            getattr(c.stub, name)(request, metadata=c.auth(c.bob_token), timeout=30)
        assert caught.value.code() == grpc.StatusCode.ABORTED, name
        details = caught.value.details() or ""
        assert f"version {look.version + 1}, not {look.version}" in details and "reload" in details
    stored = c.store.get(look.look_id)
    assert stored is not None and stored.status == "approved" and stored.version == look.version + 1
    assert stored.tags == look.tags
    assert [e.editor for e in c.ledger.events()] == ["ada"]


def test_update_tags(curation: Curation) -> None:
    c = curation
    look = c.looks[1]
    reply = c.stub.UpdateTags(
        curation_pb2.UpdateTagsRequest(
            look_id=look.look_id,
            tags=[" Summer ", "denim", "summer", ""],
            expected_version=look.version,
            reason="season",
        ),
        metadata=c.auth(),
        timeout=30,
    )
    assert list(reply.tags) == ["summer", "denim"] and reply.version == look.version + 1
    stored = c.store.get(look.look_id)
    assert stored is not None and stored.tags == ["summer", "denim"]
    event = c.ledger.events(look_id=look.look_id)[0]
    assert event.action == "update_tags" and event.before["tags"] == look.tags
    assert event.after["tags"] == ["summer", "denim"] and event.reason == "season"
    with pytest.raises(grpc.RpcError) as caught:
        c.stub.UpdateTags(
            curation_pb2.UpdateTagsRequest(look_id=look.look_id, tags=["<script>"], expected_version=reply.version),
            metadata=c.auth(),
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_delete_look(curation: Curation) -> None:
    c = curation
    look = c.looks[2]
    reply = c.stub.DeleteLook(
        curation_pb2.DeleteLookRequest(look_id=look.look_id, expected_version=look.version, reason="duplicate"),
        metadata=c.auth(),
        timeout=30,
    )
    assert reply.look_id == look.look_id
    assert c.store.get(look.look_id) is None
    with pytest.raises(grpc.RpcError) as caught:
        c.stub.GetLook(curation_pb2.GetLookRequest(look_id=look.look_id), metadata=c.auth(), timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    event = c.ledger.events(look_id=look.look_id)[0]
    assert event.action == "delete_look" and event.after == {}
    assert event.before["status"] == look.status and event.before["image_path"] == look.image_path
    with pytest.raises(grpc.RpcError) as caught:
        c.stub.DeleteLook(
            curation_pb2.DeleteLookRequest(look_id=look.look_id, expected_version=look.version),
            metadata=c.auth(),
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_import_jobs(curation: Curation) -> None:
    c = curation
    source = str(c.settings.data_dir)
    job = c.stub.StartImport(curation_pb2.StartImportRequest(source=source), metadata=c.auth(), timeout=30)
    assert job.job_id and job.source == source and job.state == curation_pb2.IMPORT_STATE_QUEUED
    assert job.requested_by == "ada"
    assert c.launched == [(job.job_id, source)]
    # The workers report progress on their board; GetImportJob shows it.
    c.board.start(job.job_id)
    c.board.plan(job.job_id, ["a.jpg", "b.jpg", "c.jpg"], skipped=2)
    c.board.mark(job.job_id, "a.jpg", "done")
    c.board.mark(job.job_id, "b.jpg", "quarantined")
    got = c.stub.GetImportJob(curation_pb2.GetImportJobRequest(job_id=job.job_id), metadata=c.auth(), timeout=30)
    assert got.state == curation_pb2.IMPORT_STATE_RUNNING
    assert (got.total, got.processed, got.imported, got.failed, got.skipped) == (3, 2, 1, 1, 2)
    c.board.mark(job.job_id, "c.jpg", "done")
    got = c.stub.GetImportJob(curation_pb2.GetImportJobRequest(job_id=job.job_id), metadata=c.auth(), timeout=30)
    assert got.state == curation_pb2.IMPORT_STATE_SUCCEEDED and got.imported == 2
    listed = c.stub.ListImportJobs(curation_pb2.ListImportJobsRequest(), metadata=c.auth(), timeout=30)
    assert [j.job_id for j in listed.jobs] == [job.job_id]
    event = c.ledger.events(action="start_import")[0]
    assert event.editor == "ada" and event.after == {"job_id": job.job_id, "source": source}

    for request, code in (
        (curation_pb2.StartImportRequest(source=""), grpc.StatusCode.INVALID_ARGUMENT),
        (curation_pb2.StartImportRequest(source="/no/such/folder"), grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            c.stub.StartImport(request, metadata=c.auth(), timeout=30)
        assert caught.value.code() == code
    with pytest.raises(grpc.RpcError) as caught:
        c.stub.GetImportJob(curation_pb2.GetImportJobRequest(job_id="nope"), metadata=c.auth(), timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(c.launched) == 1


def test_library_stats(curation: Curation) -> None:
    c = curation
    stats = c.stub.LibraryStats(curation_pb2.LibraryStatsRequest(), metadata=c.auth(), timeout=30)
    assert stats.total == len(c.looks)
    by_status = {s.status: s.count for s in stats.by_status}
    assert by_status[PENDING] == sum(look.status == "pending" for look in c.looks)
    assert by_status[APPROVED] == sum(look.status == "approved" for look in c.looks)
    assert {s.source: s.count for s in stats.by_source} == {"team-looks": 6, "blog-import": 6}
    assert len(stats.quality_histogram) == 10 and sum(b.count for b in stats.quality_histogram) == len(c.looks)


def test_every_change_appears_in_the_audit_log(curation: Curation) -> None:
    c = curation
    a, b, d = c.looks[0], c.looks[1], c.looks[3]
    c.stub.SetStatus(
        curation_pb2.SetStatusRequest(
            look_id=a.look_id, status=REJECTED, expected_version=a.version, reason="too_dark"
        ),
        metadata=c.auth(),
        timeout=30,
    )
    c.stub.UpdateTags(
        curation_pb2.UpdateTagsRequest(look_id=b.look_id, tags=["x"], expected_version=b.version),
        metadata=c.auth(c.bob_token),
        timeout=30,
    )
    c.stub.DeleteLook(
        curation_pb2.DeleteLookRequest(look_id=d.look_id, expected_version=d.version),
        metadata=c.auth(),
        timeout=30,
    )
    c.stub.StartImport(curation_pb2.StartImportRequest(source=str(c.settings.data_dir)), metadata=c.auth(), timeout=30)
    events = c.stub.ListAuditEvents(curation_pb2.ListAuditEventsRequest(), metadata=c.auth(), timeout=30).events
    assert [(e.action, e.editor, e.look_id) for e in events] == [
        ("start_import", "ada", ""),
        ("delete_look", "ada", d.look_id),
        ("update_tags", "bob", b.look_id),
        ("set_status", "ada", a.look_id),
    ]
    bob = c.stub.ListAuditEvents(curation_pb2.ListAuditEventsRequest(editor="bob"), metadata=c.auth(), timeout=30)
    assert [e.action for e in bob.events] == ["update_tags"]
    first = c.stub.ListAuditEvents(curation_pb2.ListAuditEventsRequest(page_size=3), metadata=c.auth(), timeout=30)
    assert len(first.events) == 3 and first.next_page_token
    rest = c.stub.ListAuditEvents(
        curation_pb2.ListAuditEventsRequest(page_size=3, page_token=first.next_page_token),
        metadata=c.auth(),
        timeout=30,
    )
    assert [e.action for e in rest.events] == ["set_status"] and rest.next_page_token == ""
    # Append-only: the ledger itself refuses to rewrite history.
    import sqlite3

    with sqlite3.connect(c.ledger.path) as db, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit_events SET editor = 'mallory'")
    with sqlite3.connect(c.ledger.path) as db, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM audit_events")


def test_export_labels_writes_editor_decisions(curation: Curation, tmp_path: Path) -> None:
    c = curation
    looks = [look for look in c.looks if look.status == "pending"][:3]
    verdicts = [(APPROVED, ""), (REJECTED, "too_dark, face hidden"), (FEATURED, "")]
    for look, (status, reason) in zip(looks, verdicts, strict=True):
        c.stub.SetStatus(
            curation_pb2.SetStatusRequest(
                look_id=look.look_id, status=status, reason=reason, expected_version=look.version
            ),
            metadata=c.auth(),
            timeout=30,
        )
    # A look approved and then returned to pending is no decision.
    other = [look for look in c.looks if look.status == "pending"][3]
    first = c.stub.SetStatus(
        curation_pb2.SetStatusRequest(look_id=other.look_id, status=APPROVED, expected_version=other.version),
        metadata=c.auth(),
        timeout=30,
    )
    c.stub.SetStatus(
        curation_pb2.SetStatusRequest(look_id=other.look_id, status=PENDING, expected_version=first.version),
        metadata=c.auth(),
        timeout=30,
    )
    out = tmp_path / "labels.jsonl"
    summary = export_labels(c.ledger, out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert (summary.good, summary.bad) == (2, 1)
    by_look = {line["look_id"]: line for line in lines}
    assert set(by_look) == {look.look_id for look in looks}
    for look, label in zip(looks, ("good", "bad", "good"), strict=True):
        line = by_look[look.look_id]
        assert line["label"] == label and line["source"] == "editor"
        assert Path(line["image"]).is_absolute() and Path(line["image"]).is_file()
        assert Path(line["image"]).resolve() == Path(look.image_path).resolve()
    assert by_look[looks[1].look_id]["reasons"] == ["too_dark"]
    assert by_look[looks[0].look_id]["reasons"] == []


def test_racing_edits_of_one_version_let_exactly_one_through(curation: Curation) -> None:
    from concurrent.futures import ThreadPoolExecutor

    c = curation
    look = c.pending()
    statuses = [APPROVED, REJECTED, FEATURED, APPROVED, REJECTED, FEATURED, APPROVED, REJECTED]

    def attempt(status: int) -> grpc.StatusCode:
        try:
            c.stub.SetStatus(
                curation_pb2.SetStatusRequest(look_id=look.look_id, status=status, expected_version=look.version),  # type: ignore[arg-type]
                metadata=c.auth(),
                timeout=60,
            )
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()

    with ThreadPoolExecutor(len(statuses)) as pool:
        codes = list(pool.map(attempt, statuses))
    assert codes.count(grpc.StatusCode.OK) == 1, codes
    assert codes.count(grpc.StatusCode.ABORTED) == len(statuses) - 1, codes
    stored = c.store.get(look.look_id)
    assert stored is not None and stored.version == look.version + 1
    (event,) = c.ledger.events(look_id=look.look_id)
    assert event.after == {"status": stored.status, "version": stored.version}
