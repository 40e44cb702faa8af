"""`lookbook editors ...` and `lookbook curation export-labels` through click, on a temp data dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from services.cli import main
from services.curation.ledger import Ledger

pytestmark = pytest.mark.unit


def test_editor_commands_manage_accounts_and_audit_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKBOOK_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    added = runner.invoke(main, ["editors", "add", "ada", "--password-stdin"], input="long-enough-pw\n")
    assert added.exit_code == 0, added.output
    assert "editor ada created" in added.output
    again = runner.invoke(main, ["editors", "add", "ada", "--password-stdin"], input="long-enough-pw\n")
    assert again.exit_code != 0 and "already exists" in again.output
    short = runner.invoke(main, ["editors", "add", "bob", "--password-stdin"], input="short\n")
    assert short.exit_code != 0 and "too short" in short.output
    listed = runner.invoke(main, ["editors", "list"])
    assert listed.exit_code == 0 and listed.output.startswith("ada")
    token = runner.invoke(main, ["editors", "token", "ada", "--ttl-days", "1"])
    assert token.exit_code == 0, token.output
    secret = token.output.strip().splitlines()[-1]
    ledger = Ledger.in_data_dir(tmp_path)
    credential = ledger.authenticate(secret)
    assert credential is not None and credential.editor == "ada"
    assert runner.invoke(main, ["editors", "disable", "ada"]).exit_code == 0
    assert ledger.authenticate(secret) is None
    actions = [e.action for e in ledger.events(ascending=True)]
    assert actions == ["add_editor", "issue_token", "disable_editor"]
    assert all(e.editor.startswith("cli:") and e.after["editor"] == "ada" for e in ledger.events())


def test_export_labels_without_decisions_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKBOOK_DATA_DIR", str(tmp_path))
    out = tmp_path / "labels.jsonl"
    result = CliRunner().invoke(main, ["curation", "export-labels", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 0 labels" in result.output and "approve or reject looks" in result.output
    assert out.read_text() == ""
