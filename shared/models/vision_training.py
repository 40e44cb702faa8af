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
    garment_photo_view,
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
    # A generator of its own: the loader must not draw from the global RNG, or a training run that
    # computes its features would initialise its head differently from one that finds them cached.
    loader = torch.utils.data.DataLoader(_CropDataset(jobs), batch_size=batch_size, generator=torch.Generator(),
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


# Share of a garment view's sides cut at the garment's box (vision_data.garment_photo_view).
GARMENT_TIGHT = 0.5


@dataclass(frozen=True)
class DetectJob:
    """One training view. `boxes` empty and `worn` set: a tag-only look (presence known, boxes not)."""

    path: Path
    boxes: dict[Kind, BoxXYXY]
    view: int
    seed: str
    worn: frozenset[Kind] = frozenset()
    # A shopper's photo of this garment of the look (vision_data.garment_photo_view), not the look.
    focus: Kind | None = None


def _target(boxes: dict[Kind, BoxXYXY], w: float, h: float, worn: frozenset[Kind] = frozenset()) -> np.ndarray:
    """[K, 6]: presence, the box as xyxy fractions, and whether the box is known (1) or only the presence (0)."""
    out = np.zeros((len(DETECT_KINDS), 6), dtype=np.float32)
    for k, kind in enumerate(DETECT_KINDS):
        if kind in boxes:
            x0, y0, x1, y1 = boxes[kind]
            out[k] = (1.0, x0 / w, y0 / h, x1 / w, y1 / h, 1.0)
        elif kind in worn:
            out[k, 0] = 1.0
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
        if job.focus is not None:
            image, boxes = garment_photo_view(image, boxes, job.focus, (job.seed, job.view), tight=GARMENT_TIGHT)
        else:
            image, boxes = detection_view(image, boxes, job.view, job.seed)
        return detector_mod.detector_input(image), torch.from_numpy(_target(boxes, *image.size, job.worn))


def detect_features(
    jobs: Sequence[DetectJob], *, device: torch.device, cache_dir: Path = DEFAULT_CACHE_DIR,
    batch_size: int = 64, workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frozen backbone's stride-16 and stride-32 maps (float16) and the target [N,K,6] of each
    detection view, cached."""
    from shared.models.backbone import shared_backbone

    key = _digest([CACHE_VERSION, "detect-3", detector_mod.DETECT_SIZE, GARMENT_TIGHT,
                   *[(_file_key(j.path), sorted(j.boxes.items()), j.view, j.seed, sorted(j.worn), j.focus)
                     for j in jobs]])
    file = cache_dir / f"detect-{key}.npz"
    if file.is_file():
        with np.load(file) as cached:
            return cached["s16"], cached["s32"], cached["target"]
    backbone = shared_backbone().to(device)
    g = detector_mod.DETECT_SIZE
    s16 = np.zeros((len(jobs), detector_mod.S16_CHANNELS, g // 16, g // 16), dtype=np.float16)
    s32 = np.zeros((len(jobs), detector_mod.S32_CHANNELS, g // 32, g // 32), dtype=np.float16)
    target = np.zeros((len(jobs), len(DETECT_KINDS), 6), dtype=np.float32)
    loader = torch.utils.data.DataLoader(_DetectDataset(jobs), batch_size=batch_size, generator=torch.Generator(),
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
                   photo_fraction: float = 1.0, tag_views: int = 0, garment_views: int = 0) -> list[DetectJob]:
    """Views of the annotated looks, of the tag-only looks (presence only) and of a share of the photos.

    An annotated look also gives `garment_views` shopper-like photos of its top and of its bottom
    (a crop around the garment with some background), the query photos the gateway sees. A
    tag-only look gets only views 0 and 1 (the photo, and a mirror of it): a crop could cut a
    garment away, and without its box we could not tell.
    """
    jobs = []
    looks = pick_split(load_looks(data_dir), split)
    for look in looks:
        if look.boxes:
            jobs += [DetectJob(look.path, look.boxes, v, f"look:{look.id}") for v in range(look_views)]
            jobs += [DetectJob(look.path, look.boxes, v, f"look:{look.id}", focus=kind)
                     for kind in ("top", "bottom") if kind in look.boxes for v in range(garment_views)]
        elif look.worn:
            jobs += [DetectJob(look.path, {}, v, f"look:{look.id}", look.worn) for v in range(min(tag_views, 2))]
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


def _edge_nll(probs: torch.Tensor, truth: torch.Tensor, sigma: float) -> torch.Tensor:
    """Cross-entropy of edge distributions [M,2,B] against a Gaussian of width `sigma` at each true edge [M,2]."""
    centres = detector_mod.bin_centres(probs.shape[-1], probs.dtype).to(probs.device)
    wanted = torch.exp(-0.5 * ((centres - truth[..., None]) / sigma) ** 2)
    wanted = wanted / wanted.sum(-1, keepdim=True)
    return -(wanted * probs.clamp_min(1e-8).log()).sum(-1).mean()


def detector_loss(out: detector_mod.HeadOutput, target: torch.Tensor, *, edge_weight: float = 0.1,
                  edge_sigma: float = 0.03) -> torch.Tensor:
    """Presence BCE on every kind; on the boxes that are known, L1 and GIoU of the decoded box plus a
    small cross-entropy that pulls each edge's distribution to a narrow peak at the true edge."""
    _, boxes = detector_mod.decode(out)
    loss = nn.functional.binary_cross_entropy_with_logits(out.presence, target[..., 0])
    mask = target[..., 5] > 0.5
    if mask.any():
        truth = target[..., 1:5][mask]
        loss = loss + (boxes[mask] - truth).abs().sum(-1).mean() * 2.0 + (1 - _giou(boxes[mask], truth)).mean()
        if edge_weight:
            cols = detector_mod.edge_distribution(out.columns)[mask]
            rows = detector_mod.edge_distribution(out.rows)[mask]
            # Profiles are (x0, x1) and (y0, y1); a box's decoded edges are their min and max, so
            # the truth is matched in that order.
            loss = loss + edge_weight * (_edge_nll(cols, truth[:, 0::2], edge_sigma)
                                         + _edge_nll(rows, truth[:, 1::2], edge_sigma))
    return loss


DETECTOR_CONFIG: dict[str, Any] = {"r16": 64, "r32": 96, "width": 96, "dropout": 0.2}


def train_detector(
    data_dir: Path, *, device: torch.device, look_views: int = 4, photo_views: int = 1,
    photo_fraction: float = 0.15, tag_views: int = 2, garment_views: int = 2, epochs: int = 5, batch_size: int = 64,
    lr: float = 2e-3, edge_weight: float = 0.1, config: dict[str, Any] | None = None, seed: int = SEED,
    cache_dir: Path = DEFAULT_CACHE_DIR,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Trains the detector head on the cached maps of the frozen backbone.

    Returns (artifact state, params, training data summary).
    """
    torch.manual_seed(seed)
    jobs = detection_jobs(data_dir, "train", look_views=look_views, photo_views=photo_views,
                          photo_fraction=photo_fraction, tag_views=tag_views, garment_views=garment_views)
    s16, s32, target = detect_features(jobs, device=device, cache_dir=cache_dir)
    config = dict(DETECTOR_CONFIG if config is None else config)
    head = detector_mod.DetectorHead(**config).to(device)
    x16, x32, t = torch.from_numpy(s16), torch.from_numpy(s32), torch.from_numpy(target)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-2)
    steps = epochs * ((len(jobs) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    with tqdm(total=steps, desc="train detector", unit="batch") as bar:
        for epoch in range(epochs):
            head.train()
            order = torch.randperm(len(jobs), generator=gen)
            total = 0.0
            for i in range(0, len(jobs), batch_size):
                idx = order[i:i + batch_size]
                out = head(x16[idx].float().to(device), x32[idx].float().to(device))
                loss = detector_loss(out, t[idx].to(device), edge_weight=edge_weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{total / len(jobs):.3f}")
    head = head.cpu().eval()
    params = {"detect_size": detector_mod.DETECT_SIZE, "edge_bins": detector_mod.EDGE_BINS, "look_views": look_views,
              "photo_views": photo_views, "photo_fraction": photo_fraction, "tag_views": tag_views,
              "garment_views": garment_views, "garment_tight": GARMENT_TIGHT, "epochs": epochs,
              "batch_size": batch_size, "lr": lr, "edge_weight": edge_weight, "seed": seed, "head": config}
    data = {"dir": str(data_dir), "split": "train", "views": len(jobs),
            "looks": sum(1 for j in jobs if j.seed.startswith("look:") and j.view == 0 and j.boxes),
            "tag_looks": sum(1 for j in jobs if j.seed.startswith("look:") and j.view == 0 and not j.boxes),
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


IOU_BIN_EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def iou_histogram(ious: Sequence[float]) -> dict[str, int]:
    """How many detections fall in each IoU bin ("0.4-0.5": 0.4 <= IoU < 0.5; the last bin holds 1.0):
    tells near misses (a box slightly off) from gross ones (another garment, or none)."""
    counts = np.histogram(np.clip(np.asarray(ious, dtype=np.float64), 0.0, 1.0), bins=IOU_BIN_EDGES)[0]
    return {f"{lo:.1f}-{hi:.1f}": int(c) for lo, hi, c in zip(IOU_BIN_EDGES, IOU_BIN_EDGES[1:], counts, strict=False)}


EDGE_NAMES = ("left", "top", "right", "bottom")


def edge_diagnosis(found: Sequence[BoxXYXY], truth: Sequence[BoxXYXY],
                   sizes: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Which of a box's edges the misses come from: each edge's mean error (signed and absolute, as a
    fraction of the photo's width or height), and of the boxes at IoU < 0.5 how many one true edge
    alone, put in place of the detected one, would lift to IoU >= 0.5."""
    fixed = dict.fromkeys(EDGE_NAMES, 0)
    errors, misses = [], 0
    for box, true, (w, h) in zip(found, truth, sizes, strict=True):
        errors.append([(box[e] - true[e]) / (w if e % 2 == 0 else h) for e in range(4)])
        if iou(box, true) >= 0.5:
            continue
        misses += 1
        for e, name in enumerate(EDGE_NAMES):
            moved = list(box)
            moved[e] = true[e]
            fixed[name] += int(iou((moved[0], moved[1], moved[2], moved[3]), true) >= 0.5)
    err = np.asarray(errors, dtype=np.float64).reshape(-1, 4)
    return {"misses": misses, "fixed_by_true_edge": fixed,
            "mean_error": {name: float(err[:, e].mean()) if len(err) else 0.0 for e, name in enumerate(EDGE_NAMES)},
            "mean_abs_error": {name: float(np.abs(err[:, e]).mean()) if len(err) else 0.0
                               for e, name in enumerate(EDGE_NAMES)}}


def hits_by_label(labels: Sequence[tuple[str, ...]], hits: Sequence[bool]) -> dict[str, dict[str, Any]]:
    """Hit counts per garment label ("skirt", "leggings+skirt"; "unlabelled" where looks.json gives
    none), most frequent first: tells which garments the misses come from."""
    groups: dict[str, list[bool]] = {}
    for names, hit in zip(labels, hits, strict=True):
        groups.setdefault("+".join(names) or "unlabelled", []).append(bool(hit))
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return {name: {"n": len(v), "hits": sum(v), "hit_rate": sum(v) / len(v)} for name, v in ordered}


def evaluate_detection(data_dir: Path, split: Split, *, device: torch.device,
                       detector: detector_mod.GarmentDetector | None, cache_dir: Path = DEFAULT_CACHE_DIR,
                       presence_threshold: float = 0.5) -> dict[str, Any]:
    """Hit rate at IoU >= 0.5 and mean IoU for top and bottom on the annotated looks, detector vs the rule.

    A hit needs the garment's presence at the threshold too. Beside it: how many of the garments
    were missed on presence alone, how often the detector claims a garment that an annotated look
    does not show (its false-presence rate), which the hit rate alone would not punish, the hits
    per garment label (`hits_by_label`) and which box edges the misses come from (`edge_diagnosis`).
    """
    looks = pick_split([lk for lk in load_looks(data_dir) if lk.boxes], split)
    out: dict[str, Any] = {"looks": len(looks)}
    predictions: list[list[detector_mod.Detection]] = []
    photo_sizes = []
    for lk in looks:
        with Image.open(lk.path) as im:
            photo_sizes.append((float(im.width), float(im.height)))
    if detector is not None:
        jobs = [DetectJob(lk.path, lk.boxes, 0, f"look:{lk.id}") for lk in looks]
        s16, s32, _ = detect_features(jobs, device=device, cache_dir=cache_dir)
        presence, boxes = detector.predict(torch.from_numpy(s16), torch.from_numpy(s32))
        for (w, h), p, b in zip(photo_sizes, presence, boxes, strict=True):
            predictions.append([detector_mod.Detection(kind, (b[k, 0] * w, b[k, 1] * h, b[k, 2] * w, b[k, 3] * h),
                                                       float(p[k])) for k, kind in enumerate(DETECT_KINDS)])
    for kind in DETECT_KINDS:
        rule_ious, det_ious, det_hits, missed, false_present, absent = [], [], [], 0, 0, 0
        det_labels: list[tuple[str, ...]] = []
        det_boxes: list[tuple[BoxXYXY, BoxXYXY, tuple[float, float]]] = []
        for i, lk in enumerate(looks):
            found = predictions[i][DETECT_KINDS.index(kind)] if predictions else None
            if kind not in lk.boxes:
                absent += 1
                false_present += int(found is not None and found.confidence >= presence_threshold)
                continue
            truth = lk.boxes[kind]
            if kind in LOOK_RULE:
                w, h = photo_sizes[i]
                fx0, fy0, fx1, fy1 = LOOK_RULE[kind]
                rule_ious.append(iou((fx0 * w, fy0 * h, fx1 * w, fy1 * h), truth))
            if found is not None:
                value = iou(found.box, truth)
                det_ious.append(value)
                det_boxes.append((found.box, truth, photo_sizes[i]))
                det_hits.append(value >= 0.5 and found.confidence >= presence_threshold)
                det_labels.append(lk.labels.get(kind, ()))
                missed += int(found.confidence < presence_threshold)
        entry: dict[str, Any] = {"n": len(det_ious) or len(rule_ious), "absent": absent}
        if rule_ious:
            entry.update(rule_hit_rate=float(np.mean(np.array(rule_ious) >= 0.5)),
                         rule_mean_iou=float(np.mean(rule_ious)))
        if det_ious:
            entry.update(hit_rate=float(np.mean(det_hits)), mean_iou=float(np.mean(det_ious)), missed_presence=missed,
                         iou_histogram=iou_histogram(det_ious), by_label=hits_by_label(det_labels, det_hits),
                         edges=edge_diagnosis(*zip(*det_boxes, strict=True)))
        if predictions and absent:
            entry["false_presence_rate"] = false_present / absent
        out[kind] = entry
    return out


def detector_seed_spread(data_dir: Path, seeds: Sequence[int], split: Split = "val", *, device: torch.device,
                         cache_dir: Path = DEFAULT_CACHE_DIR, **train_kw: Any) -> dict[str, Any]:
    """Trains the detector head once per seed with `train_detector`'s recipe (`train_kw` as its keyword
    arguments) and scores each on `split` with `evaluate_detection`: how far training noise alone
    moves the hit rates, to tell a real change of recipe from a lucky seed. Writes no artifact.

    Each head is scored as it would be shipped (float16 weights, see detector.head_state).
    """
    from shared.models.backbone import shared_backbone

    annotated = [lk for lk in load_looks(data_dir) if lk.boxes]
    for needed in ("train", split):
        if not pick_split(annotated, needed):  # type: ignore[arg-type]
            raise ValueError(f"{data_dir} has no annotated looks (with boxes) in split {needed}: pass --data pointing "
                             "at a folder laid out like ../shared/data, or another --split")
    runs = []
    for seed in seeds:
        state, _, _ = train_detector(data_dir, device=device, seed=seed, cache_dir=cache_dir, **train_kw)
        detector = detector_mod.GarmentDetector(detector_mod.head_from_state(state), shared_backbone(), f"seed-{seed}")
        metrics = evaluate_detection(data_dir, split, device=device, detector=detector, cache_dir=cache_dir)
        runs.append({"seed": seed, **{f"{kind}_{m}": metrics[kind].get(m) for kind in ("top", "bottom")
                                      for m in ("hit_rate", "mean_iou")}})
    summary = {}
    for key in [k for k in runs[0] if k != "seed"] if runs else []:
        values = [r[key] for r in runs if r[key] is not None]
        if values:
            summary[key] = {"mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values))}
    return {"split": split, "seeds": list(seeds), "recipe": train_kw, "runs": runs, "summary": summary}


def evaluate_query_detection(data_dir: Path, split: Split, *, detector: detector_mod.GarmentDetector | None,
                             batch_size: int = 32) -> dict[str, Any]:
    """The box a TOP (BOTTOM) query photo is embedded from: hit rate at IoU >= 0.5 and mean IoU
    against the garment's box, beside the whole photo (what a query gets without a detector).

    Two kinds of query photo of each annotated look's top and bottom: `loose`, the garment with
    5-35% of background on each side (vision_data.garment_photo_view, a fixed seed, no other
    change), and `tight`, the crop of its box (what `eval match` and `eval blend` send), where the
    right answer is the whole photo.
    """
    from shared.models.pipeline import hinted_query_box

    looks = pick_split([lk for lk in load_looks(data_dir) if lk.boxes], split)
    out: dict[str, Any] = {"looks": len(looks)}
    for kind in ("top", "bottom"):
        for framing in ("loose", "tight"):
            photos: list[tuple[Image.Image, BoxXYXY]] = []
            for lk in looks:
                if kind in lk.boxes:
                    with Image.open(lk.path) as raw:
                        photo, boxes = garment_photo_view(raw, lk.boxes, kind, ("eval", lk.id), augment=False,
                                                          tight=0.0 if framing == "loose" else 1.0)
                    photos.append((photo, boxes[kind]))
            whole = [iou((0.0, 0.0, float(p.width), float(p.height)), truth) for p, truth in photos]
            entry: dict[str, Any] = {"n": len(photos), "whole_photo_hit_rate": float(np.mean(np.array(whole) >= 0.5)),
                                     "whole_photo_mean_iou": float(np.mean(whole))}
            if detector is not None and photos:
                ious = []
                for start in range(0, len(photos), batch_size):
                    chunk = photos[start:start + batch_size]
                    found_all = detector.detect_batch([p for p, _ in chunk])
                    for (photo, truth), found in zip(chunk, found_all, strict=True):
                        box, _ = hinted_query_box({d.kind: d for d in found}, kind,  # type: ignore[arg-type]
                                                  (0.0, 0.0, float(photo.width), float(photo.height)))
                        ious.append(iou(box, truth))
                entry.update(hit_rate=float(np.mean(np.array(ious) >= 0.5)), mean_iou=float(np.mean(ious)))
            out[kind if framing == "loose" else f"{kind}_tight"] = entry
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
