"""The category head: top, bottom, full_body (dress, jumpsuit) or other, from the backbone's pooled
features of a garment crop, which the appearance embedding computes anyway (so it costs nothing more).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.models.backbone import FEATURE_DIM
from shared.models.vision_data import CATEGORY_KINDS

log = logging.getLogger(__name__)

ARTIFACT_NAME = "category"


class CategoryHead(nn.Module):
    """Pooled 1280-d features -> logits over CATEGORY_KINDS."""

    def __init__(self, hidden: int = 256, dropout: float = 0.3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(FEATURE_DIM, hidden), nn.ReLU(),
                                 nn.Dropout(dropout / 2), nn.Linear(hidden, len(CATEGORY_KINDS)))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled)


class CategoryModel:
    def __init__(self, head: CategoryHead, version: str) -> None:
        self.head = head.eval()
        self.version = version

    @torch.inference_mode()
    def probabilities(self, pooled: torch.Tensor) -> torch.Tensor:
        """[N, 1280] -> [N, 4] probabilities in the order of CATEGORY_KINDS."""
        return self.head(pooled.float()).softmax(-1)


def head_state(head: nn.Module, config: dict[str, Any]) -> dict[str, Any]:
    return {"config": config, "weights": {k: v.half() for k, v in head.state_dict().items()}}


def load_category(models_dir: Path) -> CategoryModel | None:
    from shared.models.artifacts import load_artifact

    loaded = load_artifact(ARTIFACT_NAME, models_dir)
    if loaded is None:
        log.warning("no category artifact", extra={"hint": "run `lookbook train category --data ../shared/data`"})
        return None
    state, manifest = loaded
    head = CategoryHead(**state["config"])
    head.load_state_dict({k: v.float() for k, v in state["weights"].items()})
    return CategoryModel(head, str(manifest["version"]))
