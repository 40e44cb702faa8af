"""Stylist outfits as top–bottom pairs, the top-disjoint split, negative sampling and the FITB/AUC metrics.

Shared by `lookbook train compat` and `lookbook eval compat`, so both read the data and draw
negatives the same way.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TOP_CATEGORY = "Tops"
BOTTOM_CATEGORY = "Bottoms"
# Attributes of products.csv the model learns to predict alongside compatibility.
ATTRIBUTES = ("family", "color", "fabric")


class OutfitDataError(ValueError):
    """The outfits directory is missing a file or is not in the ../shared/data layout."""


@dataclass(frozen=True)
class Product:
    product_id: str
    category: str
    family: str
    color: str
    fabric: str
    image: Path


@dataclass
class OutfitData:
    """The tops and bottoms of an outfits/ directory and the positive pairs among them."""

    root: Path
    products: dict[str, Product]
    pairs: list[tuple[str, str]]  # unique (top_id, bottom_id), sorted
    outfit_count: int
    outfits_sha256: str

    @property
    def tops(self) -> list[str]:
        return sorted({t for t, _ in self.pairs})

    @property
    def bottoms(self) -> list[str]:
        return sorted({b for _, b in self.pairs})


def outfits_dir(data: Path) -> Path:
    """Accepts either the data root (holding outfits/) or the outfits/ folder itself."""
    if (data / "outfits" / "outfits.csv").is_file():
        return data / "outfits"
    if (data / "outfits.csv").is_file():
        return data
    raise OutfitDataError(
        f"no outfits.csv under {data} or {data / 'outfits'}: pass --data pointing at a directory laid out "
        "like ../shared/data (outfits/outfits.csv, outfits/products.csv, outfits/images/)"
    )


def load_outfits(data: Path) -> OutfitData:
    """Reads outfits.csv and products.csv; every top and bottom in the same outfit make a positive pair."""
    root = outfits_dir(data)
    products_csv = root / "products.csv"
    if not products_csv.is_file():
        raise OutfitDataError(f"{products_csv} is missing: the outfits folder needs products.csv next to outfits.csv")
    products: dict[str, Product] = {}
    with products_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["category"] not in (TOP_CATEGORY, BOTTOM_CATEGORY) or not row.get("image"):
                continue
            image = root / row["image"]
            if not image.is_file():
                continue
            products[row["product_id"]] = Product(
                product_id=row["product_id"], category=row["category"], family=row.get("family", ""),
                color=row.get("color", ""), fabric=row.get("fabric", ""), image=image,
            )
    outfits_csv = root / "outfits.csv"
    raw = outfits_csv.read_bytes()
    members: dict[str, list[str]] = defaultdict(list)
    with outfits_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            members[row["outfit_id"]].append(row["product_id"])
    pairs: set[tuple[str, str]] = set()
    for items in members.values():
        tops = [p for p in items if p in products and products[p].category == TOP_CATEGORY]
        bottoms = [p for p in items if p in products and products[p].category == BOTTOM_CATEGORY]
        pairs.update((t, b) for t in tops for b in bottoms)
    if not pairs:
        raise OutfitDataError(f"{outfits_csv} has no outfit with both a top and a bottom that has an image")
    return OutfitData(root=root, products=products, pairs=sorted(pairs), outfit_count=len(members),
                      outfits_sha256=hashlib.sha256(raw).hexdigest())


def split_by_top(
    pairs: Sequence[tuple[str, str]], *, val_fraction: float, seed: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Splits pairs so that validation tops never occur in training, as on the held-out outfits."""
    tops = sorted({t for t, _ in pairs})
    rng = np.random.default_rng(seed)
    held = set(rng.choice(tops, size=max(1, round(len(tops) * val_fraction)), replace=False).tolist())
    train = [p for p in pairs if p[0] not in held]
    val = [p for p in pairs if p[0] in held]
    return train, val


@dataclass
class Questions:
    """Fill-in-the-blank questions: row i asks for candidates[i, 0] (the truth) among candidates[i, :]."""

    queries: list[str]
    candidates: np.ndarray  # object array [Q, 1 + negatives] of product ids


@dataclass
class Benchmark:
    """All questions of one evaluation, drawn once so that every method answers the same ones."""

    pairs: list[tuple[str, str]]
    top_to_bottom: dict[str, Questions] = field(default_factory=dict)  # "uniform" / "popularity"
    bottom_to_top: dict[str, Questions] = field(default_factory=dict)
    auc_negatives: list[tuple[str, str]] = field(default_factory=list)
    skipped: int = 0  # questions that had too few never-paired candidates


def sample_negatives(
    query: str,
    truth: str,
    pool: Sequence[str],
    weights: np.ndarray | None,
    partners: dict[str, set[str]],
    count: int,
    rng: np.random.Generator,
) -> list[str]:
    """Draws `count` distinct items of `pool` never paired with `query` (weighted, or uniform if None)."""
    seen = partners.get(query, set())
    allowed = np.array([item not in seen and item != truth for item in pool])
    if allowed.sum() < count:
        raise OutfitDataError(f"too few candidates never paired with {query}: the evaluation needs at least "
                              f"{count + 1} distinct items on each side")
    p = allowed.astype(np.float64) if weights is None else np.where(allowed, weights, 0.0)
    p = p / p.sum()
    picks = rng.choice(len(pool), size=count, replace=False, p=p)
    return [pool[i] for i in picks]


def build_benchmark(
    pairs: Sequence[tuple[str, str]],
    *,
    seed: int,
    negatives: int = 3,
    known_pairs: Sequence[tuple[str, str]] | None = None,
) -> Benchmark:
    """Draws FITB questions in both directions, uniform and popularity-matched, and the AUC negatives.

    Popularity is how often an item occurs in the evaluated true pairs; a negative is never an item
    seen with the query in `known_pairs` (all pairs of the data set, defaulting to `pairs`). The
    AUC negatives are the popularity-matched top->bottom negatives, so that always ranking popular
    bottoms first gains nothing.
    """
    pairs = list(pairs)
    known = list(known_pairs) if known_pairs is not None else pairs
    rng = np.random.default_rng(seed)
    bench = Benchmark(pairs=pairs)
    for direction in ("top_to_bottom", "bottom_to_top"):
        if direction == "top_to_bottom":
            oriented = [(t, b) for t, b in pairs]
            known_oriented = known
        else:
            oriented = [(b, t) for t, b in pairs]
            known_oriented = [(b, t) for t, b in known]
        partners: dict[str, set[str]] = defaultdict(set)
        for q, a in known_oriented:
            partners[q].add(a)
        counts = Counter(a for _, a in oriented)
        pool = sorted(counts)
        popularity = np.array([counts[a] for a in pool], dtype=np.float64)
        questions: dict[str, Questions] = {}
        for kind, weights in (("uniform", None), ("popularity", popularity)):
            queries, rows = [], []
            for q, a in oriented:
                try:
                    rows.append([a, *sample_negatives(q, a, pool, weights, partners, negatives, rng)])
                except OutfitDataError:
                    # A query paired with nearly every candidate cannot be asked; it is counted, not fatal.
                    bench.skipped += 1
                    continue
                queries.append(q)
            if not rows:
                raise OutfitDataError(f"no {direction} question could be drawn: the evaluation needs at least "
                                      f"{negatives + 1} distinct items on each side")
            questions[kind] = Questions(queries=queries, candidates=np.array(rows, dtype=object))
        getattr(bench, direction).update(questions)
    pop = bench.top_to_bottom["popularity"]
    bench.auc_negatives = [(q, b) for q, row in zip(pop.queries, pop.candidates, strict=True) for b in row[1:]]
    return bench


def fitb_accuracy(scores: np.ndarray) -> float:
    """Share of questions where column 0 (the truth) scores highest; a tie with k others earns 1/(k+1)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError("scores must be [questions, 1 + negatives]")
    truth = scores[:, :1]
    beaten = (scores[:, 1:] > truth).any(axis=1)
    ties = (scores[:, 1:] == truth).sum(axis=1)
    credit = np.where(beaten, 0.0, 1.0 / (1.0 + ties))
    return float(credit.mean())


def pair_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive pair outscores a random negative one (ties count half)."""
    pos = np.asarray(positive, dtype=np.float64)
    neg = np.asarray(negative, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUC needs at least one positive and one negative score")
    values = np.concatenate([pos, neg])
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    # Average ranks over ties (Mann-Whitney U).
    _, first, counts = np.unique(sorted_values, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))
