"""The README stays true: its two commands, its configuration table, and CI's use of the test command."""

from __future__ import annotations

import importlib.util

import pytest

from tests.support import REPO

pytestmark = pytest.mark.unit


def _table_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("settings_table", REPO / "scripts" / "settings_table.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_table_is_current() -> None:
    readme = (REPO / "README.md").read_text()
    assert _table_module().render_into(readme) == readme, "run: python scripts/settings_table.py --write README.md"


def test_two_setup_commands_and_ci_runs_the_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci
    makefile = (REPO / "Makefile").read_text()
    assert "\nrun:" in makefile and "\ntest:" in makefile
