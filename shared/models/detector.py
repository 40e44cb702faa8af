"""The garment detector: one pass of the frozen backbone over the photo squashed to DETECT_SIZE, and a
small head on its stride-16 and stride-32 maps that finds one box and a presence per kind.

One box per kind is what Lookbook needs (a look has one top, one bottom, maybe one dress), so the
head does not score anchors. It places each of a box's four edges on its own: every position of the
fused map votes for "the left (top, ...) edge of this kind runs through my column (row)", the votes
are pooled along the edge into a 1-D profile over the columns (rows), and the edge sits at the
profile's expected position (a soft-argmax, refined on a grid `EDGE_BINS` times finer than the map).
Such a head is convolutional throughout, so what it learns about a hem or a waistline holds at
every position; on ../shared/data it placed boxes better than regressing the four numbers from
the flattened map (detector-1), with the same backbone pass. Its cost is a few small convolutions on
a 10x10 map, next to the backbone pass at DETECT_SIZE (about half a 224-px crop).
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
# Edge positions are resolved on a grid this many times finer than the stride-16 map.
EDGE_BINS = 4


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


@dataclass(frozen=True)
class HeadOutput:
    """Raw head outputs: presence logits [N,K] and edge profiles (logits over positions).

    `columns` [N,K,2,W] holds the left and right edges' profiles over the map's columns, `rows`
    [N,K,2,H] the top and bottom edges' over its rows.
    """

    presence: torch.Tensor
    columns: torch.Tensor
    rows: torch.Tensor


def _conv_bn(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class DetectorHead(nn.Module):
    """Both backbone maps -> presence per kind and a 1-D profile per box edge (see the module doc).

    The stride-32 map is reduced and upsampled onto the stride-16 grid, fused with the reduced
    stride-16 map by two 3x3 convolutions; per (kind, edge) one 1x1 convolution gives each position's
    vote and another its weight in the pooling along the edge. Presence reads the pooled stride-32
    features (what the photo shows) and the pooled fused map.
    """

    def __init__(self, r16: int = 64, r32: int = 96, width: int = 96, dropout: float = 0.2) -> None:
        super().__init__()
        kinds = len(DETECT_KINDS)
        self.kinds = kinds
        self.reduce16 = _conv_bn(S16_CHANNELS, r16, 1)
        self.reduce32 = _conv_bn(S32_CHANNELS, r32, 1)
        self.fuse = nn.Sequential(_conv_bn(r16 + r32, width, 3), _conv_bn(width, width, 3))
        self.vote = nn.Conv2d(width, kinds * 4, 1)
        self.weight = nn.Conv2d(width, kinds * 4, 1)
        self.presence = nn.Sequential(nn.Dropout(dropout), nn.Linear(S32_CHANNELS + width, kinds))

    def forward(self, s16: torch.Tensor, s32: torch.Tensor) -> HeadOutput:
        up = nn.functional.interpolate(self.reduce32(s32), size=s16.shape[-2:], mode="bilinear", align_corners=False)
        fused = self.fuse(torch.cat([self.reduce16(s16), up], dim=1))
        n, _, h, w = fused.shape
        vote = self.vote(fused).view(n, self.kinds, 4, h, w)
        weight = self.weight(fused).view(n, self.kinds, 4, h, w)
        # Edges 0 and 2 (x0, x1) pool their votes down each column; 1 and 3 (y0, y1) along each row.
        columns = (vote[:, :, 0::2] * weight[:, :, 0::2].softmax(dim=3)).sum(dim=3)
        rows = (vote[:, :, 1::2] * weight[:, :, 1::2].softmax(dim=4)).sum(dim=4)
        presence = self.presence(torch.cat([s32.mean(dim=(2, 3)), fused.mean(dim=(2, 3))], dim=1))
        return HeadOutput(presence, columns, rows)


def edge_distribution(profile: torch.Tensor, bins: int = EDGE_BINS) -> torch.Tensor:
    """Profile logits [..., L] -> probabilities over L * bins positions (the logits linearly upsampled)."""
    shape = profile.shape
    fine = nn.functional.interpolate(profile.reshape(-1, 1, shape[-1]), scale_factor=bins, mode="linear",
                                     align_corners=False)
    return fine.view(*shape[:-1], shape[-1] * bins).softmax(dim=-1)


def bin_centres(count: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Centres of `count` equal bins over [0, 1]."""
    return (torch.arange(count, dtype=dtype) + 0.5) / count


def decode(out: HeadOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """Head output -> presence probabilities [N,K] and boxes [N,K,4] as xyxy fractions (x0 <= x1, y0 <= y1)."""
    cols, rows = edge_distribution(out.columns), edge_distribution(out.rows)
    x = (cols * bin_centres(cols.shape[-1], cols.dtype)).sum(-1)  # [N,K,2]
    y = (rows * bin_centres(rows.shape[-1], rows.dtype)).sum(-1)
    x0, x1 = torch.minimum(x[..., 0], x[..., 1]), torch.maximum(x[..., 0], x[..., 1])
    y0, y1 = torch.minimum(y[..., 0], y[..., 1]), torch.maximum(y[..., 0], y[..., 1])
    return out.presence.sigmoid(), torch.stack([x0, y0, x1, y1], dim=-1)


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
    def predict(self, s16: torch.Tensor, s32: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Presence [N,K] and xyxy-fraction boxes [N,K,4] from the backbone's maps."""
        presence, boxes = decode(self.head(s16.float(), s32.float()))
        return presence.numpy(), boxes.numpy()

    @torch.inference_mode()
    def detect_batch(self, images: list[Image.Image]) -> list[list[Detection]]:
        x = torch.stack([detector_input(im) for im in images])
        presence, boxes = self.predict(*backbone_maps(self.backbone, x))
        out = []
        for im, p, b in zip(images, presence, boxes, strict=True):
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
