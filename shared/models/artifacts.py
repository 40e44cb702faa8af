"""Versioned model artifacts: a weights file plus manifest.json (name, version, sha256, created, data, params, metrics).

Every trained head is saved and loaded through these two functions, so each shipped file is checked
against its manifest before it is used.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.pt"
MANIFEST_NAME = "manifest.json"


class ArtifactError(RuntimeError):
    """An artifact is present but unreadable or does not match its manifest."""


def save_artifact(
    name: str,
    state: dict[str, Any],
    *,
    version: str,
    training_data: dict[str, Any],
    params: dict[str, Any],
    metrics: dict[str, Any],
    models_dir: Path,
) -> Path:
    """Writes <models_dir>/<name>/model.pt and manifest.json; returns the artifact's folder."""
    folder = models_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    # Write to a temporary name first, so a reader never sees a half-written weights file.
    tmp = folder / (WEIGHTS_NAME + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(folder / WEIGHTS_NAME)
    manifest = {
        "name": name,
        "version": version,
        "sha256": hashlib.sha256(data).hexdigest(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "training_data": training_data,
        "params": params,
        "metrics": metrics,
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    log.info("artifact saved", extra={"artifact": name, "version": version, "bytes": len(data)})
    return folder


def load_artifact(name: str, models_dir: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(state, manifest) of <models_dir>/<name>, or None when it is absent; raises ArtifactError when
    the weights do not match the manifest's sha256."""
    folder = models_dir / name
    weights, manifest_path = folder / WEIGHTS_NAME, folder / MANIFEST_NAME
    if not weights.is_file() or not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    data = weights.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.get("sha256"):
        raise ArtifactError(
            f"{weights} has sha256 {digest}, but {manifest_path} says {manifest.get('sha256')}: "
            f"retrain it (`lookbook train {name}`) or restore both files from git"
        )
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return state, manifest
