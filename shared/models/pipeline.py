"""The vision pipeline behind VisionService.Analyze: find the garments in a photo, categorise and embed
each one, and (when their artifacts exist) project it for compatibility and score the photo's quality.

Every head stands on one shared, frozen EfficientNet-Lite0 backbone:
- detector (shared/models/detector.py): one pass over the photo at 160 px -> a box and presence per kind;
- category (category.py) and appearance embedding (embedding.py): one pass over each garment crop at
  224 px; both read its pooled features, the embedding fuses them with a Lab colour histogram;
- compat (compat.py, optional): reuses the crops' early-stage maps from that same pass.
Missing artifacts fall back to the v0 stand-ins (a fixed-proportion rule, the ImageNet classes, the
raw backbone features), and `model_version` says which ran.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from shared.models.backbone import FEATURE_DIM, Squash, shared_backbone
from shared.models.category import CategoryModel, load_category
from shared.models.colour import centre_lab, colour_histogram, colour_names
from shared.models.detector import Detection, GarmentDetector, load_detector
from shared.models.embedding import EmbeddingModel, load_embedding
from shared.models.vision_data import BoxXYXY, Kind

log = logging.getLogger(__name__)

__all__ = ["Analysis", "BoxXYXY", "FoundGarment", "Kind", "KnownGarment", "VisionPipeline", "crop"]

# ImageNet classes that are garments: the category stand-in when no category artifact exists.
_TOP_CLASSES = (474, 568, 610, 617, 735, 841, 869)  # cardigan, fur coat, T-shirt, lab coat, poncho, ...
_BOTTOM_CLASSES = (601, 608, 655, 689, 775, 842)  # hoopskirt, jean, miniskirt, overskirt, sarong, trunks

# Fixed proportions of a full-body street look (fractions of width and height), measured as the
# median annotated boxes of ../shared/data/looks: the stand-in when no detector artifact exists.
_LOOK_RULE: dict[Kind, BoxXYXY] = {
    "top": (0.22, 0.17, 0.78, 0.50),
    "bottom": (0.24, 0.44, 0.76, 0.86),
}
# A library look keeps a detected garment at or above this presence (LOOKBOOK_DETECT_MIN_CONFIDENCE).
PRESENCE_THRESHOLD = 0.5
# A shopper's photo uses the hinted kind's box down to this presence, else the most present garment
# (LOOKBOOK_DETECT_HINT_CONFIDENCE).
HINT_THRESHOLD = 0.2
_CATEGORY_ORDER: tuple[Kind, ...] = ("top", "bottom", "full_body", "other")


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
    # Category probabilities of the crop (top, bottom, full_body, other), when the category head ran.
    category: dict[str, float] = field(default_factory=dict)


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


def _short(prefix: str, version: str | None, fallback: str) -> str:
    """'detector-1' -> 'det-1': the model version stays short but names each artifact."""
    if not version:
        return f"{prefix}-{fallback}"
    return f"{prefix}-{version.rsplit('-', 1)[-1]}" if "-" in version else f"{prefix}-{version}"


def _optional_model(module: str, loader: str, models_dir: Path) -> Any:
    """Loads a head another part of the team owns, when its code and artifact both exist."""
    try:
        mod = __import__(module, fromlist=[loader])
        return getattr(mod, loader)(models_dir)
    except ImportError:
        return None
    except Exception:  # a broken optional head must not take the vision service down
        log.exception("optional model failed to load", extra={"model_module": module})
        return None


def hinted_query_box(
    detections: dict[Kind, Detection],
    kind: Kind,
    whole: BoxXYXY,
    *,
    presence_threshold: float = PRESENCE_THRESHOLD,
    hint_threshold: float = HINT_THRESHOLD,
) -> tuple[BoxXYXY, float]:
    """The box (and its confidence) a TOP or BOTTOM query photo is embedded from: the detected box of
    that kind down to `hint_threshold`, else the most present garment's at `presence_threshold`,
    else the whole photo."""
    hinted = detections.get(kind)
    if hinted is not None and hinted.confidence >= hint_threshold:
        return hinted.box, hinted.confidence
    best = max(detections.values(), key=lambda d: d.confidence)
    if best.confidence >= presence_threshold:
        return best.box, best.confidence
    return whole, 1.0 - best.confidence


@dataclass
class _Plan:
    kind: Kind
    box: BoxXYXY
    confidence: float
    # AUTO query photos: the kind is decided by the category head on the crop.
    auto: bool = False


class VisionPipeline:
    """Detect, categorise and embed garments. Thread-safe: torch inference runs under one lock."""

    def __init__(
        self,
        models_dir: Path,
        *,
        torch_threads: int = 0,
        presence_threshold: float = PRESENCE_THRESHOLD,
        hint_threshold: float = HINT_THRESHOLD,
    ) -> None:
        self.presence_threshold = presence_threshold
        self.hint_threshold = hint_threshold
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.models_dir = models_dir
        self.backbone = shared_backbone()
        self.squash = Squash()
        self.detector: GarmentDetector | None = load_detector(models_dir, self.backbone)
        self.category: CategoryModel | None = load_category(models_dir)
        self.embedding_model: EmbeddingModel | None = load_embedding(models_dir)
        self.compat = _optional_model("shared.models.compat", "load_compat", models_dir)
        self.quality = _optional_model("shared.models.quality", "load_quality", models_dir)
        self._compat_colour: Any = None
        if self.compat is not None:
            from shared.models.compat_features import colour_features

            self._compat_colour = colour_features
        self.embedding_dim = self.embedding_model.dim if self.embedding_model else FEATURE_DIM
        self.compat_dim = int(self.compat.dim) if self.compat is not None else 0
        parts = [
            _short("det", self.detector.version if self.detector else None, "rule"),
            _short("cat", self.category.version if self.category else None, "imagenet"),
            _short("emb", self.embedding_model.version if self.embedding_model else None, "raw"),
        ]
        if self.compat is not None:
            parts.append(_short("compat", str(self.compat.version), "0"))
        self.model_version = "+".join(parts)
        self.quality_version: str | None = str(self.quality.version) if self.quality is not None else None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ torch (under the lock)

    @torch.inference_mode()
    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Early-stage maps (for compat) and pooled features of a batch of 224-px inputs."""
        b = self.backbone
        with self._lock:
            x = b.bn1(b.conv_stem(batch))
            for stage in b.blocks[:5]:
                x = stage(x)
            stem = x
            for stage in b.blocks[5:]:
                x = stage(x)
            pooled = b.forward_head(b.bn2(b.conv_head(x)), pre_logits=True)
        return stem, pooled

    def _detect(self, image: Image.Image) -> dict[Kind, Detection] | None:
        if self.detector is None:
            return None
        with self._lock:
            found = self.detector.detect(image)
        return {d.kind: d for d in found}

    @torch.inference_mode()
    def _category_probs(self, pooled: torch.Tensor) -> np.ndarray:
        """[N, 4] probabilities over top, bottom, full_body, other."""
        if self.category is not None:
            with self._lock:
                return self.category.probabilities(pooled).numpy()
        with self._lock:
            probs = self.backbone.get_classifier()(pooled).softmax(-1)
        top, bottom = probs[:, list(_TOP_CLASSES)].sum(1), probs[:, list(_BOTTOM_CLASSES)].sum(1)
        total = (top + bottom).clamp(min=1e-6)
        return torch.stack([top / total, bottom / total, torch.zeros_like(top), torch.zeros_like(top)], 1).numpy()

    def _vectors(self, pooled: torch.Tensor, hists: np.ndarray) -> np.ndarray:
        if self.embedding_model is not None:
            with self._lock:
                return self.embedding_model.embed(pooled, hists)
        return torch.nn.functional.normalize(pooled, dim=1).numpy().astype(np.float32)

    # ------------------------------------------------------------------ public API

    def embed(self, crops: Sequence[Image.Image]) -> np.ndarray:
        """Appearance embeddings [N, embedding_dim] of garment crops, L2-normalised float32."""
        if not crops:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        _, pooled = self._forward(torch.stack([self.squash(c) for c in crops]))
        return self._vectors(pooled, np.stack([colour_histogram(c) for c in crops]))

    def analyze(
        self,
        image: Image.Image,
        *,
        known: Sequence[KnownGarment] = (),
        single_garment: bool = False,
        kind_hint: Kind | None = None,
        want_quality: bool = False,
        with_compat: bool = True,
    ) -> Analysis:
        """Finds and embeds garments.

        A library look (`single_garment` False) gets its top, bottom and full-body garment where
        present; `known` boxes replace detection for their kind. A shopper's query photo
        (`single_garment` True) gets one garment: the detected box of `kind_hint`, or with no hint
        the top or bottom that the detector and the category head agree on.
        """
        image = image.convert("RGB")
        w, h = image.size
        plans = self._plan_query(image, known, kind_hint) if single_garment else self._plan_look(image, known)
        crops = [crop(image, p.box) for p in plans]
        inputs = [self.squash(c) for c in crops]
        quality_row = None
        if want_quality and self.quality is not None:
            # The quality heads read the whole photo squashed to 224: one more row of the same batch.
            quality_row = len(inputs)
            inputs.append(self.squash(image))
        analysis = Analysis(garments=[], width=w, height=h, model_version=self.model_version)
        if not inputs:
            # A look photo in which no garment reaches the presence threshold (and no quality asked).
            return analysis
        stem, pooled = self._forward(torch.stack(inputs))
        n = len(crops)
        if n:
            labs = [centre_lab(c) for c in crops]
            hists = np.stack([colour_histogram(c, lab=lab) for c, lab in zip(crops, labs, strict=True)])
            vectors = self._vectors(pooled[:n], hists)
            probs = self._category_probs(pooled[:n])
            garment_pooled = pooled[:n]  # `pooled` keeps the quality row, read below
            if single_garment:
                plans, keep = self._resolve_query(plans, probs, kind_hint)
                crops, vectors, probs = [crops[keep]], vectors[keep:keep + 1], probs[keep:keep + 1]
                labs = [labs[keep]]
                stem, garment_pooled = stem[keep:keep + 1], garment_pooled[keep:keep + 1]
            compat = self._compat(crops, stem, garment_pooled, plans) if with_compat else [None] * len(plans)
            analysis.garments = [
                FoundGarment(kind=p.kind, box=p.box, confidence=float(p.confidence), embedding=vectors[i],
                             compat=compat[i], colors=colour_names(crops[i], lab=labs[i]),
                             category={k: float(v) for k, v in zip(_CATEGORY_ORDER, probs[i], strict=True)})
                for i, p in enumerate(plans)
            ]
        if quality_row is not None:
            verdict = self.quality.score(image, features=pooled[quality_row:quality_row + 1])
            analysis.quality_score = float(verdict.score)
            analysis.quality_reasons = list(verdict.reasons)
        return analysis

    # ------------------------------------------------------------------ planning

    def _plan_look(self, image: Image.Image, known: Sequence[KnownGarment]) -> list[_Plan]:
        w, h = image.size
        given = {k.kind: k.box for k in known}
        detections = None if {"top", "bottom"} <= given.keys() else self._detect(image)
        plans = []
        for kind in ("top", "bottom", "full_body"):
            if kind in given:
                plans.append(_Plan(kind, given[kind], 1.0))
            elif detections is not None:
                found = detections[kind]
                if found.confidence >= self.presence_threshold:
                    plans.append(_Plan(kind, found.box, found.confidence))
            elif kind in _LOOK_RULE and self.detector is None:
                fx0, fy0, fx1, fy1 = _LOOK_RULE[kind]
                plans.append(_Plan(kind, (fx0 * w, fy0 * h, fx1 * w, fy1 * h), 0.5))
        return plans

    def _plan_query(self, image: Image.Image, known: Sequence[KnownGarment], kind_hint: Kind | None) -> list[_Plan]:
        """Candidate boxes of a shopper's photo; the category head picks among AUTO candidates later."""
        w, h = image.size
        whole: BoxXYXY = (0.0, 0.0, float(w), float(h))
        if known:
            k = known[0] if kind_hint is None else next((k for k in known if k.kind == kind_hint), known[0])
            return [_Plan(kind_hint or k.kind, k.box, 1.0, auto=kind_hint is None)]
        detections = self._detect(image)
        if detections is None:
            return [_Plan(kind_hint or "top", whole, 1.0, auto=kind_hint is None)]
        best = max(detections.values(), key=lambda d: d.confidence)
        if kind_hint is not None:
            box, confidence = hinted_query_box(
                detections, kind_hint, whole, presence_threshold=self.presence_threshold,
                hint_threshold=self.hint_threshold,
            )
            return [_Plan(kind_hint, box, confidence)]
        present = [d for k in ("top", "bottom") if (d := detections[k]).confidence >= self.presence_threshold]
        if present:
            return [_Plan(d.kind, d.box, d.confidence, auto=True) for d in present]
        if best.confidence >= self.hint_threshold:
            return [_Plan(best.kind, best.box, best.confidence, auto=True)]
        return [_Plan("top", whole, 1.0 - best.confidence, auto=True)]

    @staticmethod
    def _resolve_query(plans: list[_Plan], probs: np.ndarray, kind_hint: Kind | None) -> tuple[list[_Plan], int]:
        """Picks the one garment of a query photo and, for AUTO, its kind (top or bottom)."""
        if kind_hint is not None or not plans[0].auto:
            return plans[:1], 0
        scores = []
        for i, p in enumerate(plans):
            area = max(1.0, (p.box[2] - p.box[0]) * (p.box[3] - p.box[1]))
            # Where a photo shows a top and a bottom, the garment it is about fills more of it.
            scores.append(p.confidence * max(probs[i, 0], probs[i, 1]) * area ** 0.5)
        keep = int(np.argmax(scores))
        top, bottom = float(probs[keep, 0]), float(probs[keep, 1])
        kind: Kind = "top" if top >= bottom else "bottom"
        confidence = max(top, bottom) / max(top + bottom, 1e-6)
        return [_Plan(kind, plans[keep].box, confidence)], keep

    def _compat(
        self, crops: list[Image.Image], stem: torch.Tensor, pooled: torch.Tensor, plans: list[_Plan]
    ) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = [None] * len(plans)
        if self.compat is None:
            return out
        reuse = self.compat.reuses_backbone_pool
        for i, p in enumerate(plans):
            if p.kind in ("top", "bottom"):
                colour = self._compat_colour(crops[i])[None]
                with self._lock:
                    if reuse:  # the tail is the backbone's own: its pooled feature is already computed
                        out[i] = self.compat.project_pooled(stem[i:i + 1], pooled[i:i + 1], colour, p.kind)[0]
                    else:
                        out[i] = self.compat.project_features(stem[i:i + 1].numpy(), colour, p.kind)[0]
        return out


def pipeline_for(settings: Any, *, torch_threads: int | None = None) -> VisionPipeline:
    """The vision pipeline configured by a process's settings (shared.settings.Settings)."""
    return VisionPipeline(
        settings.models_dir,
        torch_threads=settings.torch_threads if torch_threads is None else torch_threads,
        presence_threshold=settings.detect_min_confidence,
        hint_threshold=settings.detect_hint_confidence,
    )
