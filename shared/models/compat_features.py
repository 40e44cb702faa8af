"""Garment views and cached backbone features for training and evaluating the compatibility model.

The frozen early backbone stages run once per image and view; their output (and the pooled frozen
feature) is cached under .cache/compat keyed by the image's content hash, so re-runs are fast.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch import nn
from tqdm import tqdm

from shared.models.backbone import INPUT_SIZE, Squash
from shared.models.resize import resize_array

log = logging.getLogger(__name__)

# Blocks [0, FROZEN_STAGES) of the backbone are never trained; their output is what the cache holds.
FROZEN_STAGES = 5
# 2: crops squashed and colour features resized by shared.models.resize (torchvision), as served.
CACHE_VERSION = "compat-features-2"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "compat"


def garment_input(image: Image.Image) -> torch.Tensor:
    """The serving preprocessing: the whole garment crop squashed to a square (nothing cut away)."""
    return Squash(INPUT_SIZE)(image)


def augmented_view(image: Image.Image, view: int, seed: int) -> Image.Image:
    """View 0 is the image itself, view 1 its mirror; views >= 2 are seeded random crops with mild colour jitter.

    The crops and the jitter mimic a garment cut out of a street photo (tighter box, other light),
    which is what the service sees at query time.
    """
    image = image.convert("RGB")
    if view == 0:
        return image
    if view == 1:
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    rng = np.random.default_rng([seed, view])
    w, h = image.size
    area = rng.uniform(0.55, 1.0)
    aspect = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    cw = min(w, max(16, round(w * np.sqrt(area * aspect))))
    ch = min(h, max(16, round(h * np.sqrt(area / aspect))))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    image = image.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.85, 1.15))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.85, 1.15))
    return ImageEnhance.Color(image).enhance(rng.uniform(0.8, 1.2))


def frozen_stem(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The frozen part of the backbone: stem and blocks [0, FROZEN_STAGES) -> [N, 112, 14, 14] at 224 px."""
    x = backbone.conv_stem(x)
    x = backbone.bn1(x)
    for stage in backbone.blocks[:FROZEN_STAGES]:
        x = stage(x)
    return x


def frozen_top(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rest of the pretrained backbone after the stem, pooled to the 1280-d feature."""
    for stage in backbone.blocks[FROZEN_STAGES:]:
        x = stage(x)
    x = backbone.conv_head(x)
    x = backbone.bn2(x)
    return backbone.forward_head(x, pre_logits=True)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class FeatureSet:
    """Cached features of a list of images under several views; arrays are indexed [view, image]."""

    shas: list[str]
    views: tuple[int, ...]
    stem: np.ndarray  # float16 [V, N, 112, 14, 14]
    pooled: np.ndarray  # float32 [V, N, 1280], the frozen backbone feature
    colour: np.ndarray  # float32 [V, N, COLOUR_DIM]


def _unit_histogram(values: np.ndarray, bins: int) -> np.ndarray:
    """np.histogram(values, bins, range=(0, 1))[0] for values in [0, 1], by bincount (much faster)."""
    index = np.minimum((values.astype(np.float64) * bins).astype(np.intp), bins - 1)
    return np.bincount(index, minlength=bins)


def colour_features(image: Image.Image) -> np.ndarray:
    """A small global-appearance vector: a coarse HSV histogram of the garment plus the background tone.

    The garment is told from the background by its distance from the median border colour.
    """
    pixels = resize_array(image, 48, 64)
    small = Image.fromarray(pixels)
    rgb = pixels.astype(np.float32) / 255.0
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background = np.median(border, axis=0)
    mask = np.abs(rgb - background).sum(axis=2) > 0.12
    if mask.sum() < 20:
        mask = np.ones(mask.shape, dtype=bool)
    hsv = np.asarray(small.convert("HSV"), dtype=np.float32) / 255.0
    garment = hsv[mask]
    # Hue only counts where there is colour; greys go to their own value bins.
    chromatic = garment[:, 1] > 0.2
    hue_hist = _unit_histogram(garment[chromatic, 0], 12)
    grey_hist = _unit_histogram(garment[~chromatic, 2], 4)
    sat_hist = _unit_histogram(garment[:, 1], 4)
    val_hist = _unit_histogram(garment[:, 2], 4)
    total = float(len(garment))
    hist = np.concatenate([hue_hist, grey_hist, sat_hist, val_hist]).astype(np.float32) / total
    mean_rgb = rgb[mask].mean(axis=0)
    return np.concatenate([hist, mean_rgb, background, [mask.mean()]]).astype(np.float32)


COLOUR_DIM = 12 + 4 + 4 + 4 + 3 + 3 + 1


def extract_features(
    paths: Sequence[Path],
    views: Sequence[int],
    *,
    backbone: nn.Module | None = None,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    batch_size: int = 32,
    progress: bool = True,
) -> FeatureSet:
    """Runs the frozen stem (and the pooled frozen backbone) on every image under every view, with a cache.

    Each (image content, view) pair is cached in its own file, so a new data directory reuses the
    images it shares with an old one.
    """
    from shared.models.backbone import build_backbone

    shas = [file_sha256(p) for p in paths]
    cache_dir.mkdir(parents=True, exist_ok=True)
    n, nv = len(paths), len(views)
    stem = np.zeros((nv, n, 112, 14, 14), dtype=np.float16)
    pooled = np.zeros((nv, n, 1280), dtype=np.float32)
    colour = np.zeros((nv, n, COLOUR_DIM), dtype=np.float32)
    todo: list[tuple[int, int]] = []
    for vi, view in enumerate(views):
        for i, sha in enumerate(shas):
            file = cache_dir / f"{CACHE_VERSION}-{sha[:32]}-v{view}.npz"
            if file.is_file():
                with np.load(file) as cached:
                    stem[vi, i], pooled[vi, i], colour[vi, i] = cached["stem"], cached["pooled"], cached["colour"]
            else:
                todo.append((vi, i))
    if todo:
        model = backbone if backbone is not None else build_backbone()
        bar = tqdm(total=len(todo), desc="backbone features", unit="img", disable=not progress)
        with torch.inference_mode():
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                images = [augmented_view(Image.open(paths[i]), views[vi], int(shas[i][:8], 16)) for vi, i in chunk]
                x = torch.stack([garment_input(im) for im in images])
                s = frozen_stem(model, x)
                f = frozen_top(model, s)
                for k, (vi, i) in enumerate(chunk):
                    stem[vi, i] = s[k].numpy().astype(np.float16)
                    pooled[vi, i] = f[k].numpy()
                    colour[vi, i] = colour_features(images[k])
                    file = cache_dir / f"{CACHE_VERSION}-{shas[i][:32]}-v{views[vi]}.npz"
                    tmp = file.with_suffix(".tmp.npz")
                    np.savez(tmp, stem=stem[vi, i], pooled=pooled[vi, i], colour=colour[vi, i])
                    tmp.replace(file)
                bar.update(len(chunk))
        bar.close()
    return FeatureSet(shas=shas, views=tuple(views), stem=stem, pooled=pooled, colour=colour)
