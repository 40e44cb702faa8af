"""The learned top–bottom compatibility model: type-aware projections of garment crops into one space.

Tops and bottoms each get their own projection head on the pretrained backbone, whose last stage
is fine-tuned, fused with a small colour vector; a calibrated sigmoid of the cosine is the score.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

from shared.models.compat_features import COLOUR_DIM, colour_features, frozen_stem, garment_input

log = logging.getLogger(__name__)

MODEL_NAME = "compat"
Kind = Literal["top", "bottom"]
KINDS: tuple[Kind, Kind] = ("top", "bottom")
# Backbone modules after the frozen stem; `trainable` picks which of them are fine-tuned.
TAIL_MODULES = ("blocks.5", "blocks.6", "conv_head", "bn2")
STEM_CHANNELS = 112
STAGE5_CHANNELS = 192


@dataclass(frozen=True)
class CompatConfig:
    dim: int = 128
    hidden: int = 384
    dropout: float = 0.3
    trainable: tuple[str, ...] = ("blocks.6", "conv_head", "bn2")
    use_colour: bool = True
    # Mean and spread of the frozen stem's 112 channels: mid-level texture and colour statistics.
    stem_stats: bool = False
    # The same statistics of the (frozen) stage-5 output, 192 channels at stride 32.
    stage5_stats: bool = False
    # Independently initialised projection heads whose cosines are averaged (a cheap ensemble).
    members: int = 1
    attribute_classes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CompatConfig:
        raw = dict(raw)
        raw["trainable"] = tuple(raw.get("trainable", ()))
        return cls(**raw)


def map_statistics(feature_map: torch.Tensor) -> torch.Tensor:
    """Per-channel spatial mean and standard deviation of a feature map [N, C, h, w] -> [N, 2C]."""
    flat = feature_map.float().flatten(2)
    return torch.cat([flat.mean(dim=2), flat.std(dim=2)], dim=1)


def config_stats_dim(config: CompatConfig) -> int:
    return 2 * (STEM_CHANNELS * config.stem_stats + STAGE5_CHANNELS * config.stage5_stats)


class ProjectionHead(nn.Module):
    """One garment type's projection: fused features -> hidden -> unit vector (and attribute logits)."""

    def __init__(self, in_dim: int, config: CompatConfig) -> None:
        super().__init__()
        self.hidden = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(in_dim, config.hidden), nn.LayerNorm(config.hidden), nn.GELU(),
        )
        self.out = nn.Sequential(nn.Dropout(config.dropout / 2), nn.Linear(config.hidden, config.dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(x)
        return nn.functional.normalize(self.out(h), dim=-1), h


class CompatNet(nn.Module):
    """The backbone tail (stage 5 on, partly fine-tuned) plus the per-type projection heads."""

    def __init__(self, backbone: nn.Module, config: CompatConfig) -> None:
        super().__init__()
        self.config = config
        self.tail = nn.ModuleDict({name.replace(".", "_"): copy.deepcopy(backbone.get_submodule(name))
                                   for name in TAIL_MODULES})
        trainable = {name.replace(".", "_") for name in config.trainable}
        for key, module in self.tail.items():
            module.requires_grad_(key in trainable)
        in_dim = 1280 + (COLOUR_DIM if config.use_colour else 0) + config_stats_dim(config)
        self.heads = nn.ModuleDict({kind: nn.ModuleList([ProjectionHead(in_dim, config) for _ in range(config.members)])
                                    for kind in KINDS})
        self.attribute_heads = nn.ModuleList([
            nn.ModuleDict({name: nn.Linear(config.hidden, n) for name, n in config.attribute_classes.items()})
            for _ in range(config.members)
        ])
        self.register_buffer("colour_mean", torch.zeros(COLOUR_DIM))
        self.register_buffer("colour_std", torch.ones(COLOUR_DIM))
        self.register_buffer("stats_mean", torch.zeros(config_stats_dim(config)))
        self.register_buffer("stats_std", torch.ones(config_stats_dim(config)))
        # Softmax temperature per member while training; the served score uses the calibration instead.
        self.logit_scale = nn.Parameter(torch.full((config.members,), math.log(10.0)))
        self.register_buffer("calibration", torch.tensor([10.0, 0.0]))

    def train(self, mode: bool = True) -> CompatNet:
        super().train(mode)
        # BatchNorm keeps the pretrained statistics: batches of a few hundred garments would only add noise.
        for module in self.tail.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def stage5(self, stem: torch.Tensor) -> torch.Tensor:
        return self.tail["blocks_5"](stem)

    def pooled(self, x5: torch.Tensor) -> torch.Tensor:
        """Stage-5 output [N, 192, h, w] -> the (fine-tuned) 1280-d pooled feature."""
        return self.pooled_from_stage6(self.tail["blocks_6"](x5))

    def pooled_from_stage6(self, x6: torch.Tensor) -> torch.Tensor:
        """Stage-6 output [N, 320, h, w] -> the pooled 1280-d feature through the (fine-tuned) head conv."""
        return self.tail["bn2"](self.tail["conv_head"](x6)).mean(dim=(2, 3))

    def head_input(self, pooled: torch.Tensor, colour: torch.Tensor, stats: torch.Tensor | None) -> torch.Tensor:
        parts = [pooled]
        if self.config.use_colour:
            parts.append((colour - self.colour_mean) / self.colour_std)
        if config_stats_dim(self.config):
            if stats is None:
                raise ValueError("this model needs the stem statistics")
            parts.append((stats - self.stats_mean) / self.stats_std)
        return torch.cat(parts, dim=1)

    def member_outputs(self, x: torch.Tensor, kind: Kind) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(unit vector, hidden activation) of each ensemble member."""
        return [head(x) for head in self.heads[kind]]

    def embed(self, pooled: torch.Tensor, colour: torch.Tensor, stats: torch.Tensor | None, kind: Kind
              ) -> torch.Tensor:
        """The served vector: the members' unit vectors side by side, scaled so the cosine is their mean."""
        outputs = self.member_outputs(self.head_input(pooled, colour, stats), kind)
        return torch.cat([z for z, _ in outputs], dim=1) / math.sqrt(len(outputs))

    def statistics(self, stem: torch.Tensor, x5: torch.Tensor | None) -> torch.Tensor | None:
        parts = []
        if self.config.stem_stats:
            parts.append(map_statistics(stem))
        if self.config.stage5_stats:
            if x5 is None:
                raise ValueError("this model needs the stage-5 statistics")
            parts.append(map_statistics(x5))
        return torch.cat(parts, dim=1) if parts else None

    def forward_stem(self, stem: torch.Tensor, colour: torch.Tensor, kind: Kind) -> torch.Tensor:
        x5 = self.stage5(stem)
        return self.embed(self.pooled(x5), colour, self.statistics(stem, x5), kind)

    def serving_state(self, backbone: nn.Module) -> dict[str, Any]:
        """What the artifact stores: the heads, and the fine-tuned backbone modules only as an fp16 delta."""
        delta: dict[str, torch.Tensor] = {}
        for name in self.config.trainable:
            tuned = self.tail[name.replace(".", "_")].state_dict()
            pretrained = backbone.get_submodule(name).state_dict()
            for key, value in tuned.items():
                if value.is_floating_point() and not torch.equal(value, pretrained[key]):
                    delta[f"{name}.{key}"] = (value - pretrained[key]).half()
        return {
            "config": asdict(self.config),
            # fp16 halves the file; the cosines move by less than 1e-3.
            "heads": {k: v.half() for k, v in self.heads.state_dict().items()},
            "colour_mean": self.colour_mean.clone(),
            "colour_std": self.colour_std.clone(),
            "stats_mean": self.stats_mean.clone(),
            "stats_std": self.stats_std.clone(),
            "calibration": self.calibration.clone(),
            "backbone_delta": delta,
        }

    @classmethod
    def from_serving_state(cls, state: dict[str, Any], backbone: nn.Module) -> CompatNet:
        config = CompatConfig.from_dict(state["config"])
        net = cls(backbone, config)
        net.heads.load_state_dict({k: v.float() for k, v in state["heads"].items()})
        net.colour_mean.copy_(state["colour_mean"])
        net.colour_std.copy_(state["colour_std"])
        net.stats_mean.copy_(state["stats_mean"])
        net.stats_std.copy_(state["stats_std"])
        net.calibration.copy_(state["calibration"])
        with torch.no_grad():
            for key, value in state["backbone_delta"].items():
                for name in TAIL_MODULES:
                    if key.startswith(name + "."):
                        target = net.tail[name.replace(".", "_")].state_dict()[key[len(name) + 1:]]
                        target.add_(value.to(target.dtype))
                        break
                else:
                    raise ValueError(f"the compat artifact has an unknown backbone key {key!r}")
        return net.eval()


class CompatModel:
    """The served compatibility model: garment crops -> unit vectors, and a calibrated pair score."""

    def __init__(self, net: CompatNet, backbone: nn.Module, version: str) -> None:
        self.net = net.eval()
        self.backbone = backbone
        self.version = version
        # The served vector holds every ensemble member side by side.
        self.dim = net.config.dim * net.config.members

    def project(self, images: list[Image.Image], kind: Kind) -> np.ndarray:
        """Garment crops (a top or bottom box of a look, or a product photo) -> [N, dim] unit float32 vectors."""
        if kind not in KINDS:
            raise ValueError(f"kind must be 'top' or 'bottom', not {kind!r}")
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        x = torch.stack([garment_input(image) for image in images])
        colour = torch.from_numpy(np.stack([colour_features(image) for image in images]))
        with torch.inference_mode():
            stem = frozen_stem(self.backbone, x)
            vectors = self.net.forward_stem(stem, colour, kind)
        return vectors.numpy().astype(np.float32)

    def project_features(self, stem: np.ndarray, colour: np.ndarray, kind: Kind) -> np.ndarray:
        """The same projection from cached frozen-stem maps [N, 112, 14, 14] and colour vectors [N, C]."""
        with torch.inference_mode():
            vectors = self.net.forward_stem(torch.as_tensor(stem, dtype=torch.float32),
                                            torch.as_tensor(colour, dtype=torch.float32), kind)
        return vectors.numpy().astype(np.float32)

    @property
    def reuses_backbone_pool(self) -> bool:
        """True when the model's tail is the frozen backbone's own (nothing fine-tuned, no stage-5
        statistics): the pooled feature of the pipeline's shared forward is then exactly the tail's."""
        return not self.net.config.trainable and not self.net.config.stage5_stats

    def project_pooled(self, stem: torch.Tensor, pooled: torch.Tensor, colour: np.ndarray, kind: Kind) -> np.ndarray:
        """The projection from the shared forward's stem maps and pooled feature, without re-running the tail.
        Only for models where `reuses_backbone_pool` holds."""
        if not self.reuses_backbone_pool:
            raise ValueError("this compatibility model fine-tunes the backbone tail: use project_features")
        with torch.inference_mode():
            stats = self.net.statistics(stem, None)  # stage-5 statistics are off
            vectors = self.net.embed(pooled, torch.as_tensor(colour, dtype=torch.float32), stats, kind)
        return vectors.numpy().astype(np.float32)

    def score_matrix(self, top_vecs: np.ndarray, bottom_vecs: np.ndarray) -> np.ndarray:
        """Calibrated scores in [0, 1] of paired rows (same length) of top and bottom vectors."""
        cosine = np.sum(np.asarray(top_vecs, dtype=np.float64) * np.asarray(bottom_vecs, dtype=np.float64), axis=-1)
        a, b = (float(v) for v in self.net.calibration)
        return 1.0 / (1.0 + np.exp(-(a * cosine + b)))

    def score(self, top_vec: np.ndarray, bottom_vec: np.ndarray) -> float:
        """Probability-like compatibility of one top and one bottom vector, in [0, 1]."""
        return float(self.score_matrix(np.asarray(top_vec).reshape(1, -1), np.asarray(bottom_vec).reshape(1, -1))[0])


def load_compat(models_dir: Path) -> CompatModel | None:
    """The shipped compatibility model, or None when no artifact has been trained yet."""
    from shared.models.artifacts import load_artifact
    from shared.models.backbone import shared_backbone

    loaded = load_artifact(MODEL_NAME, models_dir)
    if loaded is None:
        log.warning("no compat artifact", extra={"models_dir": str(models_dir),
                                                 "hint": "run `lookbook train compat --data ../shared/data`"})
        return None
    state, manifest = loaded
    backbone = shared_backbone()
    net = CompatNet.from_serving_state(state, backbone)
    return CompatModel(net, backbone, str(manifest["version"]))
