"""Training and evaluation of the compatibility model on stylist outfits (in-batch InfoNCE plus attributes).

In-batch negatives are drawn in proportion to how often each garment occurs in the pairs, which is
exactly the popularity-matched FITB setting, so the model learns compatibility beyond popularity.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from shared.models.compat import CompatConfig, CompatNet, Kind, config_stats_dim, map_statistics
from shared.models.compat_data import (
    ATTRIBUTES,
    Benchmark,
    OutfitData,
    build_benchmark,
    fitb_accuracy,
    pair_auc,
    split_by_top,
)
from shared.models.compat_features import CACHE_VERSION, DEFAULT_CACHE_DIR, FeatureSet, extract_features

log = logging.getLogger(__name__)

# Attribute values rarer than this among the garments fall into one "other" class.
MIN_ATTRIBUTE_COUNT = 8


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 8
    batch_pairs: int = 256
    lr: float = 2e-3
    backbone_lr: float = 2e-4
    weight_decay: float = 0.05
    attribute_weight: float = 0.2
    # Extra negatives per pair: a bottom of the same family as the true one, never paired with the top.
    hard_negatives: int = 0
    val_fraction: float = 0.2
    split_seed: int = 7
    seed: int = 0
    # Original, mirror, and a seeded street-like crop with mild colour jitter (see augmented_view).
    views: tuple[int, ...] = (0, 1, 2)
    config: CompatConfig = field(
        default_factory=lambda: CompatConfig(hidden=256, trainable=(), stem_stats=True, members=3))


@dataclass
class PreparedData:
    """Everything training needs, indexed by garment: features per view, attribute labels, pair indices."""

    items: list[str]
    index: dict[str, int]
    kinds: np.ndarray  # 0 top, 1 bottom
    features: FeatureSet
    labels: dict[str, np.ndarray]
    vocab: dict[str, list[str]]
    train_pairs: list[tuple[str, str]]
    val_pairs: list[tuple[str, str]]
    all_pairs: list[tuple[str, str]]
    x5: np.ndarray | None = None  # frozen stage-5 maps, filled by stage5_maps()
    x6: np.ndarray | None = None  # frozen stage-6 maps, filled by stage6_maps()
    stats: np.ndarray | None = None  # feature-map statistics [V, N, S], filled by map_stats()


def prepare(data: OutfitData, params: TrainParams, *, progress: bool = True) -> PreparedData:
    items = sorted({t for t, _ in data.pairs} | {b for _, b in data.pairs})
    index = {pid: i for i, pid in enumerate(items)}
    features = extract_features([data.products[pid].image for pid in items], params.views, progress=progress)
    labels: dict[str, np.ndarray] = {}
    vocab: dict[str, list[str]] = {}
    for name in ATTRIBUTES:
        values = [getattr(data.products[pid], name) or "?" for pid in items]
        counts = Counter(values)
        names = ["other", *sorted(v for v, c in counts.items() if c >= MIN_ATTRIBUTE_COUNT)]
        lookup = {v: i for i, v in enumerate(names)}
        labels[name] = np.array([lookup.get(v, 0) for v in values], dtype=np.int64)
        vocab[name] = names
    train, val = split_by_top(data.pairs, val_fraction=params.val_fraction, seed=params.split_seed)
    kinds = np.array([0 if data.products[pid].category == "Tops" else 1 for pid in items])
    return PreparedData(items=items, index=index, kinds=kinds, features=features, labels=labels, vocab=vocab,
                        train_pairs=train, val_pairs=val if params.val_fraction > 0 else [], all_pairs=data.pairs)


def pair_scorer(vectors: dict[str, np.ndarray]) -> Callable[[Sequence[str], Sequence[str]], np.ndarray]:
    """Cosine scorer over precomputed unit vectors keyed by product id."""

    def score(tops: Sequence[str], bottoms: Sequence[str]) -> np.ndarray:
        return np.array([float(vectors[t] @ vectors[b]) for t, b in zip(tops, bottoms, strict=True)])

    return score


def evaluate_scorer(bench: Benchmark, score: Callable[[Sequence[str], Sequence[str]], np.ndarray]) -> dict[str, float]:
    """FITB in both directions (uniform and popularity-matched negatives) and pair AUC for one scorer."""
    out: dict[str, float] = {}
    for direction, questions in (("top_to_bottom", bench.top_to_bottom), ("bottom_to_top", bench.bottom_to_top)):
        for kind, q in questions.items():
            rows, cols = q.candidates.shape
            queries = np.repeat(np.array(q.queries, dtype=object), cols)
            answers = q.candidates.reshape(-1)
            if direction == "top_to_bottom":
                flat = score(list(queries), list(answers))
            else:
                flat = score(list(answers), list(queries))
            out[f"fitb_{direction}_{kind}"] = fitb_accuracy(np.asarray(flat).reshape(rows, cols))
    positives = score([t for t, _ in bench.pairs], [b for _, b in bench.pairs])
    negatives = score([t for t, _ in bench.auc_negatives], [b for _, b in bench.auc_negatives])
    out["pair_auc"] = pair_auc(positives, negatives)
    return out


def colour_histogram_similarity(colour: np.ndarray) -> np.ndarray:
    """The colour heuristic's view of a garment: its hue/grey/saturation/value histogram (first 24 entries)."""
    return colour[..., :24]


def stage5_maps(prepared: PreparedData, backbone: nn.Module, batch: int = 128) -> np.ndarray:
    """Output of the frozen backbone stage 5 for every garment and view, float16 [V, N, 192, 7, 7].

    Kept in memory and on disk under .cache/compat, keyed by the images' content and the views.
    """
    if prepared.x5 is None:
        fs = prepared.features
        key = hashlib.sha256(("|".join(fs.shas) + f"|{fs.views}|{CACHE_VERSION}").encode()).hexdigest()[:32]
        file = DEFAULT_CACHE_DIR / f"stage5-{key}.npy"
        if file.is_file():
            prepared.x5 = np.load(file)
        else:
            stage = backbone.blocks[5]
            with torch.inference_mode():
                prepared.x5 = np.stack([
                    np.concatenate([stage(torch.from_numpy(fs.stem[vi, s:s + batch].astype(np.float32))).half().numpy()
                                    for s in tqdm(range(0, len(prepared.items), batch), desc=f"stage 5, view {v}",
                                                  leave=False)])
                    for vi, v in enumerate(fs.views)
                ])
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(".tmp.npy")
            np.save(tmp, prepared.x5)
            tmp.replace(file)
    return prepared.x5


def stage6_maps(prepared: PreparedData, backbone: nn.Module, batch: int = 128) -> np.ndarray:
    """Output of the frozen backbone stage 6 for every garment and view, float16 [V, N, 320, 7, 7] (in memory)."""
    if prepared.x6 is None:
        x5 = stage5_maps(prepared, backbone)
        stage = backbone.blocks[6]
        with torch.inference_mode():
            prepared.x6 = np.stack([
                np.concatenate([stage(torch.from_numpy(x5[vi, s:s + batch].astype(np.float32))).half().numpy()
                                for s in range(0, x5.shape[1], batch)])
                for vi in range(x5.shape[0])
            ])
    return prepared.x6


def map_stats(prepared: PreparedData, net: CompatNet, backbone: nn.Module, batch: int = 512) -> np.ndarray | None:
    """The feature-map statistics the model's config asks for, per garment and view, float32 [V, N, S]."""
    if not config_stats_dim(net.config):
        return None
    fs = prepared.features
    parts = []
    if net.config.stem_stats:
        parts.append(np.stack([
            np.concatenate([map_statistics(torch.from_numpy(fs.stem[vi, s:s + batch])).numpy()
                            for s in range(0, len(prepared.items), batch)])
            for vi in range(len(fs.views))
        ]))
    if net.config.stage5_stats:
        x5 = stage5_maps(prepared, backbone)
        parts.append(np.stack([
            np.concatenate([map_statistics(torch.from_numpy(x5[vi, s:s + batch])).numpy()
                            for s in range(0, len(prepared.items), batch)])
            for vi in range(len(fs.views))
        ]))
    prepared.stats = np.concatenate(parts, axis=2)
    return prepared.stats


def pooled_features(net: CompatNet, prepared: PreparedData, view_index: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    """The 1280-d pooled feature of garments `idx` under views `view_index`: cached when the tail is frozen."""
    if net.config.trainable and "blocks.6" not in net.config.trainable:
        if prepared.x6 is None:
            raise ValueError("stage6_maps() must run before fine-tuning the head conv")
        return net.pooled_from_stage6(torch.from_numpy(prepared.x6[view_index, idx].astype(np.float32)))
    if net.config.trainable:
        if prepared.x5 is None:
            raise ValueError("stage5_maps() must run before training a fine-tuned tail")
        return net.pooled(torch.from_numpy(prepared.x5[view_index, idx].astype(np.float32)))
    return torch.from_numpy(prepared.features.pooled[view_index, idx])


def net_vectors(net: CompatNet, prepared: PreparedData, view: int = 0, batch: int = 256) -> dict[str, np.ndarray]:
    """Unit vectors of every garment under one cached view, each through its own type's head."""
    fs = prepared.features
    vi = fs.views.index(view)
    out: dict[str, np.ndarray] = {}
    net.eval()
    with torch.inference_mode():
        for kind_id, kind in ((0, "top"), (1, "bottom")):
            idx = np.flatnonzero(prepared.kinds == kind_id)
            for start in range(0, len(idx), batch):
                chunk = idx[start:start + batch]
                pooled = pooled_features(net, prepared, np.full(len(chunk), vi), chunk)
                stats = torch.from_numpy(prepared.stats[vi, chunk]) if prepared.stats is not None else None
                vecs = net.embed(pooled, torch.from_numpy(fs.colour[vi, chunk]), stats, kind).numpy()  # type: ignore[arg-type]
                out.update({prepared.items[i]: v for i, v in zip(chunk, vecs, strict=True)})
    return out


@dataclass
class TrainResult:
    net: CompatNet
    history: list[dict[str, float]]
    val_metrics: dict[str, float]
    seconds: float


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def train_compat(
    prepared: PreparedData,
    backbone: nn.Module,
    params: TrainParams,
    *,
    progress: bool = True,
    eval_every: int = 0,
) -> TrainResult:
    """Trains the type-aware heads (and the fine-tuned backbone tail) with symmetric in-batch InfoNCE."""
    _set_seed(params.seed)
    started = time.perf_counter()
    config = CompatConfig(**{**asdict(params.config),
                             "attribute_classes": {k: len(v) for k, v in prepared.vocab.items()}})
    config = CompatConfig.from_dict(asdict(config))
    net = CompatNet(backbone, config)
    fs = prepared.features
    colour = fs.colour.reshape(-1, fs.colour.shape[-1])
    net.colour_mean.copy_(torch.from_numpy(colour.mean(axis=0)))
    net.colour_std.copy_(torch.from_numpy(colour.std(axis=0) + 1e-3))
    if (all_stats := map_stats(prepared, net, backbone)) is not None:
        stats = all_stats.reshape(-1, all_stats.shape[-1])
        net.stats_mean.copy_(torch.from_numpy(stats.mean(axis=0)))
        net.stats_std.copy_(torch.from_numpy(stats.std(axis=0) + 1e-3))

    # Stage 5 stays frozen (its weights are most of the backbone tail), so its output is computed once.
    if "blocks.5" in config.trainable:
        raise ValueError("fine-tuning blocks.5 is not supported: its output is precomputed")
    if config.trainable:
        stage5_maps(prepared, backbone)
        if "blocks.6" not in config.trainable:
            stage6_maps(prepared, backbone)

    backbone_params = [p for p in net.tail.parameters() if p.requires_grad]
    head_params = [*net.heads.parameters(), *net.attribute_heads.parameters(), net.logit_scale]
    groups: list[dict[str, Any]] = [{"params": head_params, "lr": params.lr}]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": params.backbone_lr})
    optimiser = torch.optim.AdamW(groups, weight_decay=params.weight_decay)
    pairs = np.array([(prepared.index[t], prepared.index[b]) for t, b in prepared.train_pairs], dtype=np.int64)
    is_positive = np.zeros((len(prepared.items), len(prepared.items)), dtype=bool)
    is_positive[pairs[:, 0], pairs[:, 1]] = True
    steps_per_epoch = max(1, math.ceil(len(pairs) / params.batch_pairs))
    total_steps = steps_per_epoch * params.epochs
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=[g["lr"] for g in groups], total_steps=total_steps, pct_start=0.15)
    rng = np.random.default_rng(params.seed)
    labels = {k: torch.from_numpy(v) for k, v in prepared.labels.items()}
    family_members: dict[int, np.ndarray] = {}
    train_bottoms = np.unique(pairs[:, 1])
    for family in np.unique(prepared.labels["family"][train_bottoms]):
        family_members[int(family)] = train_bottoms[prepared.labels["family"][train_bottoms] == family]

    def hard_bottoms(batch: np.ndarray, present: np.ndarray) -> np.ndarray:
        picks = []
        for t, b in batch:
            same = family_members[int(prepared.labels["family"][b])]
            for c in rng.choice(same, size=params.hard_negatives):
                if not is_positive[t, c]:
                    picks.append(c)
        return np.setdiff1d(np.array(picks, dtype=np.int64), present)
    val_bench = (build_benchmark(prepared.val_pairs, seed=params.seed, known_pairs=prepared.all_pairs)
                 if prepared.val_pairs else None)
    history: list[dict[str, float]] = []
    bar = tqdm(total=total_steps, desc="train compat", unit="step", disable=not progress)
    for epoch in range(params.epochs):
        net.train()
        order = rng.permutation(len(pairs))
        losses = []
        for step in range(steps_per_epoch):
            batch = pairs[order[step * params.batch_pairs:(step + 1) * params.batch_pairs]]
            if len(batch) < 2:
                continue
            tops, top_pos = np.unique(batch[:, 0], return_inverse=True)
            bottoms, bottom_pos = np.unique(batch[:, 1], return_inverse=True)
            if params.hard_negatives:
                bottoms = np.concatenate([bottoms, hard_bottoms(batch, bottoms)])
            outputs = {}
            attribute_loss = torch.zeros(())
            for kind, idx in (("top", tops), ("bottom", bottoms)):
                view = rng.integers(0, len(fs.views), size=len(idx))
                x = net.head_input(pooled_features(net, prepared, view, idx), torch.from_numpy(fs.colour[view, idx]),
                                   torch.from_numpy(prepared.stats[view, idx]) if prepared.stats is not None else None)
                outputs[kind] = net.member_outputs(x, kind)  # type: ignore[arg-type]
                for (_, hidden), heads in zip(outputs[kind], net.attribute_heads, strict=True):
                    for name, head in heads.items():
                        attribute_loss = attribute_loss + nn.functional.cross_entropy(head(hidden), labels[name][idx])
            # Other true partners in the batch are not negatives.
            mask = torch.from_numpy(is_positive[np.ix_(tops, bottoms)])
            rows = torch.from_numpy(top_pos)
            cols = torch.from_numpy(bottom_pos)
            nce = torch.zeros(())
            for member in range(config.members):
                scale = net.logit_scale[member].exp().clamp(max=100.0)
                logits = scale * outputs["top"][member][0] @ outputs["bottom"][member][0].T
                row_logits = logits[rows].masked_fill(mask[rows], -1e4)
                row_logits[torch.arange(len(rows)), cols] = logits[rows, cols]
                col_logits = logits.T[cols].masked_fill(mask.T[cols], -1e4)
                col_logits[torch.arange(len(cols)), rows] = logits[rows, cols]
                nce = nce + nn.functional.cross_entropy(row_logits, cols)
                nce = nce + nn.functional.cross_entropy(col_logits, rows)
            nce = nce / config.members
            n_attr = max(1, len(config.attribute_classes))
            loss = nce / 2 + params.attribute_weight * attribute_loss / (2 * n_attr * config.members)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(float(nce.detach()))
            bar.update(1)
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan")}
        if val_bench is not None and eval_every and ((epoch + 1) % eval_every == 0 or epoch + 1 == params.epochs):
            metrics = evaluate_scorer(val_bench, pair_scorer(net_vectors(net, prepared)))
            record.update({k: round(v, 4) for k, v in metrics.items()})
            bar.set_postfix(fitb=record["fitb_top_to_bottom_popularity"], auc=record["pair_auc"])
        history.append(record)
        log.info("compat epoch", extra=record)
    bar.close()
    net.eval()
    val_metrics: dict[str, float] = {}
    if val_bench is not None:
        vectors = net_vectors(net, prepared)
        val_metrics = evaluate_scorer(val_bench, pair_scorer(vectors))
        calibrate(net, vectors, val_bench)
    return TrainResult(net=net, history=history, val_metrics=val_metrics, seconds=time.perf_counter() - started)


def calibrate(net: CompatNet, vectors: dict[str, np.ndarray], bench: Benchmark) -> None:
    """Platt scaling of the cosine on held-out pairs, positives and popularity-matched negatives weighted equally."""
    from sklearn.linear_model import LogisticRegression

    pos = [float(vectors[t] @ vectors[b]) for t, b in bench.pairs]
    neg = [float(vectors[t] @ vectors[b]) for t, b in bench.auc_negatives]
    x = np.array(pos + neg).reshape(-1, 1)
    y = np.array([1] * len(pos) + [0] * len(neg))
    model = LogisticRegression(class_weight="balanced", C=10.0).fit(x, y)
    net.calibration.copy_(torch.tensor([float(model.coef_[0, 0]), float(model.intercept_[0])]))


def kind_of(prepared: PreparedData, pid: str) -> Kind:
    return "top" if prepared.kinds[prepared.index[pid]] == 0 else "bottom"


def baseline_scorers(features: FeatureSet, index: dict[str, int], seed: int
                     ) -> dict[str, Callable[[Sequence[str], Sequence[str]], np.ndarray]]:
    """The reference methods: random scores, cosine of raw backbone features, and colour-histogram overlap."""
    vi = features.views.index(0)
    pooled = features.pooled[vi] / np.linalg.norm(features.pooled[vi], axis=1, keepdims=True)
    hist = colour_histogram_similarity(features.colour[vi])
    rng = np.random.default_rng(seed)

    def random_score(tops: Sequence[str], bottoms: Sequence[str]) -> np.ndarray:
        return rng.random(len(tops))

    def backbone_cosine(tops: Sequence[str], bottoms: Sequence[str]) -> np.ndarray:
        t = np.array([index[x] for x in tops], dtype=np.int64)
        b = np.array([index[x] for x in bottoms], dtype=np.int64)
        return np.sum(pooled[t] * pooled[b], axis=1)

    def colour_histogram(tops: Sequence[str], bottoms: Sequence[str]) -> np.ndarray:
        # Histogram intersection, per block (hue 12, grey 4, saturation 4, value 4) so each block counts once.
        t = np.array([index[x] for x in tops], dtype=np.int64)
        b = np.array([index[x] for x in bottoms], dtype=np.int64)
        return np.minimum(hist[t], hist[b]).sum(axis=1)

    return {"random": random_score, "backbone_cosine": backbone_cosine, "colour_histogram": colour_histogram}


def model_pair_scorer(vectors: dict[str, np.ndarray]) -> Callable[[Sequence[str], Sequence[str]], np.ndarray]:
    return pair_scorer(vectors)


def training_manifest_data(data: OutfitData, params: TrainParams, prepared: PreparedData) -> dict[str, Any]:
    """The manifest's record of what the model was trained on, enough to rebuild the split."""
    return {
        "outfits_dir": str(data.root.resolve()),
        "outfits_csv_sha256": data.outfits_sha256,
        "outfits": data.outfit_count,
        "pairs": len(data.pairs),
        "train_pairs": len(prepared.train_pairs),
        "val_pairs": len(prepared.val_pairs),
        "tops": len(data.tops),
        "bottoms": len(data.bottoms),
        "images": len(prepared.items),
        "views": list(prepared.features.views),
        "split": {"by": "top", "val_fraction": params.val_fraction, "seed": params.split_seed},
    }
