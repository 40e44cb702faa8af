"""Library tasks without Redis: the embedded default runs the same plain functions on a thread of its process.

`import_jobs(settings, ...)` gives the curation service (and the CLI) the right runner for the mode:
in-process when LOOKBOOK_MODE=embedded, Celery over Redis when scale-out. A missing broker in
scale-out is an error; the embedded runner is never picked as a fallback.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from services.workers.jobs import JobBoard, JobProgress, MemoryJobBoard, RedisJobBoard
from services.workers.refresh import (
    LibraryRuntime,
    PermanentError,
    StoreAccess,
    TransientError,
    chunks,
    ingest_looks,
    plan_refresh,
)
from shared.settings import Mode, Settings

log = logging.getLogger(__name__)


class EmbeddedLibrary:
    """Runs refreshes on one background thread of this process, with the workers' retry policy."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Any | None = None,
        analyzer_factory: Callable[[], Any] | None = None,
        jobs: JobBoard | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = LibraryRuntime(
            settings=settings,
            jobs=jobs or MemoryJobBoard(settings.data_dir / "quarantine.json"),
            store=StoreAccess(settings, store=store, held=True),
            analyzer_factory=analyzer_factory,
        )
        # One thread: refreshes queue behind each other, and matching keeps the other cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="library-refresh")
        log.info(
            "library tasks run in-process (embedded mode, no Redis)", extra={"mode": settings.mode.value}
        )

    @property
    def jobs(self) -> JobBoard:
        return self.runtime.jobs

    def start(self, source: str, *, requested_by: str = "") -> str:
        """Queues a refresh of SOURCE; returns its job id. Raises ValueError for a bad source."""
        from shared.library import read_source

        read_source(
            source
        )  # fail now, in the caller's hands, for a missing or malformed source (SourceError)
        job_id = self.jobs.create(source, requested_by=requested_by)
        self._executor.submit(self._run, source, job_id)
        return job_id

    def run(self, source: str, *, requested_by: str = "") -> JobProgress:
        """Refreshes SOURCE in the calling thread and returns the finished job."""
        job_id = self.jobs.create(source, requested_by=requested_by)
        self._run(source, job_id)
        progress = self.jobs.progress(job_id)
        assert progress is not None
        return progress

    def _retrying(self, job_id: str, work: Callable[[], Any]) -> Any:
        for attempt in range(self.settings.task_max_retries + 1):
            try:
                return work()
            except TransientError as exc:
                if attempt == self.settings.task_max_retries:
                    raise
                self.jobs.retried(job_id)
                delay = min(self.settings.retry_backoff_max_s, 2.0**attempt)
                log.warning(
                    "transient fault, retrying", extra={"job_id": job_id, "error": str(exc), "delay_s": delay}
                )
                time.sleep(delay)
        return None

    def _run(self, source: str, job_id: str) -> None:
        try:
            plan = self._retrying(job_id, lambda: plan_refresh(self.runtime, source, job_id))
            for chunk in chunks(plan.new, self.settings.ingest_chunk_size):
                try:
                    self._retrying(job_id, functools.partial(ingest_looks, self.runtime, chunk, job_id))
                except TransientError as exc:
                    log.error("chunk failed after retries", extra={"job_id": job_id, "error": str(exc)})
                    for item in chunk:
                        if self.jobs.outcome_of(job_id, str(item.path)) is None:
                            self.jobs.mark(job_id, str(item.path), "failed")
        except (PermanentError, TransientError) as exc:
            self.jobs.fail(job_id, str(exc))
        except Exception as exc:  # a bug must not kill the refresh thread silently: record it on the job
            log.exception("refresh crashed", extra={"job_id": job_id})
            self.jobs.fail(job_id, f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class CeleryLibrary:
    """Refreshes sent to the Celery workers over Redis; progress read from Redis."""

    def __init__(self, settings: Settings) -> None:
        from services.workers.app import create_app

        self.settings = settings
        self.app = create_app(settings)  # raises MissingBrokerError without LOOKBOOK_REDIS_URL
        self.jobs = RedisJobBoard.from_url(settings.redis_url)
        log.info(
            "library tasks run on Celery workers (scale-out)",
            extra={"broker": settings.redis_url.split("@")[-1]},
        )

    def start(self, source: str, *, requested_by: str = "") -> str:
        from services.workers.app import REFRESH_TASK

        job_id = self.jobs.create(source, requested_by=requested_by)
        self.app.send_task(REFRESH_TASK, args=(source, job_id))
        return job_id

    def reembed(self, model_version: str) -> str:
        from services.workers.app import REEMBED_TASK

        return str(self.app.send_task(REEMBED_TASK, args=(model_version,)).id)

    def close(self) -> None:
        self.app.close()


def library_runner(settings: Settings, **embedded: Any) -> EmbeddedLibrary | CeleryLibrary:
    """The runner for LOOKBOOK_MODE; scale-out without LOOKBOOK_REDIS_URL fails at settings load."""
    if settings.mode is Mode.SCALE_OUT:
        return CeleryLibrary(settings)
    return EmbeddedLibrary(settings, **embedded)


def progress_view(progress: JobProgress) -> dict[str, Any]:
    """A job as the curation service's ImportJobView fields (quarantined count as failed there)."""
    state = progress.state if progress.state in ("queued", "running", "succeeded", "failed") else "running"
    return {
        "job_id": progress.job_id,
        "source": progress.source,
        "state": state,
        "total": progress.total,
        "processed": progress.handled,
        "imported": progress.done,
        "skipped": progress.skipped,
        "failed": progress.failed + progress.quarantined,
        "error": progress.error,
        "requested_by": progress.requested_by,
        "created_at": progress.created_at,
        "updated_at": progress.updated_at,
    }


class ImportJobsAdapter:
    """The curation service's ImportJobs protocol over either runner."""

    def __init__(self, runner: EmbeddedLibrary | CeleryLibrary) -> None:
        self.runner = runner

    def start(self, source: str, *, requested_by: str) -> Any:
        job_id = self.runner.start(source, requested_by=requested_by)
        view = self.get(job_id)
        assert view is not None
        return view

    def get(self, job_id: str) -> Any:
        from services.curation.imports import ImportJobView

        progress = self.runner.jobs.progress(job_id)
        return None if progress is None else ImportJobView(**progress_view(progress))

    def recent(self, limit: int = 20) -> list[Any]:
        from services.curation.imports import ImportJobView

        return [ImportJobView(**progress_view(p)) for p in self.runner.jobs.recent(limit)]


def wait_for(
    jobs: JobBoard,
    job_id: str,
    *,
    poll_s: float = 0.5,
    on_progress: Callable[[JobProgress], None] | None = None,
    stop: threading.Event | None = None,
) -> JobProgress:
    """Polls a job until it finishes (or `stop` is set); calls on_progress with each reading."""
    while True:
        progress = jobs.progress(job_id)
        if progress is not None:
            if on_progress is not None:
                on_progress(progress)
            if progress.finished:
                return progress
        if stop is not None and stop.wait(poll_s):
            assert progress is not None
            return progress
        if stop is None:
            time.sleep(poll_s)


__all__ = [
    "CeleryLibrary",
    "EmbeddedLibrary",
    "ImportJobsAdapter",
    "library_runner",
    "progress_view",
    "wait_for",
]
