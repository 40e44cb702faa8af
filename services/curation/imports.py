"""What curation needs from the refresh workers' import jobs: start one from a source, and watch it.

The workers own the jobs; this protocol keeps the curation service independent of how they run
(in-process in the embedded default, Celery in scale-out). An adapter wraps whatever they expose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

ImportState = Literal["queued", "running", "succeeded", "failed"]
IMPORT_STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed")


class ImportsUnavailableError(RuntimeError):
    """No import workers are wired into this process; the message says how to get them."""


class ImportJobNotFoundError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "import job not found"


@dataclass(frozen=True)
class ImportJobView:
    """One import job as editors see it."""

    job_id: str
    source: str
    state: ImportState
    total: int = 0
    processed: int = 0
    imported: int = 0
    skipped: int = 0
    failed: int = 0
    error: str = ""
    requested_by: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def progress(self) -> float:
        """Share of the source handled, in [0, 1]; 1 once the job is done."""
        if self.state in ("succeeded", "failed"):
            return 1.0
        return min(1.0, self.processed / self.total) if self.total else 0.0


@runtime_checkable
class ImportJobs(Protocol):
    def start(self, source: str, *, requested_by: str) -> ImportJobView:
        """Queues an import of `source`; raises ValueError with a clear message for a bad source."""
        ...

    def get(self, job_id: str) -> ImportJobView | None: ...

    def recent(self, limit: int = 20) -> list[ImportJobView]: ...


class NoImportJobs:
    """Stands in when the process runs without workers: reads are empty, starting one says what to do."""

    def start(self, source: str, *, requested_by: str) -> ImportJobView:
        raise ImportsUnavailableError(
            "this process has no import workers: run the all-in-one `lookbook serve`, or start "
            "`python -m services.workers` with LOOKBOOK_REDIS_URL set"
        )

    def get(self, job_id: str) -> ImportJobView | None:
        return None

    def recent(self, limit: int = 20) -> list[ImportJobView]:
        return []


class JobBoardLike(Protocol):
    """The part of the workers' job board (services/workers/jobs.py) that curation reads."""

    def create(self, source: str, *, requested_by: str = "", job_id: str | None = None) -> str: ...
    def fail(self, job_id: str, error: str) -> None: ...
    def progress(self, job_id: str) -> Any: ...
    def recent(self, limit: int = 20) -> list[Any]: ...


def view_of(progress: Any) -> ImportJobView:
    """An ImportJobView of the workers' JobProgress; quarantined images count as failed."""
    state: ImportState = progress.state if progress.state in IMPORT_STATES else "queued"
    return ImportJobView(
        job_id=progress.job_id,
        source=progress.source,
        state=state,
        total=int(progress.total),
        processed=int(progress.done + progress.failed + progress.quarantined),
        imported=int(progress.done),
        skipped=int(progress.skipped),
        failed=int(progress.failed + progress.quarantined),
        error=progress.error,
        requested_by=progress.requested_by,
        created_at=float(progress.created_at),
        updated_at=float(progress.updated_at),
    )


class BoardImportJobs:
    """Import jobs on the workers' job board; `launch(job_id, source)` sets the refresh going.

    launch queues the refresh task (scale-out) or runs it on a thread (embedded). `check_source`
    rejects a source that cannot be read with a ValueError before any job is created.
    """

    def __init__(
        self,
        board: JobBoardLike,
        launch: Callable[[str, str], None],
        *,
        check_source: Callable[[str], None] | None = None,
    ) -> None:
        self.board = board
        self.launch = launch
        self.check_source = check_source

    def start(self, source: str, *, requested_by: str) -> ImportJobView:
        if self.check_source is not None:
            self.check_source(source)
        job_id = self.board.create(source, requested_by=requested_by)
        try:
            self.launch(job_id, source)
        except Exception as exc:  # a broker outage must show on the job, not vanish
            self.board.fail(job_id, f"the import could not be queued: {exc}")
            raise ImportsUnavailableError(
                f"the import could not be queued ({exc}): check that the workers and Redis are up, then retry"
            ) from exc
        return self.get(job_id) or ImportJobView(
            job_id=job_id, source=source, state="queued", requested_by=requested_by
        )

    def get(self, job_id: str) -> ImportJobView | None:
        progress = self.board.progress(job_id)
        return None if progress is None else view_of(progress)

    def recent(self, limit: int = 20) -> list[ImportJobView]:
        return [view_of(p) for p in self.board.recent(limit)]
