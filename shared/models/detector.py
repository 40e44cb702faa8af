"""The garment detector: one pass of the frozen backbone over the photo squashed to DETECT_SIZE, and a
small head on its stride-16 and stride-32 maps that regresses one box and a presence per kind.

One box per kind is what Lookbook needs (a look has one top, one bottom, maybe one dress), so the
head regresses them directly instead of scoring anchors; it costs about a quarter of a 224-px crop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from shared.models.resize import normalised, resize_tensor
from shared.models.vision_data import DETECT_KINDS, BoxXYXY, Kind

log = logging.getLogger(__name__)

ARTIFACT_NAME = "detector"
DETECT_SIZE = 160
# Blocks [0, SPLIT_STAGE) give the stride-16 map (112 channels); the rest the stride-32 map.
SPLIT_STAGE = 5
S16_CHANNELS = 112
S32_CHANNELS = 1280


def detector_input(image: Image.Image, size: int = DETECT_SIZE) -> torch.Tensor:
    """The whole photo squashed to a square: boxes are predicted as fractions of width and height."""
    return normalised(resize_tensor(image, size, size))


def backbone_maps(backbone: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen backbone's stride-16 [N,112,h/16,w/16] and stride-32 [N,1280,h/32,w/32] maps."""
    x = backbone.bn1(backbone.conv_stem(x))
    for stage in backbone.blocks[:SPLIT_STAGE]:
        x = stage(x)
    s16 = x
    for stage in backbone.blocks[SPLIT_STAGE:]:
        x = stage(x)
    return s16, backbone.bn2(backbone.conv_head(x))


class DetectorHead(nn.Module):
    """Both maps -> per kind [presence logit, cx, cy, w, h] (box terms through a sigmoid).

    The maps are first reduced by fixed 1x1 projections (whitened PCA of the training features, set
    by `fit_reduction`), so training is an MLP on a small vector: cheap enough for a shared CPU.
    """

    def __init__(self, c16: int = 32, c32: int = 64, grid: int = DETECT_SIZE // 32, fc: int = 256) -> None:
        super().__init__()
        self.r16 = nn.Conv2d(S16_CHANNELS, c16, 1)
        self.r32 = nn.Conv2d(S32_CHANNELS, c32, 1)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear((c16 + c32) * grid * grid, fc), nn.ReLU(),
                                 nn.Dropout(0.1), nn.Linear(fc, len(DETECT_KINDS) * 5))
        for p in (*self.r16.parameters(), *self.r32.parameters()):
            p.requires_grad_(False)

    def reduce(self, s16: torch.Tensor, s32: torch.Tensor) -> torch.Tensor:
        pooled16 = nn.functional.avg_pool2d(s16, 2)
        return torch.cat([self.r16(pooled16), self.r32(s32)], dim=1)

    def forward(self, s16: torch.Tensor, s32: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.reduce(s16, s32)).view(-1, len(DETECT_KINDS), 5)

    @torch.no_grad()
    def fit_reduction(self, s16: torch.Tensor, s32: torch.Tensor) -> None:
        """Sets both projections to the whitened PCA of the maps' per-position channel vectors."""
        for conv, maps in ((self.r16, nn.functional.avg_pool2d(s16.float(), 2)), (self.r32, s32.float())):
            x = maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])
            mean = x.mean(0)
            cov = torch.cov((x - mean).T)
            values, vectors = torch.linalg.eigh(cov)
            top = torch.argsort(values, descending=True)[: conv.out_channels]
            w = vectors[:, top].T / values[top].clamp(min=1e-6).sqrt()[:, None]
            conv.weight.copy_(w[:, :, None, None])
            conv.bias.copy_(-(w @ mean))


def decode(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Head output [N,K,5] -> presence probabilities [N,K] and boxes [N,K,4] as xyxy fractions."""
    presence = raw[..., 0].sigmoid()
    cx, cy, w, h = raw[..., 1:].sigmoid().unbind(-1)
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1).clamp(0, 1)
    return presence, boxes


@dataclass(frozen=True)
class Detection:
    kind: Kind
    box: BoxXYXY  # pixels of the input photo
    confidence: float  # presence probability


class GarmentDetector:
    """The served detector; `detect` is thread-safe as long as the caller serialises torch calls."""

    def __init__(self, head: DetectorHead, backbone: nn.Module, version: str) -> None:
        self.head = head.eval()
        self.backbone = backbone
        self.version = version

    @torch.inference_mode()
    def detect_batch(self, images: list[Image.Image]) -> list[list[Detection]]:
        x = torch.stack([detector_input(im) for im in images])
        presence, boxes = decode(self.head(*backbone_maps(self.backbone, x)))
        out = []
        for im, p, b in zip(images, presence.numpy(), boxes.numpy(), strict=True):
            w, h = im.size
            out.append([Detection(kind, (float(b[k, 0] * w), float(b[k, 1] * h), float(b[k, 2] * w),
                                         float(b[k, 3] * h)), float(p[k]))
                        for k, kind in enumerate(DETECT_KINDS)])
        return out

    def detect(self, image: Image.Image) -> list[Detection]:
        """One Detection per kind (top, bottom, full_body), whatever its presence."""
        return self.detect_batch([image])[0]


def head_state(head: DetectorHead, config: dict[str, Any]) -> dict[str, Any]:
    # float16 halves the shipped file; the head is evaluated in float32.
    return {"config": config, "weights": {k: v.half() if v.is_floating_point() else v
                                          for k, v in head.state_dict().items()}}


def head_from_state(state: dict[str, Any]) -> DetectorHead:
    head = DetectorHead(**state["config"])
    head.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state["weights"].items()})
    return head.eval()


def load_detector(models_dir: Path, backbone: nn.Module | None = None) -> GarmentDetector | None:
    from shared.models.artifacts import load_artifact
    from shared.models.backbone import shared_backbone

    loaded = load_artifact(ARTIFACT_NAME, models_dir)
    if loaded is None:
        log.warning("no detector artifact", extra={"hint": "run `lookbook train detector --data ../shared/data`"})
        return None
    state, manifest = loaded
    return GarmentDetector(head_from_state(state), backbone or shared_backbone(), str(manifest["version"]))


def boxes_array(found: list[Detection]) -> np.ndarray:
    return np.array([d.box for d in found], dtype=np.float32)
