"""`lookbook eval blend`: the two ranking paths and their blend, with and without diversity, on
held-out look pairs.

The looks of DIR with both boxes are split (fixed seed) into a library and held-out looks. The
library is imported into a fresh Qdrant Edge store with the shipped models. Each held-out look's
top is a query (and its bottom, symmetrically); the answer is judged against the garment that look
really pairs it with. A returned garment is relevant when it is of the same type (the data set's
labels, e.g. skirt or jeans) and has the same dominant colour word as the true one: "a bottom like
the one actually worn". Neither test uses the learned features either path ranks by.

Figures: recall@10 (a relevant garment among the 10), precision@10, and the diversity measure, the
mean pairwise appearance cosine of the 10 returned garments (lower is more varied).
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path
from typing import Any

import click
import numpy as np

from services.commands.common import fail, settings_or_exit
from services.gateway.ranking import Path as Path_

CONFIGS: tuple[tuple[str, Path_, str, float], ...] = (
    # name, path, fusion, diversity
    ("look_alike", "look_alike", "weighted", 0.0),
    ("compatibility", "compatibility", "weighted", 0.0),
    ("blend_weighted", "blend", "weighted", 0.0),
    ("blend_rrf", "blend", "rrf", 0.0),
    ("blend_weighted_mmr", "blend", "weighted", -1.0),  # -1: the diversity given by --diversity
    ("blend_rrf_mmr", "blend", "rrf", -1.0),
)


@dataclass
class Truth:
    labels: set[str]
    colour: str


def _first_colour(colours: Any, kind: str) -> str:
    names = (colours.get(kind) or []) if isinstance(colours, dict) else list(colours or [])
    return names[0] if names else ""


def _relevant(look: Any, kind: str, truth: Truth, labels_of: dict[str, dict[str, set[str]]]) -> bool:
    labels = labels_of.get(look.look_id, {}).get(kind, set())
    return bool(labels & truth.labels) and _first_colour(look.colors, kind) == truth.colour


@click.command(name="blend")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, path_type=Path),
    required=True,
    help="A data dir in the ../shared/data layout (looks/looks.json), or a looks.json.",
)
@click.option("--held-out", type=float, default=0.2, show_default=True, help="Share of looks held out as queries.")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--diversity",
    "diversities",
    type=click.FloatRange(0.0, 1.0),
    multiple=True,
    help="MMR diversity for the *_mmr rows; repeat to compare several [default: 0.3].",
)
@click.option(
    "--compat-weight",
    "compat_weights",
    type=click.FloatRange(0.0, 1.0),
    multiple=True,
    help="Blend weight of the compatibility path; repeat to compare several in one run "
    "[default: LOOKBOOK_COMPAT_WEIGHT].",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def blend_eval(
    data_dir: Path,
    held_out: float,
    seed: int,
    diversities: tuple[float, ...],
    compat_weights: tuple[float, ...],
    json_out: Path | None,
) -> None:
    """Recall@10, precision@10 and diversity of each ranking path and blend on held-out look pairs."""
    diversities = diversities or (0.3,)
    from tqdm import tqdm

    from services.gateway.ranking import Matcher
    from services.runtime import local_vision
    from shared.images import crop_jpeg
    from shared.library import import_looks, read_source, vector_dims
    from shared.store import EdgeLookStore, look_id_for

    source = data_dir / "looks" / "looks.json" if (data_dir / "looks" / "looks.json").is_file() else data_dir
    raw = json.loads(Path(source if Path(source).is_file() else Path(source) / "looks.json").read_text())
    records = raw["looks"] if isinstance(raw, dict) else {str(i): r for i, r in enumerate(raw)}
    items = [i for i in read_source(source) if {k.kind for k in i.known} >= {"top", "bottom"}]
    if len(items) < 10:
        fail(f"{source} has fewer than 10 looks with both a top and a bottom box")
    # Type labels per garment, from the data set's annotations (looks.json) or the manifest's tags.
    by_image = {str(Path(r["image"]).name): r for r in records.values()}
    labels_of_item: dict[str, dict[str, set[str]]] = {}
    for item in items:
        rec = by_image.get(item.path.name, {})
        labels_of_item[str(item.path)] = {
            "top": set(rec.get("upper_labels", [])) or set(item.tags),
            "bottom": set(rec.get("lower_labels", [])) or set(item.tags),
        }
    rng = random.Random(seed)
    order = list(range(len(items)))
    rng.shuffle(order)
    n_held = max(1, round(len(items) * held_out))
    queries = [items[i] for i in order[:n_held]]
    library = [replace(items[i], status="approved") for i in order[n_held:]]

    with tempfile.TemporaryDirectory(prefix="lookbook-blend-") as tmp:
        settings = settings_or_exit(data_dir=Path(tmp), min_quality=0.0)
        vision = local_vision(settings)
        if vision.pipeline.compat is None:
            fail("no compatibility model is shipped: train one with `lookbook train compat --data ../shared/data`")
        store = EdgeLookStore(Path(tmp) / "store", hnsw_ef=settings.hnsw_ef)
        store.ensure(vision.model_version, vector_dims((vision.pipeline.embedding_dim, vision.pipeline.compat_dim)))
        with tqdm(library, desc="importing the library", unit="look", file=sys.stderr) as bar:
            import_looks(
                library,
                analyzer=vision,
                store=store,
                images_dir=settings.images_dir,
                auto_approve_quality=1.0,
                max_image_bytes=settings.max_image_bytes,
                progress=lambda _: bar.update(),
            )
        labels_of = {look_id_for(i.path.read_bytes()): labels_of_item[str(i.path)] for i in library}
        weights = compat_weights or (settings.compat_weight,)
        # One row per configuration; blends once per weight (suffixed when several are compared).
        rows: list[tuple[str, Path_, str, float, Matcher]] = []
        for weight in weights:
            matcher = Matcher(settings.model_copy(update={"compat_weight": weight}), store)
            for name, path, fusion, div in CONFIGS:
                if path != "blend" and weight != weights[0]:
                    continue
                label = f"{name}@{weight:g}" if path == "blend" and len(weights) > 1 else name
                for d in diversities if div < 0 else (div,):
                    suffix = f"/{d:g}" if div < 0 and len(diversities) > 1 else ""
                    rows.append((label + suffix, path, fusion, d, matcher))
        tallies = {row[0]: {"recall": 0.0, "precision": 0.0, "diversity": 0.0, "n": 0} for row in rows}
        for item in tqdm(queries, desc="held-out queries", unit="look", file=sys.stderr):
            crops = {known.kind: crop_jpeg(item.path, known.box) for known in item.known}
            for kind, pair in (("top", "bottom"), ("bottom", "top")):
                query = vision.analyze_sync(crops[kind], single_garment=True, kind_hint=kind).garment(kind)  # type: ignore[arg-type]
                truth_garment = vision.analyze_sync(crops[pair], single_garment=True, kind_hint=pair).garment(pair)  # type: ignore[arg-type]
                if query is None or truth_garment is None:
                    continue
                truth = Truth(
                    labels_of_item[str(item.path)][pair], truth_garment.colors[0] if truth_garment.colors else ""
                )
                for name, path, fusion, div, matcher in rows:
                    found = matcher.candidates(
                        query.kind,
                        query.embedding,
                        query.compat,
                        path=path,
                        tags=(),
                        limit=10,  # type: ignore[arg-type]
                        diversity=div,
                        fusion=fusion,
                    )
                    hits = [_relevant(c.look, pair, truth, labels_of) for c in found]
                    vectors = [store.get_vectors(c.look.look_id) or {} for c in found]
                    garments = [np.asarray(v[pair]) for v in vectors if pair in v]
                    pairs = list(combinations(garments, 2))
                    t = tallies[name]
                    t["recall"] += float(any(hits))
                    t["precision"] += sum(hits) / 10
                    t["diversity"] += float(np.mean([a @ b for a, b in pairs])) if pairs else 0.0
                    t["n"] += 1
        store.close()
    figures = {name: {k: (v / t["n"] if k != "n" else v) for k, v in t.items()} for name, t in tallies.items()}
    click.echo(
        f"held-out looks {len(queries)} (x2 queries), library {len(library)}, seed {seed}, model {vision.model_version}"
    )
    click.echo(
        f"compat weight {', '.join(f'{w:g}' for w in weights)}; "
        f"MMR diversity of the *_mmr rows {', '.join(f'{d:g}' for d in diversities)}"
    )
    click.echo(f"{'ranking':<28}{'recall@10':>10}{'prec@10':>9}{'diversity':>10}")
    for name, f in figures.items():
        click.echo(f"{name:<28}{f['recall']:>10.3f}{f['precision']:>9.3f}{f['diversity']:>10.3f}")
    if json_out:
        record = {"seed": seed, "model_version": vision.model_version, "compat_weights": list(weights)}
        json_out.write_text(json.dumps({**record, "diversity": list(diversities), "figures": figures}, indent=2))


def register(main: click.Group) -> None:
    group = main.commands["eval"]
    assert isinstance(group, click.Group)
    group.add_command(blend_eval)
