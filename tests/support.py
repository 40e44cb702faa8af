"""Paths and small helpers the test layers import (conftest.py holds the fixtures)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"
# CI gets a copy of the team folder beside the checkout; TEAM_DATA_DIR points elsewhere.
TEAM_DATA = Path(os.environ.get("TEAM_DATA_DIR", REPO.parent / "shared" / "data"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
