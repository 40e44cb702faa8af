"""The vision pipeline behind VisionService.Analyze: find the garments in a photo and embed each one.

This first version uses documented stand-ins until the trained heads land (issue 3):
- region finding: a fixed-proportion rule for full looks, or the whole photo as one garment;
- category: the ImageNet classifier's garment classes, zero-shot;
- appearance embedding: the backbone's pooled features, L2-normalised (the real backbone).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from shared.models.backbone import FEATURE_DIM, Squash, shared_backbone

log = logging.getLogger(__name__)

Kind = Literal["top", "bottom", "full_body", "other"]
BoxXYXY = tuple[float, float, float, float]

# ImageNet classes that are garments, for the zero-shot category stand-in.
_TOP_CLASSES = (474, 568, 610, 617, 735, 841, 869)  # cardigan, fur coat, T-shirt, lab coat, poncho, ...
_BOTTOM_CLASSES = (601, 608, 655, 689, 775, 842)  # hoopskirt, jean, miniskirt, overskirt, sarong, trunks

# Fixed proportions of a full-body street look (fractions of width and height), measured as the
# median annotated boxes of ../shared/data/looks: the stand-in for the detector.
_LOOK_RULE: dict[Kind, BoxXYXY] = {
    "top": (0.22, 0.17, 0.78, 0.50),
    "bottom": (0.24, 0.44, 0.76, 0.86),
}


@dataclass(frozen=True)
class KnownGarment:
    """A box given by a person (or a manifest): it replaces detection for that kind."""

    kind: Kind
    box: BoxXYXY


@dataclass
class FoundGarment:
    kind: Kind
    box: BoxXYXY
    confidence: float
    embedding: np.ndarray
    compat: np.ndarray | None = None
    colors: list[str] = field(default_factory=list)


@dataclass
class Analysis:
    garments: list[FoundGarment]
    width: int
    height: int
    model_version: str
    quality_score: float | None = None
    quality_reasons: list[str] = field(default_factory=list)

    def garment(self, kind: Kind) -> FoundGarment | None:
        found = [g for g in self.garments if g.kind == kind]
        return max(found, key=lambda g: g.confidence) if found else None


def crop(image: Image.Image, box: BoxXYXY) -> Image.Image:
    w, h = image.size
    x0, y0, x1, y1 = box
    x0, y0 = max(0.0, min(x0, w - 1.0)), max(0.0, min(y0, h - 1.0))
    x1, y1 = max(x0 + 1.0, min(x1, float(w))), max(y0 + 1.0, min(y1, float(h)))
    return image.crop((round(x0), round(y0), round(x1), round(y1)))


class VisionPipeline:
    """Detect, categorise and embed garments. Thread-safe: torch inference runs under one lock."""

    def __init__(self, models_dir: Path, *, torch_threads: int = 0) -> None:
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.models_dir = models_dir
        self.backbone = shared_backbone()
        self.squash = Squash()
        self.embedding_dim = FEATURE_DIM
        self.compat_dim = 0
        self.model_version = "lite0-imagenet+rule-0"
        self._lock = threading.Lock()

    @torch.inference_mode()
    def _pooled(self, crops: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = torch.stack([self.squash(c) for c in crops])
        with self._lock:
            pooled = self.backbone.forward_head(self.backbone.forward_features(batch), pre_logits=True)
            logits = self.backbone.get_classifier()(pooled)
        return pooled, logits

    def embed(self, crops: Sequence[Image.Image]) -> np.ndarray:
        pooled, _ = self._pooled(crops)
        return torch.nn.functional.normalize(pooled, dim=1).numpy().astype(np.float32)

    def analyze(
        self,
        image: Image.Image,
        *,
        known: Sequence[KnownGarment] = (),
        single_garment: bool = False,
        kind_hint: Kind | None = None,
        want_quality: bool = False,
    ) -> Analysis:
        """Finds and embeds garments. `single_garment` treats the photo as one garment (a shopper's
        query); otherwise it is a full look and its top and bottom are located."""
        w, h = image.size
        boxes: list[tuple[Kind, BoxXYXY, float]] = [(k.kind, k.box, 1.0) for k in known]
        if single_garment:
            boxes = [(kind_hint or "top", (0.0, 0.0, float(w), float(h)), 1.0)]
        else:
            have = {k for k, _, _ in boxes}
            for kind, (fx0, fy0, fx1, fy1) in _LOOK_RULE.items():
                if kind not in have:
                    boxes.append((kind, (fx0 * w, fy0 * h, fx1 * w, fy1 * h), 0.5))
        crops = [crop(image, box) for _, box, _ in boxes]
        pooled, logits = self._pooled(crops)
        vectors = torch.nn.functional.normalize(pooled, dim=1).numpy().astype(np.float32)
        garments = []
        for i, (kind, box, confidence) in enumerate(boxes):
            if single_garment and kind_hint is None:
                probs = logits[i].softmax(-1)
                top, bottom = float(probs[list(_TOP_CLASSES)].sum()), float(probs[list(_BOTTOM_CLASSES)].sum())
                kind = "top" if top >= bottom else "bottom"
                confidence = max(top, bottom) / max(top + bottom, 1e-6)
            garments.append(FoundGarment(kind=kind, box=box, confidence=confidence, embedding=vectors[i]))
        return Analysis(garments=garments, width=w, height=h, model_version=self.model_version)
