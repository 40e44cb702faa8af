"""The editor console over real HTTP (uvicorn on a free port) on a real Qdrant Edge store: auth, CSRF."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from argon2 import PasswordHasher
from curation_library import open_seeded_store

from services.curation.console import SESSION_COOKIE, build_console_http
from services.curation.imports import BoardImportJobs
from services.curation.ledger import Ledger
from services.workers.jobs import MemoryJobBoard
from shared.settings import load_settings
from shared.store import EdgeLookStore, LookRecord

pytestmark = pytest.mark.integration

PASSWORD = "correct-horse-battery"
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Console:
    url: str
    store: EdgeLookStore
    ledger: Ledger
    looks: list[LookRecord]
    board: MemoryJobBoard

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def signed_in(self, editor: str = "ada") -> tuple[httpx.Client, str]:
        """A client with a session cookie, and the page's CSRF token."""
        client = self.client()
        form = client.get("/console/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        reply = client.post(
            "/console/login", data={"editor": editor, "password": PASSWORD, "csrf": csrf, "next": "/console/"}
        )
        assert reply.status_code == 303, reply.text
        page = client.get("/console/")
        token = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        return client, token

    def pending(self) -> LookRecord:
        return next(look for look in self.looks if look.status == "pending")


def serve(app: object) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the console did not start within 30 s"
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    settings = load_settings(data_dir=tmp_path / "data")
    store, looks = open_seeded_store(settings.store_dir, tmp_path, count=8)
    ledger = Ledger(settings.data_dir / "curation.sqlite3", hasher=FAST_HASHER)
    ledger.add_editor("ada", PASSWORD)
    ledger.add_editor("bob", PASSWORD)
    board = MemoryJobBoard()
    jobs = BoardImportJobs(board, lambda job_id, source: None)
    server, thread, url = serve(build_console_http(settings, store, ledger=ledger, jobs=jobs))
    try:
        yield Console(url, store, ledger, looks, board)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        store.close()


def test_every_page_and_api_call_needs_a_session(console: Console) -> None:
    look = console.pending()
    client = console.client()
    for path in (
        "/console/",
        "/console/stats",
        "/console/audit",
        "/console/imports",
        "/console/?status=pending",
    ):
        reply = client.get(path)
        assert reply.status_code == 401, path
        assert 'name="password"' in reply.text  # the sign-in form
    for path in (f"/console/looks/{look.look_id}/image", "/console/api/imports", "/console/api/stats"):
        assert client.get(path).status_code == 401, path
    for path, body in (
        (f"/console/api/looks/{look.look_id}/status", {"status": "approved", "version": look.version}),
        (
            "/console/api/looks/bulk-status",
            {"status": "approved", "items": [{"look_id": look.look_id, "version": look.version}]},
        ),
        (f"/console/api/looks/{look.look_id}/tags", {"tags": ["x"], "version": look.version}),
        (f"/console/api/looks/{look.look_id}/delete", {"version": look.version}),
        ("/console/api/imports", {"source": "/tmp"}),
    ):
        assert client.post(path, json=body).status_code == 401, path
    client.cookies.set(SESSION_COOKIE, "lbk_forged", path="/console")
    assert client.get("/console/").status_code == 401
    assert (
        client.post(
            f"/console/api/looks/{look.look_id}/status", json={"status": "approved", "version": look.version}
        ).status_code
        == 401
    )
    stored = console.store.get(look.look_id)
    assert stored is not None and stored.version == look.version and stored.status == "pending"
    assert console.ledger.events() == [] and console.board.recent() == []


def test_sign_in_needs_the_form_token_and_the_right_password(console: Console) -> None:
    client = console.client()
    assert client.post("/console/login", data={"editor": "ada", "password": PASSWORD}).status_code == 403
    form = client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    wrong = client.post("/console/login", data={"editor": "ada", "password": "nope-nope", "csrf": csrf})
    assert wrong.status_code == 401 and SESSION_COOKIE not in client.cookies
    csrf = re.search(r'name="csrf" value="([^"]+)"', wrong.text).group(1)  # type: ignore[union-attr]
    ok = client.post(
        "/console/login",
        data={"editor": "ada", "password": PASSWORD, "csrf": csrf, "next": "https://evil.example/"},
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/console/"  # no open redirect
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Max-Age=" in cookie
    page = client.get("/console/")
    assert page.status_code == 200
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


def test_changes_need_the_csrf_token_and_the_same_origin(console: Console) -> None:
    client, csrf = console.signed_in()
    look = console.pending()
    path = f"/console/api/looks/{look.look_id}/status"
    body = {"status": "approved", "version": look.version}
    assert client.post(path, json=body).status_code == 403
    assert client.post(path, json=body, headers={"x-csrf-token": "wrong"}).status_code == 403
    cross = client.post(path, json=body, headers={"x-csrf-token": csrf, "origin": "https://evil.example"})
    assert cross.status_code == 403
    _, bob_csrf = console.signed_in("bob")
    assert client.post(path, json=body, headers={"x-csrf-token": bob_csrf}).status_code == 403
    stored = console.store.get(look.look_id)
    assert stored is not None and stored.status == "pending" and console.ledger.events() == []
    ok = client.post(path, json=body, headers={"x-csrf-token": csrf, "origin": console.url})
    assert ok.status_code == 200 and ok.json()["look"]["status"] == "approved"


def test_approve_is_stored_and_audited(console: Console) -> None:
    client, csrf = console.signed_in()
    look = console.pending()
    reply = client.post(
        f"/console/api/looks/{look.look_id}/status",
        json={"status": "approved", "version": look.version, "reason": "great look"},
        headers={"x-csrf-token": csrf},
    )
    assert reply.status_code == 200
    assert reply.json()["look"]["version"] == look.version + 1
    stored = console.store.get(look.look_id)
    assert stored is not None and stored.status == "approved"
    event = console.ledger.events()[0]
    assert (event.editor, event.action, event.look_id, event.reason) == (
        "ada",
        "set_status",
        look.look_id,
        "great look",
    )
    assert event.before == {"status": "pending", "version": look.version}
    audit = client.get("/console/audit")
    assert audit.status_code == 200 and look.look_id[:8] in audit.text and "great look" in audit.text


def test_a_stale_edit_gets_409_with_a_clear_message(console: Console) -> None:
    ada, ada_csrf = console.signed_in("ada")
    bob, bob_csrf = console.signed_in("bob")
    look = console.pending()
    path = f"/console/api/looks/{look.look_id}/status"
    first = ada.post(path, json={"status": "approved", "version": look.version}, headers={"x-csrf-token": ada_csrf})
    assert first.status_code == 200
    late = bob.post(path, json={"status": "rejected", "version": look.version}, headers={"x-csrf-token": bob_csrf})
    assert late.status_code == 409
    body = late.json()
    assert body["conflict"] is True and "reload" in body["error"]
    assert f"version {look.version + 1}, not {look.version}" in body["error"]
    assert body["look"]["status"] == "approved" and body["look"]["version"] == look.version + 1
    stored = console.store.get(look.look_id)
    assert stored is not None and stored.status == "approved"
    assert [e.editor for e in console.ledger.events()] == ["ada"]
    tags = bob.post(
        f"/console/api/looks/{look.look_id}/tags",
        json={"tags": ["late"], "version": look.version},
        headers={"x-csrf-token": bob_csrf},
    )
    assert tags.status_code == 409


def test_bulk_status_applies_fresh_looks_and_reports_stale_ones(console: Console) -> None:
    client, csrf = console.signed_in()
    a, b, c = console.looks[0], console.looks[1], console.looks[2]
    items = [
        {"look_id": a.look_id, "version": a.version},
        {"look_id": b.look_id, "version": b.version},
        {"look_id": c.look_id, "version": c.version + 5},
    ]
    reply = client.post(
        "/console/api/looks/bulk-status",
        json={"status": "rejected", "items": items, "reason": "too_blurry"},
        headers={"x-csrf-token": csrf},
    )
    assert reply.status_code == 409
    results = {r["look_id"]: r for r in reply.json()["results"]}
    assert results[a.look_id]["ok"] and results[b.look_id]["ok"]
    assert not results[c.look_id]["ok"] and results[c.look_id]["conflict"]
    statuses = {look.look_id: console.store.get(look.look_id).status for look in (a, b, c)}  # type: ignore[union-attr]
    assert statuses == {a.look_id: "rejected", b.look_id: "rejected", c.look_id: c.status}
    assert len(console.ledger.events(action="set_status")) == 2


def test_the_grid_filters_by_status_and_shows_boxes_and_quality(console: Console) -> None:
    client, _ = console.signed_in()
    page = client.get("/console/", params={"status": "pending"})
    assert page.status_code == 200
    statuses = re.findall(r'data-status="(\w+)"', page.text)
    assert statuses and set(statuses) == {"pending"}
    assert len(statuses) == sum(look.status == "pending" for look in console.looks)
    assert 'class="box top"' in page.text and 'class="box bottom"' in page.text
    assert "<meter" in page.text and 'class="reasons"' in page.text
    look_id = re.search(r'data-look-id="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    image = client.get(f"/console/looks/{look_id}/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    ranged = client.get("/console/", params={"qmin": "0.3", "qmax": "0.6", "sort": "quality_asc"})
    assert ranged.status_code == 200
    assert client.get("/console/", params={"qmin": "2"}).status_code == 400
    stats = client.get("/console/api/stats").json()
    assert stats["total"] == len(console.looks)


def test_sessions_expire_and_sign_out_revokes_them(console: Console) -> None:
    expired = console.ledger.issue_token("ada", kind="session", ttl_s=-1)
    client = console.client()
    client.cookies.set(SESSION_COOKIE, expired.token, path="/console")
    assert client.get("/console/").status_code == 401
    client, csrf = console.signed_in()
    assert client.get("/console/").status_code == 200
    session = client.cookies.get(SESSION_COOKIE)
    out = client.post("/console/logout", data={"csrf": csrf})
    assert out.status_code == 303
    replay = console.client()
    replay.cookies.set(SESSION_COOKIE, session or "", path="/console")
    assert replay.get("/console/").status_code == 401


def test_imports_start_and_show_progress(console: Console, tmp_path: Path) -> None:
    client, csrf = console.signed_in()
    assert client.post("/console/api/imports", json={"source": ""}, headers={"x-csrf-token": csrf}).status_code == 400
    started = client.post("/console/api/imports", json={"source": str(tmp_path)}, headers={"x-csrf-token": csrf})
    assert started.status_code == 202
    job_id = started.json()["job"]["job_id"]
    console.board.plan(job_id, ["a.jpg", "b.jpg"], skipped=0)
    console.board.mark(job_id, "a.jpg", "done")
    job = client.get(f"/console/api/imports/{job_id}").json()["job"]
    assert job["progress"] == 0.5 and job["imported"] == 1 and job["requested_by"] == "ada"
    page = client.get("/console/imports")
    assert page.status_code == 200 and job_id[:12] in page.text
    assert client.get("/console/api/imports/nope").status_code == 404
    assert client.get("/console/stats").status_code == 200
