"""Fixtures every test layer shares: free ports, isolated settings, and the team data directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.settings import PREFIX, Settings, load_settings
from tests.support import TEAM_DATA, free_port


@pytest.fixture(autouse=True)
def _clean_lookbook_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's LOOKBOOK_* variables."""
    for key in list(os.environ):
        if key.upper().startswith(PREFIX):
            monkeypatch.delenv(key)


@pytest.fixture
def make_settings(tmp_path: Path) -> Iterator[object]:
    """Settings on a private data dir, with every port free, plus any overrides."""

    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "data_dir": tmp_path / "data",
            "gateway_port": free_port(),
            "vision_port": free_port(),
            "curation_port": free_port(),
            "http_port": free_port(),
            "torch_threads": 2,
        }
        values.update(overrides)
        return load_settings(**values)

    yield build


@pytest.fixture(scope="session")
def team_data() -> Path:
    if not (TEAM_DATA / "looks" / "looks.json").is_file():
        pytest.skip(f"team data not found at {TEAM_DATA}; set TEAM_DATA_DIR")
    return TEAM_DATA
