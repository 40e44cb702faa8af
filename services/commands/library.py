"""`lookbook library import|stats`: fill the embedded look library from a source, and count it."""

from __future__ import annotations

import json
import sys

import click

from services.commands.common import fail, settings_or_exit


@click.command(name="import")
@click.argument("source", type=click.Path(exists=True))
@click.option(
    "--status",
    type=click.Choice(["pending", "approved"]),
    default=None,
    help="Status for looks whose source names none (default: the auto-approve policy).",
)
def import_(source: str, status: str | None) -> None:
    """Import looks from SOURCE: a directory of images, a looks.json, or a JSON/CSV manifest.

    Runs in this process against the embedded store (stop `lookbook serve` first, or use
    `lookbook library refresh`, which hands the work to the running service). A re-run adds nothing:
    look ids come from the image bytes.
    """
    settings = settings_or_exit()
    from dataclasses import replace

    from tqdm import tqdm

    from services.runtime import local_vision, prepare_library
    from shared.library import SourceError, import_looks, read_source
    from shared.store import StoreError, open_store

    try:
        items = read_source(source)
    except SourceError as exc:
        fail(str(exc))
    if status:
        items = [item if item.status else replace(item, status=status) for item in items]
    try:
        store = open_store(settings)
    except StoreError as exc:
        fail(str(exc))
    try:
        vision = local_vision(settings)
        prepare_library(settings, store, vision, import_demo=False)
        with tqdm(items, desc="importing looks", unit="look", file=sys.stderr) as bar:
            report = import_looks(
                items,
                analyzer=vision,
                store=store,
                images_dir=settings.images_dir,
                auto_approve_quality=settings.auto_approve_quality,
                max_image_bytes=settings.max_image_bytes,
                progress=lambda _: bar.update(),
            )
    finally:
        store.close()
    click.echo(f"added {report.added}, already present {report.skipped}, rejected {len(report.rejected)}")
    for path, reason in report.rejected.items():
        click.echo(f"  rejected {path}: {reason}", err=True)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def stats(as_json: bool) -> None:
    """Count the looks of the library by status and source, with a quality histogram."""
    settings = settings_or_exit()
    from shared.store import StoreError, open_store

    try:
        store = open_store(settings)
        try:
            result = store.stats()
        finally:
            store.close()
    except StoreError as exc:
        fail(str(exc))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model_version": result.model_version,
                    "total": result.total,
                    "by_status": result.by_status,
                    "by_source": result.by_source,
                    "quality_histogram": result.quality_histogram,
                },
                indent=2,
            )
        )
        return
    click.echo(f"model version  {result.model_version or '(empty library)'}")
    click.echo(f"looks          {result.total}")
    for name, count in sorted(result.by_status.items()):
        click.echo(f"  {name:<12} {count}")
    click.echo("by source")
    for name, count in sorted(result.by_source.items()):
        click.echo(f"  {name:<24} {count}")


def register(main: click.Group) -> None:
    group = main.commands["library"]
    assert isinstance(group, click.Group)
    group.add_command(import_)
    group.add_command(stats)
