"""Colour features of a garment crop in CIE Lab: a joint histogram for the appearance embedding and
the basic colour words stored in the look's payload.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from shared.models.resize import resize_array

L_BINS, A_BINS, B_BINS = 4, 6, 6
HIST_DIM = L_BINS * A_BINS * B_BINS
_SIDE = 40
# Basic colour words and a typical Lab value of each (D65).
_PALETTE: dict[str, tuple[float, float, float]] = {
    "black": (12, 0, 0), "white": (95, 0, 2), "grey": (55, 0, 0), "red": (45, 62, 40),
    "orange": (65, 35, 60), "yellow": (88, -5, 75), "green": (50, -45, 30), "blue": (40, 10, -50),
    "navy": (22, 10, -30), "purple": (40, 45, -40), "pink": (72, 35, 0), "brown": (38, 15, 25),
    "beige": (80, 3, 15),
}
_NAMES = tuple(_PALETTE)
_PALETTE_LAB = np.array([_PALETTE[n] for n in _NAMES], dtype=np.float32)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1], shape [..., 3] -> CIE Lab (D65)."""
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]], dtype=np.float32)
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883], dtype=np.float32)
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


_AXIS = np.linspace(-1, 1, _SIDE, dtype=np.float32)
# Weights that favour the centre of a crop, where the garment is.
_CENTRE_WEIGHTS = np.exp(-(_AXIS[None, :] ** 2 + _AXIS[:, None] ** 2) / 0.8).reshape(-1)


def centre_lab(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Lab pixels [_SIDE * _SIDE, 3] of a downsampled crop and weights that favour its centre.

    Compute it once per crop and pass it to colour_histogram and colour_names as `lab`.
    """
    small = resize_array(image, _SIDE, _SIDE).astype(np.float32)
    return rgb_to_lab(small / 255.0).reshape(-1, 3), _CENTRE_WEIGHTS


def colour_histogram(image: Image.Image, *, lab: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """A centre-weighted joint Lab histogram, square-rooted and L2-normalised (Hellinger), [HIST_DIM]."""
    pixels, weights = lab if lab is not None else centre_lab(image)
    li = np.clip((pixels[:, 0] / 100 * L_BINS).astype(int), 0, L_BINS - 1)
    ai = np.clip(((pixels[:, 1] + 60) / 120 * A_BINS).astype(int), 0, A_BINS - 1)
    bi = np.clip(((pixels[:, 2] + 60) / 120 * B_BINS).astype(int), 0, B_BINS - 1)
    hist = np.bincount((li * A_BINS + ai) * B_BINS + bi, weights=weights, minlength=HIST_DIM).astype(np.float32)
    hist = np.sqrt(hist / max(float(hist.sum()), 1e-6))
    return hist / max(float(np.linalg.norm(hist)), 1e-6)


def colour_names(
    image: Image.Image, *, most: int = 2, min_share: float = 0.2, lab: tuple[np.ndarray, np.ndarray] | None = None
) -> list[str]:
    """The dominant basic colour words of a garment crop, most common first."""
    pixels, weights = lab if lab is not None else centre_lab(image)
    nearest = np.argmin(((pixels[:, None, :] - _PALETTE_LAB[None]) ** 2).sum(-1), axis=1)
    share = np.bincount(nearest, weights=weights, minlength=len(_NAMES)) / weights.sum()
    order = np.argsort(-share)
    return [_NAMES[i] for i in order[:most] if share[i] >= min_share] or [_NAMES[int(order[0])]]
