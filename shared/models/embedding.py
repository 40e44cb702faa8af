"""The appearance embedding: the backbone's pooled features fused with a Lab colour histogram, then a
learned linear projection to EMBEDDING_DIM, L2-normalised.

The projection starts from PCA of the fused features and is trained so that perturbed views of one
garment (crop, light, tilt, JPEG) land together and different garments apart (InfoNCE).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.models.backbone import FEATURE_DIM
from shared.models.colour import HIST_DIM

log = logging.getLogger(__name__)

ARTIFACT_NAME = "embedding"
EMBEDDING_DIM = 256
FUSED_DIM = FEATURE_DIM + HIST_DIM


def fuse(pooled: torch.Tensor, colour: torch.Tensor, colour_weight: float) -> torch.Tensor:
    """Unit CNN features beside the (unit) colour histogram scaled by `colour_weight`."""
    return torch.cat([nn.functional.normalize(pooled.float(), dim=-1), colour_weight * colour.float()], dim=-1)


class EmbeddingProjection(nn.Module):
    def __init__(self, dim: int = EMBEDDING_DIM, colour_weight: float = 0.5) -> None:
        super().__init__()
        self.colour_weight = colour_weight
        self.register_buffer("mean", torch.zeros(FUSED_DIM))
        self.proj = nn.Linear(FUSED_DIM, dim, bias=False)

    def forward(self, pooled: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        x = fuse(pooled, colour, self.colour_weight) - self.mean
        return nn.functional.normalize(self.proj(x), dim=-1)


class EmbeddingModel:
    def __init__(self, projection: EmbeddingProjection, version: str) -> None:
        self.projection = projection.eval()
        self.version = version
        self.dim = projection.proj.out_features

    @torch.inference_mode()
    def embed(self, pooled: torch.Tensor, colour: np.ndarray | torch.Tensor) -> np.ndarray:
        vectors = self.projection(pooled, torch.as_tensor(colour, dtype=torch.float32))
        return vectors.numpy().astype(np.float32)


def projection_state(projection: EmbeddingProjection, config: dict[str, Any]) -> dict[str, Any]:
    return {"config": config, "weights": {k: v.half() for k, v in projection.state_dict().items()}}


def load_embedding(models_dir: Path) -> EmbeddingModel | None:
    from shared.models.artifacts import load_artifact

    loaded = load_artifact(ARTIFACT_NAME, models_dir)
    if loaded is None:
        log.warning("no embedding artifact", extra={"hint": "run `lookbook train embedding --data ../shared/data`"})
        return None
    state, manifest = loaded
    projection = EmbeddingProjection(**state["config"])
    projection.load_state_dict({k: v.float() for k, v in state["weights"].items()})
    return EmbeddingModel(projection, str(manifest["version"]))
