"""The editor console in headless Chromium against the all-in-one process: sign in, curate, see it in matches.

An editor signs in, filters pending looks, approves one with the `a` key; the store says approved and
MatchOutfit now returns the look. Rejecting it with `r` takes it out of matches at once. Screenshots
go to test-artifacts/. Chromium is Debian's (/usr/bin/chromium, see scripts/ensure_chromium.sh).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import uvicorn
from lookbook.outfit.v1 import outfit_pb2, outfit_pb2_grpc
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

from services.curation.ledger import Ledger
from shared.settings import Settings
from shared.store import LookFilter, LookRecord, LookStore
from tests.servers import ServiceThread

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EDITOR, PASSWORD = "ada", "correct-horse-battery"
DEMO_LOOKS = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _small_demo(folder: Path, count: int = DEMO_LOOKS) -> Path:
    """The first looks of the bundled demo library, so the process starts in seconds, not minutes."""
    manifest = json.loads((REPO / "demo" / "looks.json").read_text())
    subset = [dict(rec, image=str(REPO / "demo" / rec["image"])) for rec in manifest[:count]]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "looks.json").write_text(json.dumps(subset))
    return folder


@pytest.fixture(scope="module")
def lookbook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    """The all-in-one process with the first demo looks, on free ports."""
    from shared.settings import load_settings

    root = tmp_path_factory.mktemp("lookbook")
    with pytest.MonkeyPatch.context() as env:
        for key in [k for k in os.environ if k.upper().startswith("LOOKBOOK_")]:
            env.delenv(key)
        settings = load_settings(
            data_dir=root / "data",
            demo_dir=_small_demo(root / "demo"),
            gateway_port=_free_port(),
            vision_port=_free_port(),
            curation_port=_free_port(),
            http_port=_free_port(),
            torch_threads=2,
        )
    service = ServiceThread(settings, "all", import_demo=True)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def console_url(lookbook: ServiceThread) -> Iterator[str]:
    """The console of the running process, or, where it does not mount one, the console app on its store."""
    settings = lookbook.running.settings
    base = f"http://127.0.0.1:{lookbook.running.ports['http']}"
    if httpx.get(f"{base}/console/login", timeout=30).status_code == 200:
        yield f"{base}/console"
        return
    from services.curation.console import build_console_http

    assert lookbook.running.store is not None
    port = _free_port()
    app = build_console_http(settings, lookbook.running.store)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the console did not start within 30 s"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/console"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _add_editor(settings: Settings) -> None:
    """Creates the editor the way an admin does: `lookbook editors add NAME --password-stdin`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LOOKBOOK_")}
    env["LOOKBOOK_DATA_DIR"] = str(settings.data_dir)
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "editors", "add", EDITOR, "--password-stdin"],
        input=PASSWORD + "\n",
        text=True,
        capture_output=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def _top_crop(settings: Settings, look: LookRecord) -> bytes:
    assert look.top_box is not None
    with Image.open(settings.images_dir / look.image_path) as image:
        piece = image.convert("RGB").crop(tuple(int(v) for v in look.top_box))  # type: ignore[arg-type]
    out = io.BytesIO()
    piece.save(out, format="JPEG", quality=92)
    return out.getvalue()


def _matched_ids(stub: outfit_pb2_grpc.OutfitServiceStub, photo: bytes) -> list[str]:
    reply = stub.MatchOutfit(
        outfit_pb2.MatchOutfitRequest(image=photo, kind=outfit_pb2.QUERY_KIND_TOP, limit=10), timeout=120
    )
    return [m.look_id for m in reply.matches]


def _pick_matchable_look(
    store: LookStore, settings: Settings, stub: outfit_pb2_grpc.OutfitServiceStub
) -> tuple[LookRecord, bytes]:
    """An approved demo look that its own top crop finds, so its later presence in matches means something."""
    approved = store.scroll(LookFilter(statuses=("approved",)), limit=30).looks
    for look in approved:
        if look.top_box is None or look.bottom_box is None:
            continue
        photo = _top_crop(settings, look)
        if look.look_id in _matched_ids(stub, photo):
            return look, photo
    raise AssertionError(
        f"none of {len(approved)} approved demo looks is found by its own top crop: check the demo import"
    )


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"))


def test_sign_in_filter_pending_approve_with_keyboard_then_match(lookbook: ServiceThread, console_url: str) -> None:
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: run scripts/ensure_chromium.sh (make test does)"
    running = lookbook.running
    settings, store = running.settings, running.store
    assert store is not None
    _add_editor(settings)
    channel = grpc.insecure_channel(lookbook.address("gateway"))
    gateway = outfit_pb2_grpc.OutfitServiceStub(channel)

    # A look arrives pending (as an import below the auto-approve bar does): it must not match yet.
    look, photo = _pick_matchable_look(store, settings, gateway)
    look = store.update_look(look.look_id, {"status": "pending"}, expected_version=look.version, curated=False)
    assert look.look_id not in _matched_ids(gateway, photo)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            response = page.goto(f"{console_url}/")
            assert response is not None and response.status == 401  # no session: the sign-in form
            page.fill("input[name=editor]", EDITOR)
            page.fill("input[name=password]", PASSWORD)
            _shot(page, "1-sign-in")
            page.click("button[type=submit]")
            expect(page.locator("article.look").first).to_be_visible()

            # Filter: pending looks, most recently changed first (the look just turned pending).
            page.check("input[name=status][value=pending]")
            page.select_option("select[name=sort]", "updated_desc")
            page.click("#apply-filters")
            page.wait_for_url("**status=pending**")
            cards = page.locator("article.look")
            expect(cards.first).to_be_visible()
            statuses = set(cards.evaluate_all("els => els.map(e => e.dataset.status)"))
            assert statuses == {"pending"}, statuses
            card = page.locator(f'article.look[data-look-id="{look.look_id}"]')
            expect(card).to_be_visible()
            expect(card.locator("img")).to_have_js_property("complete", True)
            _shot(page, "2-pending")

            # Approve with the keyboard: focus the card, press a.
            card.focus()
            page.keyboard.press("a")
            expect(card).to_have_attribute("data-status", "approved")
            expect(card).to_have_attribute("data-version", str(look.version + 1))
            _shot(page, "3-approved")

            stored = store.get(look.look_id)
            assert stored is not None and stored.status == "approved" and stored.version == look.version + 1
            ledger = Ledger.in_data_dir(settings.data_dir)
            event = ledger.events(look_id=look.look_id)[0]
            assert (event.editor, event.action, event.after["status"]) == (EDITOR, "set_status", "approved")
            assert look.look_id in _matched_ids(gateway, photo)

            # Reject it with r: it leaves the matches at once.
            card.focus()
            page.keyboard.press("r")
            expect(card).to_have_attribute("data-status", "rejected")
            _shot(page, "4-rejected")
            stored = store.get(look.look_id)
            assert stored is not None and stored.status == "rejected"
            assert look.look_id not in _matched_ids(gateway, photo)

            # Arrow keys move between looks; x selects the focused one for a bulk action.
            page.goto(f"{console_url}/")
            cards = page.locator("article.look")
            expect(cards.nth(1)).to_be_visible()
            ids = cards.evaluate_all("els => els.map(e => e.dataset.lookId)")
            cards.first.focus()
            page.keyboard.press("ArrowRight")
            assert page.evaluate("document.activeElement.dataset.lookId") == ids[1]
            page.keyboard.press("x")
            expect(cards.nth(1).locator("input.select")).to_be_checked()
            page.keyboard.press("ArrowLeft")
            assert page.evaluate("document.activeElement.dataset.lookId") == ids[0]

            # The audit log page shows both decisions.
            page.goto(f"{console_url}/audit?look_id={look.look_id}")
            rows = page.locator("#audit tbody tr")
            expect(rows).to_have_count(2)
            _shot(page, "5-audit")
        finally:
            browser.close()
            channel.close()
