"""The curation ledger: editor accounts, their sessions and tokens, and the append-only audit log.

One SQLite file under the data directory. Passwords are argon2 hashes; tokens are random and stored
only as SHA-256 digests, so a copy of the file lets nobody sign in. The audit table refuses UPDATE
and DELETE through triggers, so the log can only grow.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

LEDGER_FILE = "curation.sqlite3"
EDITOR_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,31}$")
MIN_PASSWORD = 8
# Password guessing is slowed per editor name: this many failures within the window lock it for the window.
MAX_SIGN_IN_FAILURES = 5
SIGN_IN_WINDOW_S = 300.0
TokenKind = Literal["session", "api"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS editors (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tokens (
    token_sha256 TEXT PRIMARY KEY,
    editor TEXT NOT NULL REFERENCES editors(name),
    kind TEXT NOT NULL,
    csrf_token TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tokens_editor ON tokens(editor);
CREATE TABLE IF NOT EXISTS sign_in_failures (
    editor TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sign_in_failures_editor ON sign_in_failures(editor, at);
CREATE TABLE IF NOT EXISTS audit_events (
    event_id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    editor TEXT NOT NULL,
    action TEXT NOT NULL,
    look_id TEXT NOT NULL DEFAULT '',
    before_json TEXT NOT NULL DEFAULT '{}',
    after_json TEXT NOT NULL DEFAULT '{}',
    reason TEXT NOT NULL DEFAULT '',
    request_id TEXT NOT NULL DEFAULT ''
);
-- The latest editor decision per look (a projection of the audit log), read by export-labels.
CREATE TABLE IF NOT EXISTS decisions (
    look_id TEXT PRIMARY KEY,
    image_path TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    editor TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_look ON audit_events(look_id, event_id);
CREATE INDEX IF NOT EXISTS audit_editor ON audit_events(editor, event_id);
CREATE TRIGGER IF NOT EXISTS audit_append_only_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


class EditorError(ValueError):
    """An editor account cannot be created or changed; the message says what to do instead."""


class SignInThrottledError(RuntimeError):
    """Too many wrong passwords for one editor name lately; sign-in is refused until the window passes."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(
            f"too many failed sign-ins for this editor: wait {max(1, round(retry_after_s))} s and try again, "
            "or ask an admin to reset the password (`lookbook editors passwd NAME`)"
        )
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Editor:
    name: str
    created_at: float
    disabled: bool


@dataclass(frozen=True)
class Credential:
    """A valid, unexpired token: who it belongs to and the CSRF token bound to it."""

    editor: str
    kind: TokenKind
    csrf_token: str
    expires_at: float


@dataclass(frozen=True)
class IssuedToken:
    token: str
    credential: Credential


@dataclass(frozen=True)
class Decision:
    """An editor's latest verdict on a look, with the image file it was about."""

    look_id: str
    image_path: str
    status: str
    reason: str
    editor: str
    at: float


@dataclass(frozen=True)
class AuditEvent:
    event_id: int
    at: float
    editor: str
    action: str
    look_id: str
    before: dict[str, Any]
    after: dict[str, Any]
    reason: str
    request_id: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Ledger:
    """Thread-safe access to the ledger file; every call opens its own short connection."""

    def __init__(self, path: Path, *, hasher: PasswordHasher | None = None):
        self.path = path
        self.hasher = hasher or PasswordHasher()
        # Verifying unknown names against a real hash keeps login time independent of whether the name exists.
        self._dummy_hash = self.hasher.hash(secrets.token_hex(16))
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> Ledger:
        return cls(data_dir / LEDGER_FILE)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            yield db
        finally:
            db.close()

    # ------------------------------------------------------------------ editors

    def add_editor(self, name: str, password: str) -> Editor:
        name = name.strip().lower()
        if not EDITOR_NAME.match(name):
            raise EditorError(
                f"editor name {name!r} is not allowed: use 2-32 lower-case letters, digits, '.', '_' or '-'"
            )
        if len(password) < MIN_PASSWORD:
            raise EditorError(f"the password is too short: use at least {MIN_PASSWORD} characters")
        now = time.time()
        with self._connect() as db:
            try:
                db.execute(
                    "INSERT INTO editors(name, password_hash, created_at) VALUES (?, ?, ?)",
                    (name, self.hasher.hash(password), now),
                )
            except sqlite3.IntegrityError:
                raise EditorError(
                    f"editor {name!r} already exists: pick another name, or `lookbook editors passwd {name}`"
                ) from None
        return Editor(name=name, created_at=now, disabled=False)

    def set_password(self, name: str, password: str) -> None:
        if len(password) < MIN_PASSWORD:
            raise EditorError(f"the password is too short: use at least {MIN_PASSWORD} characters")
        with self._connect() as db:
            changed = db.execute(
                "UPDATE editors SET password_hash = ? WHERE name = ?", (self.hasher.hash(password), name)
            ).rowcount
        if not changed:
            raise EditorError(f"no editor named {name!r}: create one with `lookbook editors add {name}`")

    def set_disabled(self, name: str, disabled: bool) -> None:
        with self._connect() as db:
            changed = db.execute("UPDATE editors SET disabled = ? WHERE name = ?", (int(disabled), name)).rowcount
            if disabled:
                db.execute("UPDATE tokens SET revoked = 1 WHERE editor = ?", (name,))
        if not changed:
            raise EditorError(f"no editor named {name!r}: see `lookbook editors list`")

    def editors(self) -> list[Editor]:
        with self._connect() as db:
            rows = db.execute("SELECT name, created_at, disabled FROM editors ORDER BY name").fetchall()
        return [Editor(name=r["name"], created_at=r["created_at"], disabled=bool(r["disabled"])) for r in rows]

    def editor(self, name: str) -> Editor | None:
        return next((e for e in self.editors() if e.name == name), None)

    # ------------------------------------------------------------------ sign-in and tokens

    def verify_password(self, name: str, password: str) -> bool:
        name = name.strip().lower()
        with self._connect() as db:
            row = db.execute("SELECT password_hash, disabled FROM editors WHERE name = ?", (name,)).fetchone()
        stored = row["password_hash"] if row else self._dummy_hash
        try:
            ok: bool = self.hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            ok = False
        if not (ok and row and not row["disabled"]):
            return False
        if self.hasher.check_needs_rehash(stored):
            with self._connect() as db:
                db.execute("UPDATE editors SET password_hash = ? WHERE name = ?", (self.hasher.hash(password), name))
        return True

    def issue_token(self, name: str, *, kind: TokenKind, ttl_s: float) -> IssuedToken:
        """A fresh random token for an existing, enabled editor."""
        editor = self.editor(name)
        if editor is None or editor.disabled:
            raise EditorError(f"no enabled editor named {name!r}: create one with `lookbook editors add {name}`")
        token = "lbk_" + secrets.token_urlsafe(32)
        now = time.time()
        credential = Credential(
            editor=editor.name, kind=kind, csrf_token=secrets.token_urlsafe(32), expires_at=now + ttl_s
        )
        with self._connect() as db:
            db.execute(
                "INSERT INTO tokens(token_sha256, editor, kind, csrf_token, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (_digest(token), editor.name, kind, credential.csrf_token, now, credential.expires_at),
            )
        return IssuedToken(token=token, credential=credential)

    def login(self, name: str, password: str, *, kind: TokenKind, ttl_s: float) -> IssuedToken | None:
        """A new token for the right password, None for a wrong one; SignInThrottledError after repeated failures."""
        name = name.strip().lower()
        now = time.time()
        with self._connect() as db:
            db.execute("DELETE FROM sign_in_failures WHERE at < ?", (now - SIGN_IN_WINDOW_S,))
            recent = [
                r["at"]
                for r in db.execute("SELECT at FROM sign_in_failures WHERE editor = ? ORDER BY at", (name,)).fetchall()
            ]
        if len(recent) >= MAX_SIGN_IN_FAILURES:
            raise SignInThrottledError(recent[-MAX_SIGN_IN_FAILURES] + SIGN_IN_WINDOW_S - now)
        if not self.verify_password(name, password):
            with self._connect() as db:
                db.execute("INSERT INTO sign_in_failures(editor, at) VALUES (?, ?)", (name, time.time()))
            return None
        with self._connect() as db:
            db.execute("DELETE FROM sign_in_failures WHERE editor = ?", (name,))
        return self.issue_token(name, kind=kind, ttl_s=ttl_s)

    def authenticate(self, token: str) -> Credential | None:
        """The credential of a token, or None when it is unknown, expired, revoked or its editor disabled."""
        if not token:
            return None
        with self._connect() as db:
            row = db.execute(
                "SELECT t.editor, t.kind, t.csrf_token, t.expires_at "
                "FROM tokens t JOIN editors e ON e.name = t.editor "
                "WHERE t.token_sha256 = ? AND t.revoked = 0 AND e.disabled = 0",
                (_digest(token),),
            ).fetchone()
        if row is None or row["expires_at"] <= time.time():
            return None
        return Credential(
            editor=row["editor"], kind=row["kind"], csrf_token=row["csrf_token"], expires_at=row["expires_at"]
        )

    def revoke(self, token: str) -> None:
        with self._connect() as db:
            db.execute("UPDATE tokens SET revoked = 1 WHERE token_sha256 = ?", (_digest(token),))

    # ------------------------------------------------------------------ audit

    def append_event(
        self,
        *,
        editor: str,
        action: str,
        look_id: str = "",
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        reason: str = "",
        request_id: str = "",
        decision: tuple[str, str] | None = None,
    ) -> AuditEvent:
        """Appends one event; `decision` (image path, status) also records the editor's verdict on the look,
        in the same transaction, and a return to pending withdraws it."""
        at = time.time()
        before, after = before or {}, after or {}
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                cursor = db.execute(
                    "INSERT INTO audit_events(at, editor, action, look_id, before_json, after_json, reason, "
                    "request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        at,
                        editor,
                        action,
                        look_id,
                        json.dumps(before, sort_keys=True, default=str),
                        json.dumps(after, sort_keys=True, default=str),
                        reason,
                        request_id,
                    ),
                )
                if decision is not None:
                    image_path, status = decision
                    if status == "pending":
                        db.execute("DELETE FROM decisions WHERE look_id = ?", (look_id,))
                    else:
                        db.execute(
                            "INSERT INTO decisions(look_id, image_path, status, reason, editor, at) "
                            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(look_id) DO UPDATE SET "
                            "image_path = excluded.image_path, status = excluded.status, "
                            "reason = excluded.reason, editor = excluded.editor, at = excluded.at",
                            (look_id, image_path, status, reason, editor, at),
                        )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            event_id = int(cursor.lastrowid or 0)
        return AuditEvent(event_id, at, editor, action, look_id, before, after, reason, request_id)

    def decisions(self) -> list[Decision]:
        """Every look's latest editor verdict, oldest first."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM decisions ORDER BY at, look_id").fetchall()
        return [Decision(r["look_id"], r["image_path"], r["status"], r["reason"], r["editor"], r["at"]) for r in rows]

    def events(
        self,
        *,
        look_id: str = "",
        editor: str = "",
        action: str = "",
        before_id: int | None = None,
        limit: int = 50,
        ascending: bool = False,
    ) -> list[AuditEvent]:
        """Events matching every given filter; newest first unless `ascending`, paged by event id."""
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("look_id", look_id), ("editor", editor), ("action", action)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if before_id is not None:
            where.append("event_id > ?" if ascending else "event_id < ?")
            args.append(before_id)
        sql = "SELECT * FROM audit_events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY event_id {'ASC' if ascending else 'DESC'} LIMIT ?"
        args.append(limit)
        with self._connect() as db:
            rows = db.execute(sql, args).fetchall()
        return [
            AuditEvent(
                event_id=r["event_id"],
                at=r["at"],
                editor=r["editor"],
                action=r["action"],
                look_id=r["look_id"],
                before=json.loads(r["before_json"]),
                after=json.loads(r["after_json"]),
                reason=r["reason"],
                request_id=r["request_id"],
            )
            for r in rows
        ]
