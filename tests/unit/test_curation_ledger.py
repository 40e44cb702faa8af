"""The curation ledger, tag and reason rules, and the label export, without servers."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from PIL import Image

from services.curation.desk import REJECT_REASONS, CurationInputError, LookQuery, normalize_tags
from services.curation.imports import BoardImportJobs, ImportsUnavailableError
from services.curation.labels import export_labels, reasons_in
from services.curation.ledger import (
    MAX_SIGN_IN_FAILURES,
    SIGN_IN_WINDOW_S,
    EditorError,
    Ledger,
    SignInThrottledError,
)
from services.workers.jobs import MemoryJobBoard

pytestmark = pytest.mark.unit

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "curation.sqlite3", hasher=FAST)


def test_editor_names_and_passwords_are_checked(ledger: Ledger) -> None:
    ledger.add_editor("Ada", "long-enough")
    assert [e.name for e in ledger.editors()] == ["ada"]
    with pytest.raises(EditorError, match="already exists"):
        ledger.add_editor("ada", "long-enough")
    with pytest.raises(EditorError, match="too short"):
        ledger.add_editor("bob", "short")
    with pytest.raises(EditorError, match="not allowed"):
        ledger.add_editor("bob smith", "long-enough")


def test_login_tokens_expire_and_are_revocable(ledger: Ledger) -> None:
    ledger.add_editor("ada", "long-enough")
    assert ledger.login("ada", "wrong-password", kind="session", ttl_s=60) is None
    assert ledger.login("nobody", "long-enough", kind="session", ttl_s=60) is None
    issued = ledger.login("ada", "long-enough", kind="session", ttl_s=60)
    assert issued is not None
    credential = ledger.authenticate(issued.token)
    assert credential is not None and credential.editor == "ada" and len(credential.csrf_token) >= 32
    assert ledger.authenticate(issued.token + "x") is None
    ledger.revoke(issued.token)
    assert ledger.authenticate(issued.token) is None
    assert ledger.authenticate(ledger.issue_token("ada", kind="api", ttl_s=-1).token) is None


def test_disabling_an_editor_revokes_everything(ledger: Ledger) -> None:
    ledger.add_editor("ada", "long-enough")
    token = ledger.issue_token("ada", kind="api", ttl_s=3600).token
    ledger.set_disabled("ada", True)
    assert ledger.authenticate(token) is None
    assert ledger.login("ada", "long-enough", kind="session", ttl_s=60) is None
    ledger.set_disabled("ada", False)
    assert ledger.authenticate(token) is None  # revoked for good; sign in anew
    assert ledger.login("ada", "long-enough", kind="session", ttl_s=60) is not None


def test_passwords_and_tokens_are_not_stored_in_clear(ledger: Ledger) -> None:
    ledger.add_editor("ada", "my-secret-password")
    token = ledger.issue_token("ada", kind="api", ttl_s=60).token
    with sqlite3.connect(ledger.path) as db:
        dump = "\n".join(db.iterdump())
    assert "my-secret-password" not in dump and token not in dump
    assert "$argon2id$" in dump


def test_the_audit_log_is_append_only(ledger: Ledger) -> None:
    event = ledger.append_event(
        editor="ada",
        action="set_status",
        look_id="x",
        before={"status": "pending"},
        after={"status": "approved"},
        reason="ok",
    )
    assert ledger.events() == [event]
    with sqlite3.connect(ledger.path) as db:
        for sql in ("UPDATE audit_events SET editor = 'mallory'", "DELETE FROM audit_events"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                db.execute(sql)
    assert ledger.events() == [event]


def test_tags_are_normalized_and_checked() -> None:
    assert normalize_tags([" Summer ", "summer", "Denim  Jacket", ""]) == ["summer", "denim jacket"]
    for bad in (["<b>"], ["x" * 60], [f"t{i}" for i in range(60)]):
        with pytest.raises(CurationInputError):
            normalize_tags(bad)


def test_look_queries_are_checked() -> None:
    for query in (
        LookQuery(statuses=("done",)),
        LookQuery(sort="random"),
        LookQuery(min_quality=-0.1),
        LookQuery(min_quality=0.9, max_quality=0.1),
        LookQuery(page_size=100_000),
    ):
        with pytest.raises(CurationInputError):
            query.checked()


def test_reject_reasons_are_the_quality_filters_reasons() -> None:
    quality = pytest.importorskip("shared.models.quality")
    assert tuple(quality.REASONS) == REJECT_REASONS
    assert reasons_in("too_dark, face cut; NOT_FULL_BODY too_dark") == ["too_dark", "not_full_body"]


def test_export_labels_is_read_by_the_quality_trainer(ledger: Ledger, tmp_path: Path) -> None:
    images = []
    for i, color in enumerate([(200, 180, 160), (10, 10, 10), (120, 130, 140), (90, 60, 30)]):
        path = tmp_path / f"look{i}.jpg"
        Image.new("RGB", (64, 96), color).save(path)
        images.append(path)
    decisions = [
        ("a", "approved", ""),
        ("b", "rejected", "too_dark, underexposed"),
        ("c", "featured", ""),
        ("d", "rejected", ""),
    ]
    for (look_id, status, reason), image in zip(decisions, images, strict=True):
        ledger.append_event(
            editor="ada", action="set_status", look_id=look_id, reason=reason, decision=(str(image), status)
        )
    ledger.append_event(editor="ada", action="set_status", look_id="c", decision=(str(images[2]), "pending"))
    images[3].unlink()  # a look whose file is gone is left out
    out = tmp_path / "labels.jsonl"
    summary = export_labels(ledger, out)
    assert (summary.good, summary.bad, summary.missing_images) == (1, 1, 1)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(line["look_id"], line["label"], line["reasons"], line["source"]) for line in lines] == [
        ("a", "good", [], "editor"),
        ("b", "bad", ["too_dark"], "editor"),
    ]
    assert all(Path(line["image"]).is_absolute() for line in lines)
    trainer = pytest.importorskip("shared.models.quality_training")
    items = trainer.read_labels(out)
    assert [(item.good, tuple(item.reasons)) for item in items] == [(True, ()), (False, ("too_dark",))]


def test_board_import_jobs_record_a_launch_failure_on_the_job() -> None:
    board = MemoryJobBoard()

    def broken_launch(job_id: str, source: str) -> None:
        raise ConnectionError("broker down")

    jobs = BoardImportJobs(board, broken_launch)
    with pytest.raises(ImportsUnavailableError, match="could not be queued"):
        jobs.start("/data/looks", requested_by="ada")
    (job,) = jobs.recent()
    assert job.state == "failed" and "broker down" in job.error and job.requested_by == "ada"


def test_repeated_wrong_passwords_lock_the_name_for_a_while(ledger: Ledger) -> None:
    ledger.add_editor("ada", "long-enough")
    ledger.add_editor("bob", "long-enough")
    for _ in range(MAX_SIGN_IN_FAILURES):
        assert ledger.login("ada", "guess-guess", kind="session", ttl_s=60) is None
    with pytest.raises(SignInThrottledError, match="wait") as caught:
        ledger.login("ada", "long-enough", kind="session", ttl_s=60)
    assert 0 < caught.value.retry_after_s <= SIGN_IN_WINDOW_S
    assert ledger.login("bob", "long-enough", kind="session", ttl_s=60) is not None  # other names unaffected
