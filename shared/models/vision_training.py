"""Training and evaluation of the vision heads (detector, category, embedding) on a data folder laid out
like ../shared/data, over frozen-backbone features cached under .cache/vision keyed by content.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from shared.models import category as category_mod
from shared.models import detector as detector_mod
from shared.models import embedding as embedding_mod
from shared.models.backbone import Squash
from shared.models.colour import HIST_DIM, colour_histogram
from shared.models.vision_data import (
    CATEGORY_KINDS,
    DETECT_KINDS,
    BoxXYXY,
    GarmentPhoto,
    Kind,
    LookRecord,
    Split,
    detection_view,
    foreground_box,
    garment_view,
    iou,
    load_garment_photos,
    load_looks,
    perturbed_crop,
    pick_split,
)

log = logging.getLogger(__name__)

# 3: inputs resized by shared.models.resize (torchvision), as served.
CACHE_VERSION = "vision-features-3"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "vision"
SEED = 1234
# The v0 stand-in for the detector (fractions of width and height): the detection baseline.
LOOK_RULE: dict[Kind, BoxXYXY] = {"top": (0.22, 0.17, 0.78, 0.50), "bottom": (0.24, 0.44, 0.76, 0.86)}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def default_workers(device: torch.device) -> int:
    return min(12, (os.cpu_count() or 2) - 1) if device.type == "cuda" else 0


def _digest(parts: Sequence[object]) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:24]


def _file_key(path: Path) -> str:
    """A cheap content key: size plus a hash of the first and last 64 KiB."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(65536)
        handle.seek(max(0, size - 65536))
        tail = handle.read()
    return f"{size}-{hashlib.sha1(head + tail).hexdigest()[:16]}"


def crop_box(image: Image.Image, box: BoxXYXY) -> Image.Image:
    """The serving crop (same rounding as the pipeline)."""
    w, h = image.size
    x0, y0, x1, y1 = box
    x0, y0 = max(0.0, min(x0, w - 1.0)), max(0.0, min(y0, h - 1.0))
    x1, y1 = max(x0 + 1.0, min(x1, float(w))), max(y0 + 1.0, min(y1, float(h)))
    return image.crop((round(x0), round(y0), round(x1), round(y1)))


# ---------------------------------------------------------------------------------------- features


@dataclass(frozen=True)
class CropJob:
    """One garment crop to embed: view 0 is the box as served, view >= 1 a perturbed crop (seeded)."""

    path: Path
    box: BoxXYXY | None
    view: int
    seed: str


class _CropDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, jobs: Sequence[CropJob]) -> None:
        self.jobs = jobs
        self.squash = Squash()

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        job = self.jobs[i]
        with Image.open(job.path) as raw:
            image = raw.convert("RGB")
        if job.view == 0 and job.box is not None:
            crop = crop_box(image, job.box)
        else:
            crop = garment_view(image, job.box, job.view, job.seed)
        return self.squash(crop), torch.from_numpy(colour_histogram(crop))


def crop_features(
    jobs: Sequence[CropJob], *, device: torch.device, cache_dir: Path = DEFAULT_CACHE_DIR,
    batch_size: int = 64, workers: int | None = None, desc: str = "crop features",
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled backbone features [N,1280] (float16) and Lab histograms [N,HIST_DIM] of each crop, cached."""
    from shared.models.backbone import shared_backbone

    key = _digest([CACHE_VERSION, "crops", *[(_file_key(j.path), j.box, j.view, j.seed) for j in jobs]])
    file = cache_dir / f"crops-{key}.npz"
    if file.is_file():
        with np.load(file) as cached:
            return cached["pooled"], cached["colour"]
    backbone = shared_backbone().to(device)
    pooled = np.zeros((len(jobs), 1280), dtype=np.float16)
    colour = np.zeros((len(jobs), HIST_DIM), dtype=np.float32)
    loader = torch.utils.data.DataLoader(_CropDataset(jobs), batch_size=batch_size,
                                         num_workers=default_workers(device) if workers is None else workers)
    start = 0
    with torch.inference_mode(), tqdm(total=len(jobs), desc=desc, unit="crop") as bar:
        for x, c in loader:
            f = backbone.forward_head(backbone.forward_features(x.to(device)), pre_logits=True)
            pooled[start:start + len(x)] = f.float().cpu().numpy()
            colour[start:start + len(x)] = c.numpy()
            start += len(x)
            bar.update(len(x))
    backbone.to("cpu")
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(file.with_suffix(".tmp.npz"), pooled=pooled, colour=colour)
    file.with_suffix(".tmp.npz").replace(file)
    return pooled, colour


@dataclass(frozen=True)
class DetectJob:
    path: Path
    boxes: dict[Kind, BoxXYXY]
    view: int
    seed: str


def _target(boxes: dict[Kind, BoxXYXY], w: float, h: float) -> np.ndarray:
    """[K, 5]: presence, then the box as xyxy fractions."""
    out = np.zeros((len(DETECT_KINDS), 5), dtype=np.float32)
    for k, kind in enumerate(DETECT_KINDS):
        if kind in boxes:
            x0, y0, x1, y1 = boxes[kind]
            out[k] = (1.0, x0 / w, y0 / h, x1 / w, y1 / h)
    return np.clip(out, 0, 1)


class _DetectDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, jobs: Sequence[DetectJob]) -> None:
        self.jobs = jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        job = self.jobs[i]
        with Image.open(job.path) as raw:
            image = raw.convert("RGB")
        boxes = job.boxes
        if "__extent__" in boxes:  # a single-garment photo: its kind's box is the foreground extent
            kind = boxes["__extent__"]  # type: ignore[index]
            boxes = {} if kind == "other" else {kind: foreground_box(image)}  # type: ignore[dict-item]
        image, boxes = detection_view(image, boxes, job.view, job.seed)
        return detector_mod.detector_input(image), torch.from_numpy(_target(boxes, *image.size))


def detect_features(
    jobs: Sequence[DetectJob], *, device: torch.device, cache_dir: Path = DEFAULT_CACHE_DIR,
    batch_size: int = 64, workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stride-16 and stride-32 maps (float16) and targets [N,K,5] of each detection view, cached."""
    from shared.models.backbone import shared_backbone

    key = _digest([CACHE_VERSION, "detect", detector_mod.DETECT_SIZE,
                   *[(_file_key(j.path), sorted(j.boxes.items()), j.view, j.seed) for j in jobs]])
    file = cache_dir / f"detect-{key}.npz"
    if file.is_file():
        with np.load(file) as cached:
            return cached["s16"], cached["s32"], cached["target"]
    backbone = shared_backbone().to(device)
    g = detector_mod.DETECT_SIZE
    s16 = np.zeros((len(jobs), detector_mod.S16_CHANNELS, g // 16, g // 16), dtype=np.float16)
    s32 = np.zeros((len(jobs), detector_mod.S32_CHANNELS, g // 32, g // 32), dtype=np.float16)
    target = np.zeros((len(jobs), len(DETECT_KINDS), 5), dtype=np.float32)
    loader = torch.utils.data.DataLoader(_DetectDataset(jobs), batch_size=batch_size,
                                         num_workers=default_workers(device) if workers is None else workers)
    start = 0
    with torch.inference_mode(), tqdm(total=len(jobs), desc="detector features", unit="view") as bar:
        for x, t in loader:
            a, b = detector_mod.backbone_maps(backbone, x.to(device))
            n = len(x)
            s16[start:start + n], s32[start:start + n] = a.half().cpu().numpy(), b.half().cpu().numpy()
            target[start:start + n] = t.numpy()
            start += n
            bar.update(n)
    backbone.to("cpu")
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(file.with_suffix(".tmp.npz"), s16=s16, s32=s32, target=target)
    file.with_suffix(".tmp.npz").replace(file)
    return s16, s32, target


# ---------------------------------------------------------------------------------------- detector


def detection_jobs(data_dir: Path, split: Split, *, look_views: int, photo_views: int,
                   photo_fraction: float = 1.0) -> list[DetectJob]:
    jobs = []
    for look in pick_split([lk for lk in load_looks(data_dir) if lk.boxes], split):
        jobs += [DetectJob(look.path, look.boxes, v, f"look:{look.id}") for v in range(look_views)]
    rng = np.random.default_rng(SEED)
    for photo in pick_split(load_garment_photos(data_dir), split):
        if rng.random() < photo_fraction:
            extent: dict[Any, Any] = {"__extent__": photo.kind}
            jobs += [DetectJob(photo.path, extent, v, f"photo:{photo.id}") for v in range(photo_views)]
    return jobs


def _giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ix0, iy0 = torch.maximum(a[..., 0], b[..., 0]), torch.maximum(a[..., 1], b[..., 1])
    ix1, iy1 = torch.minimum(a[..., 2], b[..., 2]), torch.minimum(a[..., 3], b[..., 3])
    inter = (ix1 - ix0).clamp(min=0) * (iy1 - iy0).clamp(min=0)
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    union = area_a + area_b - inter + 1e-6
    cx0, cy0 = torch.minimum(a[..., 0], b[..., 0]), torch.minimum(a[..., 1], b[..., 1])
    cx1, cy1 = torch.maximum(a[..., 2], b[..., 2]), torch.maximum(a[..., 3], b[..., 3])
    hull = (cx1 - cx0) * (cy1 - cy0) + 1e-6
    return inter / union - (hull - union) / hull


def train_detector(
    data_dir: Path, *, device: torch.device, look_views: int = 4, photo_views: int = 1,
    photo_fraction: float = 0.15, epochs: int = 40, batch_size: int = 128, lr: float = 2e-3,
    cache_dir: Path = DEFAULT_CACHE_DIR,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Returns (artifact state, params, training data summary)."""
    torch.manual_seed(SEED)
    jobs = detection_jobs(data_dir, "train", look_views=look_views, photo_views=photo_views,
                          photo_fraction=photo_fraction)
    s16, s32, target = detect_features(jobs, device=device, cache_dir=cache_dir)
    config: dict[str, Any] = {"c16": 32, "c32": 64, "grid": detector_mod.DETECT_SIZE // 32, "fc": 256}
    head = detector_mod.DetectorHead(**config)
    reduced = []
    with torch.no_grad():
        sample = torch.from_numpy(np.sort(np.random.default_rng(SEED).permutation(len(jobs))[:300]))
        head.fit_reduction(torch.from_numpy(s16[sample.numpy()]), torch.from_numpy(s32[sample.numpy()]))
        for i in range(0, len(jobs), 256):
            reduced.append(head.reduce(torch.from_numpy(s16[i:i + 256]).float(),
                                       torch.from_numpy(s32[i:i + 256]).float()))
    head = head.to(device)
    x, t = torch.cat(reduced).to(device), torch.from_numpy(target).to(device)
    opt = torch.optim.AdamW(head.mlp.parameters(), lr=lr, weight_decay=1e-2)
    steps = epochs * ((len(jobs) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(SEED)
    head.train()
    for _epoch in tqdm(range(epochs), desc="train detector", unit="epoch"):
        order = torch.randperm(len(jobs), generator=gen).to(device)
        for i in range(0, len(jobs), batch_size):
            idx = order[i:i + batch_size]
            raw = head.mlp(x[idx]).view(-1, len(DETECT_KINDS), 5)
            _, boxes = detector_mod.decode(raw)
            tt = t[idx]
            present = tt[..., 0]
            loss_p = nn.functional.binary_cross_entropy_with_logits(raw[..., 0], present)
            mask = present > 0.5
            if mask.any():
                loss_b = (boxes[mask] - tt[..., 1:][mask]).abs().sum(-1).mean() * 2.0
                loss_b = loss_b + (1 - _giou(boxes[mask], tt[..., 1:][mask])).mean()
            else:
                loss_b = torch.zeros((), device=device)
            loss = loss_p + loss_b
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    head = head.cpu().eval()
    params = {"detect_size": detector_mod.DETECT_SIZE, "look_views": look_views, "photo_views": photo_views,
              "photo_fraction": photo_fraction, "epochs": epochs, "batch_size": batch_size, "lr": lr,
              "seed": SEED, "head": config}
    data = {"dir": str(data_dir), "split": "train", "views": len(jobs),
            "looks": sum(1 for j in jobs if j.seed.startswith("look:") and j.view == 0),
            "photos": sum(1 for j in jobs if j.seed.startswith("photo:") and j.view == 0)}
    return detector_mod.head_state(head, config), params, data


# ---------------------------------------------------------------------------------------- category and embedding


def look_crop_items(looks: Sequence[LookRecord]) -> list[tuple[str, Path, BoxXYXY, Kind]]:
    return [(f"look:{lk.id}:{kind}", lk.path, box, kind) for lk in looks for kind, box in lk.boxes.items()]


def garment_jobs(data_dir: Path, split: Split, views: int,
                 photo_fraction: float = 1.0) -> tuple[list[CropJob], np.ndarray, np.ndarray]:
    """Crop jobs for every view of every garment item, with labels (index into CATEGORY_KINDS) and item ids.

    `photo_fraction` keeps a seeded share of the single-garment photos (all look crops are kept)."""
    rng = np.random.default_rng(SEED)
    photos = [p for p in pick_split(load_garment_photos(data_dir), split) if rng.random() < photo_fraction]
    items: list[tuple[str, Path, BoxXYXY | None, Kind]] = [(f"photo:{p.id}", p.path, None, p.kind) for p in photos]
    items += look_crop_items(pick_split(load_looks(data_dir), split))
    jobs, labels, item_ids = [], [], []
    for n, (seed, path, box, kind) in enumerate(items):
        for v in range(views):
            jobs.append(CropJob(path, box, v, seed))
            labels.append(CATEGORY_KINDS.index(kind))
            item_ids.append(n)
    return jobs, np.array(labels), np.array(item_ids)


def train_category(
    data_dir: Path, *, device: torch.device, views: int = 2, photo_fraction: float = 0.2, epochs: int = 40,
    lr: float = 2e-3, batch_size: int = 256, cache_dir: Path = DEFAULT_CACHE_DIR,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    torch.manual_seed(SEED)
    jobs, labels, _ = garment_jobs(data_dir, "train", views, photo_fraction)
    pooled, _ = crop_features(jobs, device=device, cache_dir=cache_dir, desc="garment crops")
    config: dict[str, Any] = {"hidden": 256, "dropout": 0.3}
    head = category_mod.CategoryHead(**config).to(device)
    x, y = torch.from_numpy(pooled).float().to(device), torch.from_numpy(labels).to(device)
    counts = torch.bincount(y, minlength=len(CATEGORY_KINDS)).float()
    weight = (counts.sum() / (counts.clamp(min=1) * len(CATEGORY_KINDS))).sqrt()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(SEED)
    head.train()
    for _epoch in tqdm(range(epochs), desc="train category", unit="epoch"):
        order = torch.randperm(len(y), generator=gen).to(device)
        for i in range(0, len(y), batch_size):
            idx = order[i:i + batch_size]
            loss = nn.functional.cross_entropy(head(x[idx]), y[idx], weight=weight, label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
    head = head.cpu().eval()
    params = {"views": views, "photo_fraction": photo_fraction, "epochs": epochs, "lr": lr,
              "batch_size": batch_size, "seed": SEED, "head": config}
    data = {"dir": str(data_dir), "split": "train", "crops": len(jobs),
            "per_kind": {k: int((labels == i).sum()) // views for i, k in enumerate(CATEGORY_KINDS)}}
    return category_mod.head_state(head, config), params, data


def train_embedding(
    data_dir: Path, *, device: torch.device, views: int = 2, photo_fraction: float = 0.2, epochs: int = 30,
    lr: float = 1e-3, batch_size: int = 512, temperature: float = 0.05, colour_weight: float = 0.5,
    cache_dir: Path = DEFAULT_CACHE_DIR,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A linear projection of [unit CNN features, colour histogram], PCA-initialised, then trained with
    InfoNCE across the perturbed views of each garment."""
    torch.manual_seed(SEED)
    jobs, _, item_ids = garment_jobs(data_dir, "train", views, photo_fraction)
    pooled, colour = crop_features(jobs, device=device, cache_dir=cache_dir, desc="garment crops")
    config: dict[str, Any] = {"dim": embedding_mod.EMBEDDING_DIM, "colour_weight": colour_weight}
    projection = embedding_mod.EmbeddingProjection(**config)
    fused = embedding_mod.fuse(torch.from_numpy(pooled), torch.from_numpy(colour), colour_weight)
    mean = fused.mean(0)
    _, _, vh = torch.linalg.svd(fused - mean, full_matrices=False)
    with torch.no_grad():
        projection.mean.copy_(mean)
        projection.proj.weight.copy_(vh[: config["dim"]])
    projection = projection.to(device)
    n_items = int(item_ids.max()) + 1
    by_view = torch.from_numpy(np.arange(len(jobs)).reshape(n_items, views)).to(device)
    p, c = torch.from_numpy(pooled).float().to(device), torch.from_numpy(colour).to(device)
    opt = torch.optim.AdamW(projection.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(SEED)
    for _epoch in tqdm(range(epochs), desc="train embedding", unit="epoch"):
        order = torch.randperm(n_items, generator=gen).to(device)
        for i in range(0, n_items, batch_size):
            items = order[i:i + batch_size]
            pick = torch.stack([torch.randperm(views, generator=gen)[:2] for _ in range(len(items))]).to(device)
            ia, ib = by_view[items, pick[:, 0]], by_view[items, pick[:, 1]]
            za, zb = projection(p[ia], c[ia]), projection(p[ib], c[ib])
            logits = za @ zb.T / temperature
            target = torch.arange(len(items), device=device)
            loss = (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
    projection = projection.cpu().eval()
    params = {"views": views, "photo_fraction": photo_fraction, "epochs": epochs, "lr": lr,
              "batch_size": batch_size, "temperature": temperature,
              "seed": SEED, **config}
    data = {"dir": str(data_dir), "split": "train", "items": n_items, "crops": len(jobs)}
    return embedding_mod.projection_state(projection, config), params, data


# ---------------------------------------------------------------------------------------- evaluation


def evaluate_detection(data_dir: Path, split: Split, *, device: torch.device,
                       detector: detector_mod.GarmentDetector | None, cache_dir: Path = DEFAULT_CACHE_DIR,
                       presence_threshold: float = 0.5) -> dict[str, Any]:
    """Hit rate at IoU >= 0.5 and mean IoU for top and bottom on the annotated looks, detector vs the rule."""
    looks = pick_split([lk for lk in load_looks(data_dir) if lk.boxes], split)
    out: dict[str, Any] = {"looks": len(looks)}
    predictions: list[list[detector_mod.Detection]] = []
    if detector is not None:
        jobs = [DetectJob(lk.path, lk.boxes, 0, f"look:{lk.id}") for lk in looks]
        s16, s32, _ = detect_features(jobs, device=device, cache_dir=cache_dir)
        with torch.inference_mode():
            presence, boxes = detector_mod.decode(detector.head(torch.from_numpy(s16).float(),
                                                                torch.from_numpy(s32).float()))
        for lk, p, b in zip(looks, presence.numpy(), boxes.numpy(), strict=True):
            with Image.open(lk.path) as im:
                w, h = im.size
            predictions.append([detector_mod.Detection(kind, (b[k, 0] * w, b[k, 1] * h, b[k, 2] * w, b[k, 3] * h),
                                                       float(p[k])) for k, kind in enumerate(DETECT_KINDS)])
    for kind in ("top", "bottom"):
        rule_ious, det_ious, det_hits = [], [], []
        for i, lk in enumerate(looks):
            if kind not in lk.boxes:
                continue
            truth = lk.boxes[kind]
            with Image.open(lk.path) as im:
                w, h = im.size
            fx0, fy0, fx1, fy1 = LOOK_RULE[kind]
            rule_ious.append(iou((fx0 * w, fy0 * h, fx1 * w, fy1 * h), truth))
            if predictions:
                found = predictions[i][DETECT_KINDS.index(kind)]
                value = iou(found.box, truth)
                det_ious.append(value)
                det_hits.append(value >= 0.5 and found.confidence >= presence_threshold)
        entry = {"n": len(rule_ious),
                 "rule_hit_rate": float(np.mean(np.array(rule_ious) >= 0.5)) if rule_ious else None,
                 "rule_mean_iou": float(np.mean(rule_ious)) if rule_ious else None}
        if det_ious:
            entry.update(hit_rate=float(np.mean(det_hits)), mean_iou=float(np.mean(det_ious)))
        out[kind] = entry
    return out


def evaluate_category(data_dir: Path, split: Split, *, device: torch.device,
                      model: category_mod.CategoryModel | None, cache_dir: Path = DEFAULT_CACHE_DIR) -> dict[str, Any]:
    """Accuracy and confusion matrix on the whole single-garment photos (rows: truth, columns: prediction)."""
    photos = pick_split(load_garment_photos(data_dir), split)
    out: dict[str, Any] = {"photos": len(photos), "kinds": list(CATEGORY_KINDS)}
    if model is None or not photos:
        return out
    jobs = [CropJob(p.path, None, 0, f"photo:{p.id}") for p in photos]
    pooled, _ = crop_features(jobs, device=device, cache_dir=cache_dir, desc="category eval")
    probs = model.probabilities(torch.from_numpy(pooled)).numpy()
    truth = np.array([CATEGORY_KINDS.index(p.kind) for p in photos])
    pred = probs.argmax(1)
    confusion = np.zeros((len(CATEGORY_KINDS), len(CATEGORY_KINDS)), dtype=int)
    np.add.at(confusion, (truth, pred), 1)
    tb = truth <= 1  # top or bottom
    top_vs_bottom = (probs[tb, 1] > probs[tb, 0]).astype(int) == truth[tb]
    out.update(accuracy=float((pred == truth).mean()), top_vs_bottom_accuracy=float(top_vs_bottom.mean()),
               top_vs_bottom_n=int(tb.sum()), confusion=confusion.tolist())
    for source in ("garments", "outfits"):
        sel = np.array([p.source == source for p in photos]) & tb
        if sel.any():
            out[f"top_vs_bottom_accuracy_{source}"] = float(((probs[sel, 1] > probs[sel, 0]).astype(int)
                                                              == truth[sel]).mean())
    return out


def retrieval_library(
    data_dir: Path, *, device: torch.device, detector: detector_mod.GarmentDetector | None,
    cache_dir: Path = DEFAULT_CACHE_DIR,
) -> tuple[list[LookRecord], dict[str, list[tuple[int, BoxXYXY]]]]:
    """Every look of DIR with its top and bottom box: annotated boxes where given, else detected."""
    looks = load_looks(data_dir)
    boxes: dict[str, list[tuple[int, BoxXYXY]]] = {"top": [], "bottom": []}
    missing = [i for i, lk in enumerate(looks) if not {"top", "bottom"} <= set(lk.boxes)]
    detected: dict[int, list[detector_mod.Detection]] = {}
    if detector is not None and missing:
        for start in tqdm(range(0, len(missing), 32), desc="detect library", unit="batch"):
            chunk = missing[start:start + 32]
            images = []
            for i in chunk:
                with Image.open(looks[i].path) as im:
                    images.append(im.convert("RGB"))
            for i, found in zip(chunk, detector.detect_batch(images), strict=True):
                detected[i] = found
    for i, lk in enumerate(looks):
        for kind in ("top", "bottom"):
            if kind in lk.boxes:
                boxes[kind].append((i, lk.boxes[kind]))  # type: ignore[index]
            elif i in detected:
                hit = detected[i][DETECT_KINDS.index(kind)]
                if hit.confidence >= 0.5:
                    boxes[kind].append((i, hit.box))
            elif detector is None:
                with Image.open(lk.path) as im:
                    w, h = im.size
                fx0, fy0, fx1, fy1 = LOOK_RULE[kind]
                boxes[kind].append((i, (fx0 * w, fy0 * h, fx1 * w, fy1 * h)))
    return looks, boxes


def evaluate_retrieval(
    data_dir: Path, split: Split, *, device: torch.device, detector: detector_mod.GarmentDetector | None,
    embedding: embedding_mod.EmbeddingModel | None, search: Callable[..., np.ndarray] | None = None,
    cache_dir: Path = DEFAULT_CACHE_DIR,
) -> dict[str, Any]:
    """Recall@1/@10 of perturbed crops of the split's annotated garments against all looks of DIR.

    `search(name, kind, library_ids, library_vectors, queries, k)` may route the search through the
    look store; exact cosine search in numpy is the default.
    """
    looks, boxes = retrieval_library(data_dir, device=device, detector=detector, cache_dir=cache_dir)
    in_split = {lk.id for lk in pick_split(looks, split)}
    out: dict[str, Any] = {"library_looks": len(looks)}
    for kind in ("top", "bottom"):
        lib = boxes[kind]
        lib_jobs = [CropJob(looks[i].path, box, 0, f"look:{looks[i].id}:{kind}") for i, box in lib]
        queries = [(i, looks[i].boxes[kind]) for i in range(len(looks))  # type: ignore[index]
                   if looks[i].id in in_split and kind in looks[i].boxes]
        q_jobs = [CropJob(looks[i].path, box, 1, f"eval:{looks[i].id}:{kind}") for i, box in queries]
        lp, lc = crop_features(lib_jobs, device=device, cache_dir=cache_dir, desc=f"library {kind}s")
        qp, qc = crop_features(q_jobs, device=device, cache_dir=cache_dir, desc=f"query {kind}s")
        lib_ids = np.array([i for i, _ in lib])
        truth = np.array([i for i, _ in queries])
        variants: dict[str, tuple[np.ndarray, np.ndarray]] = {
            "raw_backbone": (_unit(lp), _unit(qp))}
        if embedding is not None:
            variants["embedding"] = (embedding.embed(torch.from_numpy(lp), lc),
                                     embedding.embed(torch.from_numpy(qp), qc))
        entry: dict[str, Any] = {"queries": len(queries), "library": len(lib)}
        for name, (lv, qv) in variants.items():
            ranked: np.ndarray
            if search is not None:
                ranked = np.asarray(search(name, kind, lib_ids, lv, qv, 10))
            else:
                order = np.argsort(-(qv @ lv.T), axis=1)[:, :10]
                ranked = lib_ids[order]
            entry[name] = {"recall@1": float(np.mean(ranked[:, 0] == truth)),
                           "recall@10": float(np.mean((ranked == truth[:, None]).any(1))),
                           "dim": int(lv.shape[1])}
        out[kind] = entry
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def open_photo(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def photo_of(item: GarmentPhoto | LookRecord) -> Image.Image:
    return open_photo(item.path)


__all__ = ["perturbed_crop", "photo_of"]
