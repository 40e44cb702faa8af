"""`lookbook train compat` and `lookbook eval compat`: the learned top–bottom compatibility model."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

# Spinning OpenMP workers on a CPU shared with other jobs made a training step 8x slower here; this
# must be set before torch loads, which these commands do lazily.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DEFAULT_DATA = Path("../shared/data")
METHODS = ("compat", "random", "backbone_cosine", "colour_histogram")
COLUMNS = (
    ("fitb_top_to_bottom_popularity", "FITB t>b pop"),
    ("fitb_top_to_bottom_uniform", "FITB t>b unif"),
    ("fitb_bottom_to_top_popularity", "FITB b>t pop"),
    ("fitb_bottom_to_top_uniform", "FITB b>t unif"),
    ("pair_auc", "pair AUC"),
)


def _models_dir(models_dir: Path | None) -> Path:
    if models_dir is not None:
        return models_dir
    from shared.settings import load_settings

    return load_settings().models_dir


def _threads() -> None:
    import torch

    from shared.settings import load_settings

    # The machine is shared; two threads keep a long job from starving everyone else.
    torch.set_num_threads(getattr(load_settings(), "torch_threads", 0) or 2)


def table(results: dict[str, dict[str, float]]) -> str:
    """Methods as rows, the five figures as columns."""
    lines = [f"{'method':<18}" + "".join(f"{title:>15}" for _, title in COLUMNS)]
    for method, metrics in results.items():
        lines.append(f"{method:<18}" + "".join(f"{metrics[key]:>15.4f}" for key, _ in COLUMNS))
    return "\n".join(lines)


@click.command(name="compat")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=DEFAULT_DATA,
    show_default=True,
    help="Folder laid out like ../shared/data (uses outfits/).",
)
@click.option(
    "--out",
    "models_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Models folder the `compat` artifact goes to; default LOOKBOOK_MODELS_DIR.",
)
@click.option("--epochs", default=None, type=click.IntRange(1, 500), help="Training epochs (default: the tuned value).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of initialisation, batches and views.")
@click.option(
    "--split-seed",
    default=7,
    show_default=True,
    type=int,
    help="Seed of the top-disjoint validation split (recorded in the manifest).",
)
@click.option(
    "--val-fraction",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0.0, 0.5),
    help="Share of TOPS held out for validation; their outfits are never trained on.",
)
@click.option("--version", default="compat-1", show_default=True, help="Version recorded in the manifest.")
def train_compat_command(
    data_dir: Path,
    models_dir: Path | None,
    epochs: int | None,
    seed: int,
    split_seed: int,
    val_fraction: float,
    version: str,
) -> None:
    """Train the compatibility model on the stylist outfits in DATA/outfits and write the `compat` artifact.

    Positive pairs are a top and a bottom of the same outfit; in-batch negatives follow garment
    popularity. Tops of a validation split never enter training, so its figures mimic held-out outfits.
    Backbone features are cached under .cache/compat, so a second run skips the image pass.
    """
    _threads()
    from dataclasses import asdict, replace

    from shared.models.artifacts import save_artifact
    from shared.models.backbone import build_backbone
    from shared.models.compat import MODEL_NAME
    from shared.models.compat_data import OutfitDataError, build_benchmark, load_outfits
    from shared.models.compat_training import (
        TrainParams,
        baseline_scorers,
        evaluate_scorer,
        prepare,
        train_compat,
        training_manifest_data,
    )

    params = TrainParams(seed=seed, split_seed=split_seed, val_fraction=val_fraction)
    if epochs is not None:
        params = replace(params, epochs=epochs)
    try:
        data = load_outfits(data_dir)
    except OutfitDataError as exc:
        raise click.ClickException(str(exc)) from None
    prepared = prepare(data, params)
    backbone = build_backbone()
    result = train_compat(prepared, backbone, params, eval_every=4)
    metrics: dict[str, Any] = {"history": result.history, "train_seconds": round(result.seconds, 1)}
    if prepared.val_pairs:
        bench = build_benchmark(prepared.val_pairs, seed=params.seed, known_pairs=data.pairs)
        from shared.models.compat_training import net_vectors, pair_scorer

        figures = {"compat": evaluate_scorer(bench, pair_scorer(net_vectors(result.net, prepared)))}
        for name, scorer in baseline_scorers(prepared.features, prepared.index, params.seed).items():
            figures[name] = evaluate_scorer(bench, scorer)
        metrics["val"] = {k: {m: round(v, 4) for m, v in row.items()} for k, row in figures.items()}
        click.echo(table(figures))
    # The config as trained (with the attribute vocabularies' sizes), not the default it started from.
    params_record = {**asdict(params), "views": list(params.views), "config": asdict(result.net.config)}
    path = save_artifact(
        MODEL_NAME,
        result.net.serving_state(backbone),
        version=version,
        training_data=training_manifest_data(data, params, prepared),
        params=params_record,
        metrics=metrics,
        models_dir=_models_dir(models_dir),
    )
    size = (path / "model.pt").stat().st_size
    click.echo(
        f"\nwrote {path} ({size / 2**20:.1f} MiB, version {version}); evaluate with "
        f"`lookbook eval compat --data {data_dir} --split val`"
    )


@click.command(name="compat")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=DEFAULT_DATA,
    show_default=True,
    help="Folder laid out like ../shared/data (uses outfits/).",
)
@click.option(
    "--split",
    type=click.Choice(["all", "val"]),
    default="all",
    show_default=True,
    help="all: every outfit in DATA (held-out data); val: only the outfits whose tops the "
    "model's training held out (the split seed comes from the artifact's manifest).",
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the `compat` artifact is; default LOOKBOOK_MODELS_DIR.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the negatives drawn.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the figures as JSON to this file ('-' for stdout).",
)
def eval_compat_command(data_dir: Path, split: str, models_dir: Path | None, seed: int, json_path: Path | None) -> None:
    """Evaluate the compatibility model and the baselines on the outfits in DATA.

    FITB: the true partner among it and 3 garments never seen with the query, drawn uniformly or in
    proportion to how often each occurs in true pairs (popularity-matched, the figure that counts),
    top->bottom and bottom->top. Pair AUC: true pairs against the popularity-matched negatives.
    Baselines in the same run: random, cosine of raw backbone features, colour-histogram overlap.
    """
    _threads()
    import numpy as np

    from shared.models.artifacts import load_artifact
    from shared.models.compat import MODEL_NAME, load_compat
    from shared.models.compat_data import OutfitDataError, build_benchmark, load_outfits, split_by_top
    from shared.models.compat_features import extract_features
    from shared.models.compat_training import baseline_scorers, evaluate_scorer, pair_scorer

    root = _models_dir(models_dir)
    model = load_compat(root)
    loaded = load_artifact(MODEL_NAME, root)
    if model is None or loaded is None:
        raise click.ClickException(
            f"no compat artifact in {root}: train one with "
            "`lookbook train compat --data ../shared/data` or pass --models-dir"
        )
    manifest = loaded[1]
    try:
        data = load_outfits(data_dir)
    except OutfitDataError as exc:
        raise click.ClickException(str(exc)) from None
    trained_on = manifest.get("training_data", {})
    pairs = data.pairs
    if split == "val":
        info = trained_on.get("split", {})
        if trained_on.get("outfits_csv_sha256") != data.outfits_sha256:
            raise click.ClickException(
                f"{data.root}/outfits.csv is not the file the model was trained on, so it "
                "has no validation split: use --split all"
            )
        if not info.get("val_fraction"):
            raise click.ClickException(
                "the artifact was trained without a validation split: use --split all on a held-out data directory"
            )
        pairs = split_by_top(data.pairs, val_fraction=float(info["val_fraction"]), seed=int(info["seed"]))[1]
    elif trained_on.get("outfits_csv_sha256") == data.outfits_sha256:
        click.echo("warning: the model was trained on these outfits; for dev figures use --split val", err=True)
    try:
        bench = build_benchmark(pairs, seed=seed, known_pairs=data.pairs)
    except OutfitDataError as exc:
        raise click.ClickException(str(exc)) from None
    items = sorted({t for t, _ in pairs} | {b for _, b in pairs})
    index = {pid: i for i, pid in enumerate(items)}
    features = extract_features([data.products[pid].image for pid in items], (0,), backbone=model.backbone)
    vectors: dict[str, np.ndarray] = {}
    is_top = np.array([data.products[pid].category == "Tops" for pid in items])
    for kind, chosen in (("top", np.flatnonzero(is_top)), ("bottom", np.flatnonzero(~is_top))):
        for start in range(0, len(chosen), 128):
            chunk = chosen[start : start + 128]
            vecs = model.project_features(features.stem[0, chunk].astype(np.float32), features.colour[0, chunk], kind)  # type: ignore[arg-type]
            vectors.update({items[i]: v for i, v in zip(chunk, vecs, strict=True)})
    results = {"compat": evaluate_scorer(bench, pair_scorer(vectors))}
    for name, scorer in baseline_scorers(features, index, seed).items():
        results[name] = evaluate_scorer(bench, scorer)
    report = {
        "data": str(data.root.resolve()),
        "split": split,
        "seed": seed,
        "model_version": model.version,
        "pairs": len(pairs),
        "skipped_questions": bench.skipped,
        "tops": len({t for t, _ in pairs}),
        "bottoms": len({b for _, b in pairs}),
        "negatives": 3,
        "auc_negatives": "popularity-matched top->bottom negatives",
        "results": {k: {m: round(v, 4) for m, v in row.items()} for k, row in results.items()},
    }
    click.echo(
        f"{report['pairs']} pairs ({report['tops']} tops, {report['bottoms']} bottoms), split={split}, "
        f"seed={seed}, model {model.version}\n"
    )
    click.echo(table(results))
    text = json.dumps(report, indent=2)
    if json_path is not None and str(json_path) == "-":
        sys.stdout.write(text + "\n")
    elif json_path is not None:
        json_path.write_text(text + "\n")
        click.echo(f"\nwrote {json_path}")
    else:
        click.echo("\n" + text)


def register(main: click.Group) -> None:
    main.commands["train"].add_command(train_compat_command)  # type: ignore[attr-defined]
    main.commands["eval"].add_command(eval_compat_command)  # type: ignore[attr-defined]
