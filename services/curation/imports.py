"""What curation needs from the refresh workers' import jobs: start one from a source, and watch it.

The workers own the jobs; this protocol keeps the curation service independent of how they run
(in-process in the embedded default, Celery in scale-out). An adapter wraps whatever they expose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

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
