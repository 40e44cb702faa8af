"""Thin Celery tasks over the plain library functions; only transient faults are retried, with backoff.

Each task takes ids and paths (JSON), builds nothing at import, and finds its per-process runtime
(store handle, vision, job board) through `runtime()`, which is rebuilt after every fork.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import redis.exceptions
from celery import Task, shared_task

from services.workers.app import INGEST_TASK, REEMBED_TASK, REFRESH_TASK, STATE_TASK
from services.workers.jobs import RedisJobBoard
from services.workers.refresh import (
    LibraryRuntime,
    PermanentError,
    StoreAccess,
    TransientError,
    chunks,
    ingest_looks,
    item_from_json,
    item_to_json,
    plan_refresh,
    reembed,
)
from shared.heap import settle_heap

log = logging.getLogger(__name__)

# Only these are retried: the image or the request being wrong never gets better by waiting.
TRANSIENT: tuple[type[BaseException], ...] = (
    TransientError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

_runtime: LibraryRuntime | None = None
_runtime_pid = 0


def reset_runtime() -> None:
    global _runtime
    _runtime = None


def runtime() -> LibraryRuntime:
    """This process's runtime, built on first use (after the fork: never shared with the parent)."""
    global _runtime, _runtime_pid
    if _runtime is None or _runtime_pid != os.getpid():
        from shared.settings import load_settings

        settings = load_settings()
        import torch

        torch.set_num_threads(settings.torch_threads or 1)
        _runtime = LibraryRuntime(
            settings=settings,
            jobs=RedisJobBoard.from_url(settings.redis_url),
            # Qdrant Edge allows one process per directory: open it per unit of work (see StoreAccess).
            store=StoreAccess(settings, held=bool(settings.qdrant_url)),
        )
        _runtime_pid = os.getpid()
    return _runtime


def _warm_up_photo() -> bytes:
    """A 480x640 JPEG of seeded noise: decodes, detects and embeds like a look photo, stores nothing."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, size=(640, 480, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def warm_up() -> None:
    """Builds this process's runtime and models now, so the first task does not pay for loading them."""
    try:
        rt = runtime()
        if not rt.settings.vision_addr:
            # Loads the vision pipeline and the quality model, then runs them once on a made-up photo:
            # a fresh process's first forward passes pay for lazy set-up (allocator pools, kernels),
            # about half a second here, which the first task would otherwise take.
            rt.analyzer.analyze_sync(_warm_up_photo(), want_quality=True)
        settle_heap()
        log.info("worker process ready", extra={"pid": os.getpid()})
    except Exception:
        # The first task will raise the same error, with its job, where someone looks for it.
        log.exception("worker process could not load its models")


class LibraryTask(Task):  # type: ignore[misc]
    """Counts retries and final failures on the job, so progress never hangs on a lost look."""

    autoretry_for = TRANSIENT
    retry_backoff = True
    retry_jitter = True

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        job_id = kwargs.get("job_id") or (args[0] if args else None)
        log.warning(
            "task retried after a transient fault",
            extra={"task": self.name, "job_id": job_id, "error": str(exc)},
        )
        if job_id and self.name != REEMBED_TASK:
            # Progress is best effort while Redis is down; the retry itself is what matters.
            with contextlib.suppress(redis.exceptions.RedisError):
                runtime().jobs.retried(str(job_id))

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        log.error("task failed", extra={"task": self.name, "error": str(exc)})
        try:
            jobs = runtime().jobs
            if self.name == INGEST_TASK:
                job_id, entries = args[0], args[1]
                for entry in entries:
                    path = str(entry["path"])
                    if jobs.outcome_of(job_id, path) is None:
                        jobs.mark(job_id, path, "failed")
            elif self.name == REFRESH_TASK and len(args) > 1 and args[1]:
                jobs.fail(args[1], f"{type(exc).__name__}: {exc}")
        except redis.exceptions.RedisError:
            log.error("could not record the failure in Redis", extra={"task": self.name})


@shared_task(name=REFRESH_TASK, bind=True, base=LibraryTask)
def refresh_library_task(self: Task, source: str, job_id: str | None = None) -> dict[str, Any]:
    """Finds the looks of SOURCE not yet in the library and fans out their ingestion in chunks."""
    rt = runtime()
    job_id = rt.jobs.create(source, job_id=job_id)
    try:
        plan = plan_refresh(rt, source, job_id)
    except PermanentError as exc:
        return {"job_id": job_id, "error": str(exc)}
    for chunk in chunks(plan.new, rt.settings.ingest_chunk_size, rt.settings.worker_concurrency):
        ingest_looks_task.apply_async(args=(job_id, [item_to_json(i) for i in chunk]))
    return {"job_id": job_id, "new": len(plan.new), "skipped": plan.skipped, "quarantined": plan.quarantined}


@shared_task(name=INGEST_TASK, bind=True, base=LibraryTask)
def ingest_looks_task(self: Task, job_id: str, entries: list[dict[str, Any]]) -> dict[str, int]:
    """Ingests one chunk of a refresh (see library.ingest_looks)."""
    outcomes = ingest_looks(runtime(), [item_from_json(e) for e in entries], job_id)
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.outcome] = counts.get(outcome.outcome, 0) + 1
    return counts


def ingest_look_task(job_id: str, entry: dict[str, Any]) -> Any:
    """Queues the ingestion of one look (a chunk of one)."""
    return ingest_looks_task.apply_async(args=(job_id, [entry]))


@shared_task(name=REEMBED_TASK, bind=True, base=LibraryTask)
def reembed_library_task(self: Task, model_version: str) -> dict[str, Any]:
    """Re-embeds the library into a new collection for MODEL_VERSION; the alias moves only when complete.

    Resumable: a retry or a redelivery after a lost worker skips the looks already rebuilt.
    """
    try:
        total = reembed(runtime(), model_version)
    except PermanentError as exc:
        return {"model_version": model_version, "error": str(exc)}
    return {"model_version": model_version, "looks": total}


@shared_task(name=STATE_TASK, base=LibraryTask)
def library_state_task() -> dict[str, Any]:
    """Look ids and count of the live library, read by a worker (which may hold the embedded store)."""
    with runtime().store.session() as store:
        if store.live_version() is None:
            return {"count": 0, "ids": [], "statuses": {}}
        ids: list[str] = []
        statuses: dict[str, int] = {}
        cursor = None
        while True:
            page = store.scroll(cursor=cursor, limit=256)
            for look in page.looks:
                ids.append(look.look_id)
                statuses[look.status] = statuses.get(look.status, 0) + 1
            cursor = page.next_cursor
            if cursor is None:
                break
        return {"count": store.count(), "ids": sorted(ids), "statuses": statuses}
