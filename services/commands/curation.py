"""`lookbook editors ...` (accounts and tokens of the editor console) and `lookbook curation export-labels`.

Both work on the curation ledger under LOOKBOOK_DATA_DIR, which SQLite lets them share with a
running service.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click


def _ledger():  # type: ignore[no-untyped-def]
    from services.curation.ledger import Ledger
    from shared.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    return settings, Ledger.in_data_dir(settings.data_dir)


def _audit(ledger, action: str, editor: str, **after: object) -> None:  # type: ignore[no-untyped-def]
    """Account changes go into the audit log too, under the operating-system user who ran the command."""
    import getpass

    try:
        operator = getpass.getuser()
    except (KeyError, OSError):
        operator = "unknown"
    ledger.append_event(editor=f"cli:{operator}", action=action, after={"editor": editor, **after})


def _read_password(password_stdin: bool, *, confirm: bool = True) -> str:
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise click.ClickException('no password on stdin: pipe one line, e.g. `printf %s "$PW" | ...`')
        return password
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=confirm))


@click.group()
def editors() -> None:
    """Editor accounts of the curation console and CurationService (passwords are argon2-hashed)."""


@editors.command(name="add")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin instead of a prompt.")
def add_editor(name: str, password_stdin: bool) -> None:
    """Create editor NAME; prompts for a password (at least 8 characters)."""
    from services.curation.ledger import EditorError

    settings, ledger = _ledger()
    password = _read_password(password_stdin)
    try:
        editor = ledger.add_editor(name, password)
        _audit(ledger, "add_editor", editor.name)
    except EditorError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"editor {editor.name} created in {ledger.path}; sign in at {settings.base_url}/console/")


@editors.command(name="passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the new password from one line of stdin.")
def set_password(name: str, password_stdin: bool) -> None:
    """Set a new password for editor NAME (existing sessions stay valid until they expire)."""
    from services.curation.ledger import EditorError

    _, ledger = _ledger()
    try:
        ledger.set_password(name, _read_password(password_stdin))
        _audit(ledger, "set_password", name)
    except EditorError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"password of {name} changed")


@editors.command(name="list")
def list_editors() -> None:
    """List editor accounts."""
    _, ledger = _ledger()
    rows = ledger.editors()
    if not rows:
        click.echo("no editors yet: create one with `lookbook editors add NAME`")
        return
    for editor in rows:
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(editor.created_at))
        click.echo(f"{editor.name:<32} created {created} UTC{'  (disabled)' if editor.disabled else ''}")


@editors.command(name="disable")
@click.argument("name")
def disable_editor(name: str) -> None:
    """Disable editor NAME and revoke every session and token of theirs at once."""
    from services.curation.ledger import EditorError

    _, ledger = _ledger()
    try:
        ledger.set_disabled(name, True)
        _audit(ledger, "disable_editor", name)
    except EditorError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"editor {name} disabled; their sessions and tokens no longer work")


@editors.command(name="enable")
@click.argument("name")
def enable_editor(name: str) -> None:
    """Enable editor NAME again (they sign in anew)."""
    from services.curation.ledger import EditorError

    _, ledger = _ledger()
    try:
        ledger.set_disabled(name, False)
        _audit(ledger, "enable_editor", name)
    except EditorError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"editor {name} enabled")


@editors.command(name="token")
@click.argument("name")
@click.option(
    "--ttl-days",
    type=click.FloatRange(min=0.001, max=365),
    default=None,
    help="Lifetime in days; default LOOKBOOK_EDITOR_TOKEN_TTL_S.",
)
def issue_token(name: str, ttl_days: float | None) -> None:
    """Print a bearer token for editor NAME, for scripts calling CurationService.

    Send it as `authorization: Bearer <token>` gRPC metadata. Only its SHA-256 is stored.
    """
    from services.curation.ledger import EditorError

    settings, ledger = _ledger()
    ttl = ttl_days * 86400 if ttl_days is not None else settings.editor_token_ttl_s
    try:
        issued = ledger.issue_token(name, kind="api", ttl_s=ttl)
        _audit(ledger, "issue_token", issued.credential.editor, expires_at=issued.credential.expires_at)
    except EditorError as exc:
        raise click.ClickException(str(exc)) from None
    expires = time.strftime("%Y-%m-%d %H:%M", time.gmtime(issued.credential.expires_at))
    click.echo(f"token of {issued.credential.editor}, expires {expires} UTC:", err=True)
    click.echo(issued.token)


@click.group()
def curation() -> None:
    """Curation tools: editor decisions as training labels."""


@curation.command(name="export-labels")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("var/editor-labels.jsonl"),
    show_default=True,
    help="The JSONL label file to write (replaced atomically).",
)
def export_labels_command(out: Path) -> None:
    """Write editor decisions as quality labels: approved/featured -> good, rejected -> bad.

    Each line is {"image": absolute path, "label": "good"|"bad", "reasons": [...], "source": "editor",
    "look_id", "editor"}; a reject reason naming too_dark, too_blurry, low_resolution, not_full_body
    or not_a_look becomes a label reason. Then: `lookbook train quality --labels OUT`.
    """
    from services.curation.labels import export_labels

    _, ledger = _ledger()
    summary = export_labels(ledger, out)
    total = summary.good + summary.bad
    click.echo(f"wrote {total} labels to {out} ({summary.good} good, {summary.bad} bad)")
    if summary.missing_images:
        click.echo(f"left out {summary.missing_images} looks whose image file is gone", err=True)
    if total == 0:
        click.echo("no editor decisions yet: approve or reject looks in the console first", err=True)
    else:
        click.echo(f"next: lookbook train quality --labels {out}")


def register(main: click.Group) -> None:
    main.add_command(editors)
    main.add_command(curation)
