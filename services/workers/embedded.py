"""Library tasks without Redis: the embedded default runs the same plain functions on a thread of its process.

`library_runner(settings, ...)` gives the all-in-one process, the curation service (through
`BoardImportJobs(runner.jobs, runner.launch, check_source=runner.check_source)`) and the CLI the
runner of the mode: in-process when LOOKBOOK_MODE=embedded, Celery over Redis in scale-out. A
missing broker in scale-out is an error; the embedded runner is never picked as a fallback.
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
        log.info("library tasks run in-process (embedded mode, no Redis)", extra={"mode": settings.mode.value})

    @property
    def jobs(self) -> JobBoard:
        return self.runtime.jobs

    def start(self, source: str, *, requested_by: str = "") -> str:
        """Queues a refresh of SOURCE; returns its job id. Raises ValueError for a bad source."""
        self.check_source(source)  # fail now, in the caller's hands, for a missing or malformed source
        job_id = self.jobs.create(source, requested_by=requested_by)
        self.launch(job_id, source)
        return job_id

    def launch(self, job_id: str, source: str) -> None:
        """Runs the refresh of an already created job on the background thread."""
        self._executor.submit(self._run, source, job_id)

    def check_source(self, source: str) -> None:
        """Raises ValueError (SourceError) for a source that cannot be read, before any job exists."""
        from shared.library import read_source

        read_source(source)

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
                log.warning("transient fault, retrying", extra={"job_id": job_id, "error": str(exc), "delay_s": delay})
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
        job_id = self.jobs.create(source, requested_by=requested_by)
        self.launch(job_id, source)
        return job_id

    def launch(self, job_id: str, source: str) -> None:
        """Queues the refresh task of an already created job."""
        from services.workers.app import REFRESH_TASK

        self.app.send_task(REFRESH_TASK, args=(source, job_id))

    def check_source(self, source: str) -> None:
        """Workers may see other paths than this process: the refresh task checks the source itself."""

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


__all__ = ["CeleryLibrary", "EmbeddedLibrary", "library_runner", "wait_for"]
