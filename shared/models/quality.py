"""The learned low-quality filter: scores a candidate look image in [0, 1] and names what is wrong with it.

The model is a set of small linear heads on the backbone's pooled 1280-d features of the whole image
(squashed to 224x224, `Squash()`, so the whole frame, head to feet, is seen) plus cheap image
statistics (brightness, Laplacian variance, resolution). One head gives the score, P(good look); one
head per reason says why an image is bad: too_dark, too_blurry, low_resolution, not_full_body (a top
and a bottom are not both visible) or not_a_look (a product shot, a flat-lay, no person).

Training (`lookbook train quality --data DIR [--labels FILE]`, see quality_training.py) also reads
extra labels from a JSONL label store, one decision per line, for example exported by
`lookbook curation export-labels`:

    {"image": "var/images/ab/cd.jpg", "label": "good", "reasons": [], "source": "editor"}
    {"image": "/abs/path.jpg", "label": "bad", "reasons": ["too_dark"], "source": "editor"}

- `image`: a path, absolute or relative to the JSONL file's folder;
- `label`: "good" (a look that belongs in the library) or "bad";
- `reasons`: for "bad", any of REASONS (unknown ones are ignored with a warning; may be empty);
- `source`: who decided ("editor", ...), kept in the manifest's counts.

The vision service passes the features it already computed (`features=`) so the backbone runs once.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from shared.models.backbone import FEATURE_DIM, Squash, shared_backbone

log = logging.getLogger(__name__)

ARTIFACT_NAME = "quality"
REASONS: tuple[str, ...] = ("too_dark", "too_blurry", "low_resolution", "not_full_body", "not_a_look")
STAT_NAMES: tuple[str, ...] = (
    "luma_mean",
    "luma_std",
    "luma_p05",
    "luma_p50",
    "luma_p95",
    "dark_fraction",
    "log_laplacian_var",
    "log2_short_side",
    "log2_long_side",
    "aspect_h_over_w",
)
# How the whole image is fed to the backbone for the quality features; the vision service must use
# the same transform when it passes precomputed features.
PREPROCESS = "squash224"
# Laplacian variance is measured at a bounded size, so that sharpness does not grow with pixel count.
_STATS_LONG_SIDE = 512
_DARK_LUMA = 0.12
# A reason is named when its head says at least this.
REASON_MIN_PROBABILITY = 0.5


@dataclass(frozen=True)
class QualityVerdict:
    """score: P(a good look) in [0, 1]; reasons: why it falls below the threshold (empty if it passes)."""

    score: float
    reasons: list[str] = field(default_factory=list)
    accepted: bool = True


def image_stats(image: Image.Image) -> np.ndarray:
    """Cheap statistics of the image as given (before any resizing for the backbone), in STAT_NAMES order."""
    w, h = image.size
    gray = image.convert("L")
    long_side = max(w, h)
    if long_side > _STATS_LONG_SIDE:
        scale = _STATS_LONG_SIDE / long_side
        gray = gray.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    luma = np.asarray(gray, dtype=np.float32) / 255.0
    p05, p50, p95 = np.percentile(luma, (5, 50, 95))
    # 4-neighbour Laplacian by array shifts: no OpenCV needed for one statistic.
    lap = (
        (luma[1:-1, :-2] + luma[1:-1, 2:] + luma[:-2, 1:-1] + luma[2:, 1:-1] - 4.0 * luma[1:-1, 1:-1])
        if min(luma.shape) > 2
        else np.zeros((1, 1), np.float32)
    )
    return np.array(
        [
            float(luma.mean()),
            float(luma.std()),
            float(p05),
            float(p50),
            float(p95),
            float((luma < _DARK_LUMA).mean()),
            math.log(float(lap.var()) + 1e-6),
            math.log2(min(w, h)),
            math.log2(max(w, h)),
            min(h / w, 4.0),
        ],
        dtype=np.float32,
    )


class QualityModel:
    """Linear heads on standardised [backbone features, image statistics]; see the module docstring."""

    def __init__(self, state: dict[str, Any], manifest: dict[str, Any]) -> None:
        self.version: str = str(manifest["version"])
        self.threshold: float = float(state["threshold"])
        self.manifest = manifest
        self.reasons: tuple[str, ...] = tuple(state["reasons"])
        self.mean = torch.as_tensor(state["mean"], dtype=torch.float32)
        self.std = torch.as_tensor(state["std"], dtype=torch.float32)
        # weight [1 + len(reasons), D], bias [1 + len(reasons)]: row 0 is the score head.
        self.weight = torch.as_tensor(state["weight"], dtype=torch.float32)
        self.bias = torch.as_tensor(state["bias"], dtype=torch.float32)
        if state.get("preprocess", PREPROCESS) != PREPROCESS:
            raise ValueError(f"quality artifact expects preprocessing {state['preprocess']!r}, not {PREPROCESS}")
        self._squash = Squash()

    @torch.inference_mode()
    def backbone_features(self, images: list[Image.Image]) -> torch.Tensor:
        """Pooled 1280-d backbone features of whole images, as the heads were trained on."""
        backbone: Any = shared_backbone()
        batch = torch.stack([self._squash(im) for im in images])
        return backbone.forward_head(backbone.forward_features(batch), pre_logits=True)

    @torch.inference_mode()
    def probabilities(self, features: torch.Tensor, stats: np.ndarray) -> torch.Tensor:
        """[N, 1 + len(reasons)] probabilities: column 0 is P(good), then one per reason."""
        x = torch.cat(
            [features.float().reshape(-1, FEATURE_DIM), torch.as_tensor(stats).reshape(-1, len(STAT_NAMES))],
            1,
        )
        z = (x - self.mean) / self.std
        return torch.sigmoid(z @ self.weight.T + self.bias)

    def verdict(self, probs: torch.Tensor) -> QualityVerdict:
        score = float(probs[0])
        if score >= self.threshold:
            return QualityVerdict(score=score, reasons=[], accepted=True)
        ranked = sorted(zip(self.reasons, probs[1:].tolist(), strict=True), key=lambda rp: -rp[1])
        reasons = [r for r, p in ranked if p >= REASON_MIN_PROBABILITY] or [ranked[0][0]]
        return QualityVerdict(score=score, reasons=reasons, accepted=False)

    def score(self, image: Image.Image, features: torch.Tensor | None = None) -> QualityVerdict:
        """Scores one decoded image; pass `features` (the backbone's pooled features of the whole
        image under Squash()) when they are already computed, to skip the backbone."""
        if features is None:
            features = self.backbone_features([image])
        probs = self.probabilities(features, image_stats(image)[None])
        return self.verdict(probs[0])

    def score_many(self, images: list[Image.Image]) -> list[QualityVerdict]:
        probs = self.probabilities(self.backbone_features(images), np.stack([image_stats(im) for im in images]))
        return [self.verdict(p) for p in probs]


def load_quality(models_dir: Path) -> QualityModel | None:
    """The shipped quality model, or None when no artifact is there (callers then skip the filter)."""
    from shared.models.artifacts import load_artifact

    loaded = load_artifact(ARTIFACT_NAME, models_dir)
    if loaded is None:
        log.warning("no quality artifact", extra={"models_dir": str(models_dir)})
        return None
    state, manifest = loaded
    model = QualityModel(state, manifest)
    log.info("quality model loaded", extra={"version": model.version, "threshold": model.threshold})
    return model
