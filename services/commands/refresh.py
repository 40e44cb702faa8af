"""`lookbook library refresh|watch|quarantine`: refresh the look library from a source and watch its jobs."""

from __future__ import annotations

import sys
import threading
from typing import Any

import click


def _settings() -> Any:
    from shared.settings import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _watch(jobs: Any, job_id: str, *, stop: threading.Event | None = None) -> Any:
    """Shows a job's progress as a bar until it finishes; returns the last reading."""
    from tqdm import tqdm

    from services.workers.embedded import wait_for

    with tqdm(desc=f"refresh {job_id[:8]}", unit="look", file=sys.stderr) as bar:

        def show(progress: Any) -> None:
            bar.total = progress.total
            bar.set_postfix(
                done=progress.done,
                quarantined=progress.quarantined,
                failed=progress.failed,
                skipped=progress.skipped,
                retries=progress.retries,
                refresh=False,
            )
            bar.update(progress.handled - bar.n)

        return wait_for(jobs, job_id, on_progress=show, stop=stop)


def _summary(progress: Any, jobs: Any) -> None:
    click.echo(
        f"job {progress.job_id}: {progress.state}; {progress.done} ingested, {progress.skipped} already "
        f"in the library, {progress.quarantined} quarantined, {progress.failed} failed, "
        f"{progress.retries} retries"
    )
    if progress.error:
        click.echo(f"error: {progress.error}", err=True)
    for item in jobs.quarantined():
        if item.job_id == progress.job_id:
            click.echo(f"quarantined {item.path}: {item.reason}", err=True)


@click.command()
@click.argument("source")
@click.option("--no-wait", is_flag=True, help="Queue the refresh, print its job id and return (scale-out).")
def refresh(source: str, no_wait: bool) -> None:
    """Add the looks of SOURCE not yet in the library: a directory of images, or a JSON/CSV manifest
    (image paths with optional tags, source, attribution). Shows the job's progress as a bar.

    Scale-out (LOOKBOOK_MODE=scale-out): the Celery workers do the work over Redis and this command
    watches the job. Embedded (the default): the work runs in this process, so the all-in-one server
    must not be running on the same data directory (start the import from the console instead).
    """
    from shared.settings import Mode

    settings = _settings()
    if settings.mode is Mode.SCALE_OUT:
        import redis

        from services.workers.embedded import CeleryLibrary

        try:
            runner = CeleryLibrary(settings)
            job_id = runner.start(source)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise click.ClickException(
                f"Redis at LOOKBOOK_REDIS_URL is not reachable ({exc}): start Redis or fix the URL"
            ) from None
        click.echo(f"job {job_id} queued; watch it with `lookbook library watch {job_id}`", err=True)
        if no_wait:
            click.echo(job_id)
            return
        _summary(_watch(runner.jobs, job_id), runner.jobs)
        return
    from services.workers.embedded import EmbeddedLibrary
    from shared.library import SourceError
    from shared.store import StoreUnavailableError, open_store

    try:
        store = open_store(settings)
    except StoreUnavailableError as exc:
        raise click.ClickException(f"{exc} (in embedded mode, start the import from the editor console)") from None
    library = EmbeddedLibrary(settings, store=store)
    try:
        try:
            job_id = library.start(source)
        except SourceError as exc:
            raise click.ClickException(str(exc)) from None
        _summary(_watch(library.jobs, job_id), library.jobs)
    finally:
        library.close()
        store.close()


@click.command()
@click.argument("job_id")
def watch(job_id: str) -> None:
    """Show the progress of refresh JOB_ID (scale-out: jobs live in Redis) until it finishes."""
    settings = _settings()
    if not settings.redis_url:
        raise click.ClickException(
            "jobs of the embedded mode live in the serving process: watch them in the editor console, "
            "or set LOOKBOOK_REDIS_URL to watch scale-out jobs"
        )
    from services.workers.jobs import RedisJobBoard

    jobs = RedisJobBoard.from_url(settings.redis_url)
    if jobs.progress(job_id) is None:
        raise click.ClickException(f"no job {job_id} in Redis: check the id (jobs expire after 7 days)")
    _summary(_watch(jobs, job_id), jobs)


@click.command()
def quarantine() -> None:
    """List the images refreshes kept out of the library, with the reason (scale-out: from Redis)."""
    settings = _settings()
    from services.workers.jobs import MemoryJobBoard, RedisJobBoard

    jobs: Any = (
        RedisJobBoard.from_url(settings.redis_url)
        if settings.redis_url
        else MemoryJobBoard(settings.data_dir / "quarantine.json")
    )
    items = jobs.quarantined()
    for item in items:
        click.echo(f"{item.path}\t{item.reason}")
    click.echo(f"{len(items)} quarantined", err=True)


def register(main: click.Group) -> None:
    group = main.commands.get("library")
    if not isinstance(group, click.Group):
        group = click.Group("library", help="Fill and inspect the look library.")
        main.add_command(group)
    for command in (refresh, watch, quarantine):
        group.add_command(command)
