"""`lookbook train detector|category|embedding`, `lookbook eval vision|detector-seeds` and `lookbook bench vision`:
train, measure and time the vision heads on a data folder laid out like ../shared/data.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import click

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_MODELS = REPO_ROOT / "shared" / "models" / "artifacts"
VERSIONS = {"detector": "detector-3", "category": "category-1", "embedding": "embedding-1"}

data_option = click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_DATA,
    show_default=True,
    help="Folder laid out like ../shared/data.",
)
models_option = click.option(
    "--models-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_MODELS,
    show_default=True,
    help="Where the artifacts live.",
)
device_option = click.option(
    "--device", default="auto", show_default=True, help="torch device: auto (cuda when present), cpu or cuda."
)
threads_option = click.option(
    "--threads",
    type=int,
    default=2,
    show_default=True,
    help="CPU threads for torch (the dev machine has 2 cores for everyone).",
)


def _setup(data_dir: Path, threads: int, device: str) -> Any:
    import torch

    from shared.models.vision_training import pick_device

    if not (data_dir / "looks" / "looks.json").is_file():
        raise click.ClickException(f"{data_dir} has no looks/looks.json: pass --data pointing at ../shared/data")
    torch.set_num_threads(threads)
    return pick_device(device)


def _save(
    name: str,
    state: dict[str, Any],
    params: dict[str, Any],
    data: dict[str, Any],
    metrics: dict[str, Any],
    models_dir: Path,
) -> None:
    from shared.models.artifacts import save_artifact

    folder = save_artifact(
        name, state, version=VERSIONS[name], training_data=data, params=params, metrics=metrics, models_dir=models_dir
    )
    size = (folder / "model.pt").stat().st_size
    click.echo(f"{name}: wrote {folder} ({size / 1e6:.2f} MB), version {VERSIONS[name]}")
    click.echo(json.dumps(metrics, indent=2))


@click.command("detector")
@data_option
@models_option
@device_option
@threads_option
@click.option("--look-views", type=int, default=4, show_default=True, help="Augmented views per annotated look.")
@click.option("--photo-views", type=int, default=1, show_default=True, help="Views per single-garment photo.")
@click.option(
    "--tag-views",
    type=click.IntRange(0, 2),
    default=2,
    show_default=True,
    help="Views per tag-only look (presence labels only): 0 leaves them out, 2 adds a mirror.",
)
@click.option(
    "--garment-views",
    type=click.IntRange(0),
    default=2,
    show_default=True,
    help="Shopper-like photos (one garment with some background) per top and per bottom of each annotated look.",
)
@click.option(
    "--photo-fraction",
    type=float,
    default=0.15,
    show_default=True,
    help="Share of single-garment photos used (less is faster on a CPU).",
)
@click.option("--epochs", type=click.IntRange(1), default=5, show_default=True)
def train_detector_cmd(
    data_dir: Path,
    models_dir: Path,
    device: str,
    threads: int,
    look_views: int,
    photo_views: int,
    tag_views: int,
    garment_views: int,
    photo_fraction: float,
    epochs: int,
) -> None:
    """Train the garment detector head (upper, lower, full-body boxes and presence) on the frozen backbone.

    About 5 minutes on 2 CPU cores, most of it computing the backbone maps of the training views
    (cached under .cache/vision for the next run)."""
    from shared.models import detector as detector_mod
    from shared.models.backbone import shared_backbone
    from shared.models.vision_training import evaluate_detection, evaluate_query_detection, train_detector

    dev = _setup(data_dir, threads, device)
    state, params, data = train_detector(
        data_dir,
        device=dev,
        look_views=look_views,
        photo_views=photo_views,
        photo_fraction=photo_fraction,
        tag_views=tag_views,
        garment_views=garment_views,
        epochs=epochs,
    )
    detector = detector_mod.GarmentDetector(
        detector_mod.head_from_state(state), shared_backbone(), VERSIONS["detector"]
    )
    metrics = {
        "val": evaluate_detection(data_dir, "val", device=dev, detector=detector),
        "val_query_photos": evaluate_query_detection(data_dir, "val", detector=detector),
    }
    _save("detector", state, params, data, metrics, models_dir)


@click.command("category")
@data_option
@models_option
@device_option
@threads_option
@click.option("--views", type=int, default=2, show_default=True, help="Views per garment (1 clean + perturbed).")
@click.option(
    "--photo-fraction",
    type=float,
    default=0.2,
    show_default=True,
    help="Share of single-garment photos used (more is better, and slower on a CPU).",
)
@click.option("--epochs", type=int, default=40, show_default=True)
def train_category_cmd(
    data_dir: Path, models_dir: Path, device: str, threads: int, views: int, photo_fraction: float, epochs: int
) -> None:
    """Train the category head (top, bottom, full_body, other) on garments/ and outfits/ photos and look crops."""
    import torch

    from shared.models import category as category_mod
    from shared.models.vision_training import evaluate_category, train_category

    dev = _setup(data_dir, threads, device)
    state, params, data = train_category(
        data_dir, device=dev, views=views, photo_fraction=photo_fraction, epochs=epochs
    )
    head = category_mod.CategoryHead(**state["config"])
    head.load_state_dict({k: v.float() for k, v in state["weights"].items()})
    model = category_mod.CategoryModel(head, VERSIONS["category"])
    metrics = {"val": evaluate_category(data_dir, "val", device=dev, model=model)}
    torch.set_num_threads(threads)
    _save("category", state, params, data, metrics, models_dir)


@click.command("embedding")
@data_option
@models_option
@device_option
@threads_option
@click.option("--views", type=int, default=2, show_default=True, help="Views per garment (1 clean + perturbed).")
@click.option(
    "--photo-fraction",
    type=float,
    default=0.2,
    show_default=True,
    help="Share of single-garment photos used (more is better, and slower on a CPU).",
)
@click.option("--epochs", type=int, default=30, show_default=True)
def train_embedding_cmd(
    data_dir: Path, models_dir: Path, device: str, threads: int, views: int, photo_fraction: float, epochs: int
) -> None:
    """Train the appearance-embedding projection (CNN + Lab colour -> 256-d) with augmentation invariance."""
    from shared.models import embedding as embedding_mod
    from shared.models.detector import load_detector
    from shared.models.vision_training import evaluate_retrieval, train_embedding

    dev = _setup(data_dir, threads, device)
    state, params, data = train_embedding(
        data_dir, device=dev, views=views, photo_fraction=photo_fraction, epochs=epochs
    )
    projection = embedding_mod.EmbeddingProjection(**state["config"])
    projection.load_state_dict({k: v.float() for k, v in state["weights"].items()})
    model = embedding_mod.EmbeddingModel(projection, VERSIONS["embedding"])
    metrics = {
        "val": evaluate_retrieval(data_dir, "val", device=dev, detector=load_detector(models_dir), embedding=model)
    }
    _save("embedding", state, params, data, metrics, models_dir)


def _store_search(tmp: Path) -> Any:
    """A search through a fresh embedded look store (Qdrant Edge, default HNSW search) in `tmp`, or
    None when the store package is unavailable (exact numpy search stands in)."""
    try:
        from shared.store import EdgeLookStore
        from shared.store.model import LookPoint, LookRecord, look_id_for
    except ImportError:
        return None
    import numpy as np

    def search(name: str, kind: str, lib_ids: Any, lib_vectors: Any, queries: Any, k: int) -> Any:
        store = EdgeLookStore(tmp / f"{name}-{kind}")
        try:
            store.ensure(f"eval-{name}", (int(lib_vectors.shape[1]), 1))
            ids = [look_id_for(f"eval-look-{int(i)}".encode()) for i in lib_ids]
            index = {look_id: int(i) for look_id, i in zip(ids, lib_ids, strict=True)}
            store.upsert([LookPoint(LookRecord(look_id=look_id, image_path=f"{int(i)}", status="approved"),
                                    {kind: vector})
                          for look_id, i, vector in zip(ids, lib_ids, lib_vectors, strict=True)])
            ranked = np.full((len(queries), k), -1, dtype=np.int64)
            for row, vector in enumerate(queries):
                for col, hit in enumerate(store.search(kind, vector, limit=k)):
                    ranked[row, col] = index[hit.look.look_id]
            return ranked
        finally:
            store.close()

    return search


@click.command("vision")
@data_option
@models_option
@device_option
@threads_option
@click.option(
    "--split",
    type=click.Choice(["all", "val"]),
    default="all",
    show_default=True,
    help="val: only the dev validation split that training never saw (on ../shared/data).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the figures as JSON here.",
)
def eval_vision_cmd(
    data_dir: Path, models_dir: Path, device: str, threads: int, split: str, json_path: Path | None
) -> None:
    """Detection hit rate and IoU, category accuracy, and perturbed-crop retrieval recall, with baselines."""
    from shared.models.category import load_category
    from shared.models.detector import load_detector
    from shared.models.embedding import load_embedding
    from shared.models.vision_data import Split
    from shared.models.vision_training import (
        evaluate_category,
        evaluate_detection,
        evaluate_query_detection,
        evaluate_retrieval,
    )

    dev = _setup(data_dir, threads, device)
    detector, category, embedding = load_detector(models_dir), load_category(models_dir), load_embedding(models_dir)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "data": str(data_dir),
        "split": split,
        "versions": {
            "detector": detector and detector.version,
            "category": category and category.version,
            "embedding": embedding and embedding.version,
        },
    }
    chosen = cast(Split, split)
    report["detection"] = evaluate_detection(data_dir, chosen, device=dev, detector=detector)
    report["query_detection"] = evaluate_query_detection(data_dir, chosen, detector=detector)
    report["category"] = evaluate_category(data_dir, chosen, device=dev, model=category)
    with tempfile.TemporaryDirectory() as tmp:
        report["retrieval"] = evaluate_retrieval(
            data_dir, chosen, device=dev, detector=detector, embedding=embedding, search=_store_search(Path(tmp))
        )
    report["retrieval"]["search"] = "qdrant-edge store (fresh, HNSW)" if _store_search(Path(".")) else "numpy exact"
    report["seconds"] = round(time.perf_counter() - started, 1)
    _print_report(report)
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {json_path}")


def _seed_list(_ctx: click.Context, _param: click.Parameter, value: str) -> list[int]:
    try:
        seeds = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers, e.g. 1234,1,2") from None
    if not seeds:
        raise click.BadParameter("give at least one seed, e.g. --seeds 1234,1,2")
    return seeds


@click.command("detector-seeds")
@data_option
@device_option
@threads_option
@click.option("--seeds", default="1234,1,2", show_default=True, callback=_seed_list,
              help="Training seeds, comma-separated (1234 is the shipped artifact's).")
@click.option("--split", type=click.Choice(["val", "train", "all"]), default="val", show_default=True,
              help="Looks each trained head is scored on.")
@click.option("--look-views", type=click.IntRange(1), default=4, show_default=True, help="As for `train detector`.")
@click.option("--garment-views", type=click.IntRange(0), default=2, show_default=True, help="As for `train detector`.")
@click.option("--tag-views", type=click.IntRange(0, 2), default=2, show_default=True, help="As for `train detector`.")
@click.option("--photo-fraction", type=click.FloatRange(0.0, 1.0), default=0.15, show_default=True,
              help="As for `train detector`.")
@click.option("--epochs", type=click.IntRange(1), default=5, show_default=True, help="As for `train detector`.")
@click.option("--edge-weight", type=click.FloatRange(0.0), default=0.1, show_default=True,
              help="Weight of the edge-distribution loss against the box losses.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the figures as JSON here.",
)
def eval_detector_seeds_cmd(
    data_dir: Path, device: str, threads: int, seeds: list[int], split: str, look_views: int, garment_views: int,
    tag_views: int, photo_fraction: float, epochs: int, edge_weight: float, json_path: Path | None,
) -> None:
    """Train the detector head once per seed (the `train detector` recipe, options alike) and print each
    seed's detection hit rates: the spread a change of recipe must beat. Writes no artifact.

    About 1-2 minutes a seed on 2 CPU cores once the backbone maps are cached (`train detector`
    caches them; a new --look-views, --garment-views, --tag-views or --photo-fraction computes new ones).
    """
    from shared.models.vision_data import Split
    from shared.models.vision_training import detector_seed_spread

    dev = _setup(data_dir, threads, device)
    try:
        report = detector_seed_spread(
            data_dir, seeds, cast(Split, split), device=dev, look_views=look_views, garment_views=garment_views,
            tag_views=tag_views, photo_fraction=photo_fraction, epochs=epochs, edge_weight=edge_weight,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"detector trained on {data_dir} (split train), scored on split {split}; recipe {report['recipe']}")
    click.echo(f"{'seed':>8}  top hit  top IoU  bottom hit  bottom IoU")
    for r in report["runs"]:
        click.echo(f"{r['seed']:>8}  {_fmt(r['top_hit_rate']):>7}  {_fmt(r['top_mean_iou']):>7}  "
                   f"{_fmt(r['bottom_hit_rate']):>10}  {_fmt(r['bottom_mean_iou']):>10}")
    for stat in ("mean", "min", "max"):
        cells = [_fmt(report["summary"].get(k, {}).get(stat)) for k in
                 ("top_hit_rate", "top_mean_iou", "bottom_hit_rate", "bottom_mean_iou")]
        click.echo(f"{stat:>8}  {cells[0]:>7}  {cells[1]:>7}  {cells[2]:>10}  {cells[3]:>10}")
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {json_path}")


# How many garment labels the table shows per kind (most frequent first); --json has them all.
LABELS_SHOWN = 8


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _print_report(report: dict[str, Any]) -> None:
    click.echo(f"vision eval on {report['data']} (split {report['split']}), versions {report['versions']}")
    det = report["detection"]
    click.echo(
        f"\ndetection ({det['looks']} annotated looks)   hit@IoU0.5  mean IoU   rule hit  rule IoU"
        "  missed presence  false presence"
    )
    for kind in ("top", "bottom", "full_body"):
        e = det[kind]
        click.echo(
            f"  {kind:<9} n={e['n']:<5}               {_fmt(e.get('hit_rate')):>9}  "
            f"{_fmt(e.get('mean_iou')):>8}  {_fmt(e.get('rule_hit_rate')):>8}  {_fmt(e.get('rule_mean_iou')):>8}"
            f"  {_fmt(e.get('missed_presence')):>15}  {_fmt(e.get('false_presence_rate')):>14}"
        )
    for kind in ("top", "bottom"):
        if "iou_histogram" in det[kind]:
            bins = ", ".join(f"{k}: {v}" for k, v in det[kind]["iou_histogram"].items())
            click.echo(f"  {kind} boxes by IoU with the truth: {bins}")
        if "by_label" in det[kind]:
            labels = list(det[kind]["by_label"].items())
            groups = ", ".join(f"{name} {g['hits']}/{g['n']}" for name, g in labels[:LABELS_SHOWN])
            more = len(labels) - LABELS_SHOWN
            rest = f", and {more} rarer labels (all in --json)" if more > 0 else ""
            click.echo(f"  {kind} hits by label: {groups}{rest}")
        if "edges" in det[kind]:
            edges = det[kind]["edges"]
            fixed = ", ".join(f"{name} {n}" for name, n in edges["fixed_by_true_edge"].items())
            errors = ", ".join(f"{name} {v:.3f}" for name, v in edges["mean_abs_error"].items())
            click.echo(f"  {kind} misses (IoU < 0.5: {edges['misses']}) that the true edge alone would make hits: "
                       f"{fixed}; mean edge error (fraction of the photo): {errors}")
    query = report["query_detection"]
    click.echo(
        "\nquery photos of a top or bottom (loose: 5-35% background; tight: the box's crop)  "
        "hit@IoU0.5  mean IoU  whole-photo hit  whole-photo IoU"
    )
    for key in ("top", "bottom", "top_tight", "bottom_tight"):
        e = query[key]
        label = key.replace("_tight", " tight") if key.endswith("_tight") else f"{key} loose"
        click.echo(
            f"  {label:<13} n={e['n']:<5}{'':<48}{_fmt(e.get('hit_rate')):>9}  {_fmt(e.get('mean_iou')):>8}"
            f"  {_fmt(e['whole_photo_hit_rate']):>15}  {_fmt(e['whole_photo_mean_iou']):>15}"
        )
    cat = report["category"]
    if "accuracy" in cat:
        click.echo(
            f"\ncategory ({cat['photos']} photos): accuracy {cat['accuracy']:.3f}, top vs bottom "
            f"{cat['top_vs_bottom_accuracy']:.3f} (n={cat['top_vs_bottom_n']})"
        )
        click.echo("  truth \\ pred " + "".join(f"{k:>11}" for k in cat["kinds"]))
        for k, row in zip(cat["kinds"], cat["confusion"], strict=True):
            click.echo(f"  {k:<12} " + "".join(f"{v:>11}" for v in row))
    elif not cat["photos"]:
        click.echo(f"\ncategory: not scored, {report['data']} has no single-garment photos in split {report['split']} "
                   "(garments/garments.csv, outfits/products.csv): pass --data pointing at a folder laid out like "
                   "../shared/data")
    else:
        click.echo("\ncategory: not scored, no category artifact: run `lookbook train category --data ../shared/data`")
    ret = report["retrieval"]
    click.echo(f"\nretrieval of perturbed crops against {ret['library_looks']} looks   recall@1  recall@10  dim")
    for kind in ("top", "bottom"):
        e = ret[kind]
        for name in ("embedding", "raw_backbone"):
            if name in e:
                r = e[name]
                click.echo(
                    f"  {kind:<7} {name:<13} ({e['queries']} queries)        {r['recall@1']:.3f}     "
                    f"{r['recall@10']:.3f}  {r['dim']}"
                )
    click.echo(f"\n({report['seconds']} s)")


@click.command("vision")
@models_option
@threads_option
@data_option
@click.option("--repeat", type=int, default=20, show_default=True, help="Timed runs of each measurement.")
def bench_vision_cmd(models_dir: Path, threads: int, data_dir: Path, repeat: int) -> None:
    """Analyze latency of a 640-px look photo vs the bare backbone forward for the same number of crops."""
    import torch
    from PIL import Image

    from shared.models.backbone import Squash, shared_backbone
    from shared.models.pipeline import VisionPipeline
    from shared.models.vision_data import load_looks

    torch.set_num_threads(threads)
    looks = [lk for lk in load_looks(data_dir) if {"top", "bottom"} <= set(lk.boxes)][:8]
    if not looks:
        raise click.ClickException(f"no annotated looks under {data_dir}: pass --data pointing at ../shared/data")
    photos = []
    for lk in looks:
        with Image.open(lk.path) as raw:
            im = raw.convert("RGB")
        scale = 640 / max(im.size)
        photos.append(im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC))
    pipeline = VisionPipeline(models_dir, torch_threads=threads)
    backbone, squash = shared_backbone(), Squash()
    crops = [photos[0].crop((100, 100, 300, 350)), photos[0].crop((100, 300, 300, 600))]
    batch = torch.stack([squash(c) for c in crops])

    def bare() -> None:
        with torch.inference_mode():
            backbone.forward_head(backbone.forward_features(batch), pre_logits=True)

    def analyze(i: int, compat: bool) -> None:
        pipeline.analyze(photos[i % len(photos)], with_compat=compat)

    for _ in range(3):
        bare()
        analyze(0, True)
    bare_t: list[float] = []
    ana_t: list[float] = []
    ana_c: list[float] = []
    # Interleaved, so that load from other processes on the machine hits both alike.
    for i in range(repeat):
        for out, compat in ((bare_t, None), (ana_t, False), (ana_c, True)):
            start = time.perf_counter()
            if compat is None:
                bare()
            else:
                analyze(i, compat)
            out.append(time.perf_counter() - start)
    med = {k: statistics.median(v) * 1000 for k, v in (("bare", bare_t), ("analyze", ana_t), ("compat", ana_c))}
    click.echo(f"model {pipeline.model_version}, {threads} torch threads, {repeat} runs, 640-px look photos")
    click.echo(f"  bare backbone forward, 2 crops at 224: {med['bare']:.1f} ms (median)")
    click.echo(
        f"  Analyze (detect + embed 2 crops + category + colour): {med['analyze']:.1f} ms "
        f"= {med['analyze'] / med['bare']:.2f}x"
    )
    click.echo(f"  Analyze with compat projections: {med['compat']:.1f} ms = {med['compat'] / med['bare']:.2f}x")


def register(main: click.Group) -> None:
    main.commands["train"].add_command(train_detector_cmd)  # type: ignore[attr-defined]
    main.commands["train"].add_command(train_category_cmd)  # type: ignore[attr-defined]
    main.commands["train"].add_command(train_embedding_cmd)  # type: ignore[attr-defined]
    main.commands["eval"].add_command(eval_vision_cmd)  # type: ignore[attr-defined]
    main.commands["eval"].add_command(eval_detector_seeds_cmd)  # type: ignore[attr-defined]
    main.commands["bench"].add_command(bench_vision_cmd)  # type: ignore[attr-defined]
