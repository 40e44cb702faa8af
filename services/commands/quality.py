"""`lookbook train quality` and `lookbook eval quality`: train and measure the learned low-quality filter."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import click

DEFAULT_DATA = Path("../shared/data")


def _settings_models_dir(models_dir: Path | None) -> Path:
    if models_dir is not None:
        return models_dir
    from shared.settings import load_settings

    return load_settings().models_dir


def _threads() -> None:
    import torch

    from shared.settings import load_settings

    # The machine is shared; two threads keep a long job from starving everyone else.
    torch.set_num_threads(load_settings().torch_threads or 2)


def _table(metrics: dict[str, Any]) -> str:
    lines = [
        f"{'measure':<28}{'value':>10}",
        f"{'images (good / bad)':<28}{metrics['n_good']:>5} / {metrics['n_bad']}",
        f"{'AUC':<28}{metrics['auc']:>10.4f}",
        f"{'threshold':<28}{metrics['threshold']:>10.4f}",
        f"{'precision (accepted looks)':<28}{metrics['precision']:>10.4f}",
        f"{'recall (good looks kept)':<28}{metrics['recall']:>10.4f}",
        "",
        f"{'reason':<16}{'n':>6}{'rejected':>10}{'named':>8}",
    ]
    for reason, row in metrics["reasons"].items():
        lines.append(f"{reason:<16}{row['n']:>6}{row['recall']:>10.4f}{row['named']:>8.4f}")
    lines += ["", f"{'origin/degradation':<24}{'n':>6}{'accepted':>10}"]
    for origin, row in metrics["by_origin"].items():
        lines.append(f"{origin:<24}{row['n']:>6}{row['accepted']:>10.4f}")
    return "\n".join(lines)


@click.command(name="quality")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=DEFAULT_DATA,
    show_default=True,
    help="Folder laid out like ../shared/data.",
)
@click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Extra labels, JSONL (e.g. from `lookbook curation export-labels`); format in shared/models/quality.py.",
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the artifact goes; default LOOKBOOK_MODELS_DIR.",
)
@click.option(
    "--version",
    "version",
    default=None,
    help="Artifact version; default quality-1, or quality-1-editor-<hash> with --labels.",
)
@click.option(
    "--degradations-per-look",
    default=2,
    show_default=True,
    type=click.IntRange(1, 5),
    help="Degraded copies drawn per training look (validation always uses all five).",
)
@click.option(
    "--max-garments",
    default=400,
    show_default=True,
    type=click.IntRange(1),
    help="Garment photos sampled (fixed seed) for training.",
)
@click.option(
    "--max-products",
    default=400,
    show_default=True,
    type=click.IntRange(1),
    help="Product shots sampled (fixed seed) for training.",
)
def train_quality(
    data_dir: Path,
    labels: Path | None,
    models_dir: Path | None,
    version: str | None,
    degradations_per_look: int,
    max_garments: int,
    max_products: int,
) -> None:
    """Train the low-quality filter on DATA (looks are positives; garment photos, product shots and
    degraded looks are negatives) and write the versioned `quality` artifact.

    Backbone features are cached under .cache/quality, so a second run takes seconds.
    """
    _threads()
    from shared.models.artifacts import save_artifact
    from shared.models.quality_training import SEED, TARGET_PRECISION, train

    models_dir = _settings_models_dir(models_dir)
    try:
        result = train(
            data_dir,
            labels=labels,
            degradations_per_look=degradations_per_look,
            max_garments=max_garments,
            max_products=max_products,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if version is None:
        version = "quality-1"
        if labels is not None:
            version += "-editor-" + hashlib.sha256(labels.read_bytes()).hexdigest()[:8]
    training_data: dict[str, Any] = {"data": str(data_dir.resolve()), "counts": result.counts}
    if labels is not None:
        training_data["labels"] = {
            "path": str(labels.resolve()),
            "sha256": hashlib.sha256(labels.read_bytes()).hexdigest(),
        }
    path = save_artifact(
        "quality",
        result.state,
        version=version,
        training_data=training_data,
        params={
            "seed": SEED,
            "C": result.metrics["C"],
            "target_precision": TARGET_PRECISION,
            "degradations_per_look": degradations_per_look,
            "max_garments": max_garments,
            "max_products": max_products,
            "features": "lite0 pooled 1280 (squash224) + image stats",
            "head": "logistic regression per output, class-balanced",
        },
        metrics={"val": result.metrics["val"]},
        models_dir=models_dir,
    )
    click.echo(_table(result.metrics["val"]))
    click.echo(
        f"\nwrote {path} (version {version}); evaluate with `lookbook eval quality --data {data_dir} --split val`"
    )


@click.command(name="quality")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=DEFAULT_DATA,
    show_default=True,
    help="Folder laid out like ../shared/data.",
)
@click.option(
    "--split",
    type=click.Choice(["auto", "all", "val", "train"]),
    default="auto",
    show_default=True,
    help="auto: the val split when DATA is the training data, else ALL of DATA.",
)
@click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Also evaluate these JSONL labels (their part in the chosen split).",
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the artifact is; default LOOKBOOK_MODELS_DIR.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the figures as JSON to this file ('-' for stdout).",
)
def eval_quality(
    data_dir: Path, split: str, labels: Path | None, models_dir: Path | None, json_path: Path | None
) -> None:
    """Evaluate the quality filter: AUC, precision and recall of accepted looks at the operating
    threshold, and recall per reason, on DATA (every look plus its five degraded copies, garment
    photos and product shots). Fixed seed; prints a table and JSON."""
    _threads()
    from shared.models.quality import load_quality
    from shared.models.quality_training import build_items, compute_features, evaluate, read_labels

    models_dir = _settings_models_dir(models_dir)
    model = load_quality(models_dir)
    if model is None:
        raise click.ClickException(f"no quality artifact in {models_dir}: run `lookbook train quality` first")
    trained_on = Path(model.manifest.get("training_data", {}).get("data", "")).resolve()
    if split == "auto":
        split = "val" if data_dir.resolve() == trained_on else "all"
    elif split == "all" and data_dir.resolve() == trained_on:
        click.echo("note: DATA is the training data; use --split val for held-out figures", err=True)
    items = build_items(data_dir, split=split)
    if labels is not None:
        items += [it for it in read_labels(labels) if split == "all" or it.split == split]
    if not items or not any(it.good for it in items) or all(it.good for it in items):
        raise click.ClickException(
            f"{data_dir} (split {split}) needs both good and bad images: point --data at "
            "a folder laid out like ../shared/data"
        )
    feats, stats = compute_features(items, desc=f"eval features ({split})")
    metrics = evaluate(model, items, feats, stats)
    report = {"model": model.version, "data": str(data_dir.resolve()), "split": split, **metrics}
    click.echo(f"quality model {model.version} on {data_dir} (split {split})")
    click.echo(_table(metrics))
    text = json.dumps(report, indent=2)
    if json_path is None:
        click.echo(text)
    elif str(json_path) == "-":
        sys.stdout.write(text + "\n")
    else:
        json_path.write_text(text + "\n")
        click.echo(f"wrote {json_path}")


def register(main: click.Group) -> None:
    train_group = main.commands["train"]
    eval_group = main.commands["eval"]
    assert isinstance(train_group, click.Group) and isinstance(eval_group, click.Group)
    train_group.add_command(train_quality)
    eval_group.add_command(eval_quality)
