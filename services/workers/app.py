"""The one Celery app of Lookbook: Redis broker and result backend, JSON only, late acks, beat schedule.

`create_app(settings)` builds it; `celery -A services.workers.app` and `python -m services.workers`
use the module attribute `app`, built from the environment on first access. Models, the store and
gRPC channels are never built here: each worker process builds its own after the fork.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from shared.settings import Settings

log = logging.getLogger(__name__)

TASKS_MODULE = "services.workers.tasks"
REFRESH_TASK = "lookbook.refresh_library"
INGEST_TASK = "lookbook.ingest_looks"
REEMBED_TASK = "lookbook.reembed_library"
STATE_TASK = "lookbook.library_state"


class MissingBrokerError(RuntimeError):
    """Scale-out was asked for but no Redis is configured; never fall back silently."""


def celery_config(settings: Settings) -> dict[str, Any]:
    if not settings.redis_url:
        raise MissingBrokerError(
            "the Celery workers need Redis: set LOOKBOOK_REDIS_URL (e.g. redis://localhost:6379/0) and "
            "LOOKBOOK_MODE=scale-out, or run the embedded default (`lookbook serve`), which refreshes "
            "in-process"
        )
    transport = {
        # Redis redelivers a task that was not acknowledged within this time (a lost worker). It must
        # exceed the longest task, or a task that is still running is handed to a second worker.
        "visibility_timeout": int(settings.visibility_timeout_s),
        # A worker killed while it held the restore mutex would block redelivery for kombu's default
        # 5 minutes; restoring takes milliseconds, so a minute is ample.
        "unacked_mutex_expire": 60,
    }
    schedule = {
        f"refresh {source}": {
            "task": REFRESH_TASK,
            "schedule": settings.refresh_interval_s,
            "args": (source,),
            # A late beat tick is not worth running twice: drop ticks older than one interval.
            "options": {"expires": settings.refresh_interval_s},
        }
        for source in settings.refresh_sources
    }
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_expires": 24 * 3600,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "task_time_limit": int(settings.task_time_limit_s),
        "task_soft_time_limit": max(1, int(settings.task_time_limit_s * 0.9)),
        "task_track_started": True,
        "worker_prefetch_multiplier": 1,
        "worker_max_memory_per_child": settings.worker_max_memory_per_child_kb,
        "worker_concurrency": settings.worker_concurrency,
        "worker_hijack_root_logger": False,
        # Each process loads its models at start (worker_process_init); give it time before it counts as hung.
        "worker_proc_alive_timeout": 300.0,
        "worker_send_task_events": False,
        "beat_schedule": schedule,
        "beat_schedule_filename": str(settings.data_dir / "celerybeat-schedule"),
        "timezone": "UTC",
        # Read by autoretry at task creation: retries and the backoff ceiling are settings.
        "task_annotations": {
            "*": {
                "max_retries": settings.task_max_retries,
                "retry_backoff_max": int(settings.retry_backoff_max_s),
            }
        },
    }


def create_app(settings: Settings) -> Celery:
    """The Celery app for these settings; raises MissingBrokerError without LOOKBOOK_REDIS_URL."""
    app = Celery("lookbook")
    app.config_from_object(celery_config(settings))
    app.conf.include = [TASKS_MODULE]
    return app


_default: Celery | None = None


def default_app() -> Celery:
    global _default
    if _default is None:
        from shared.settings import load_settings

        _default = create_app(load_settings())
        _default.set_default()
    return _default


def __getattr__(name: str) -> Any:
    # `celery -A services.workers.app` looks up `app`; build it from the environment only then.
    if name in ("app", "celery"):
        return default_app()
    raise AttributeError(name)


@signals.setup_logging.connect
def _logging(**_: Any) -> None:
    from shared.logs import configure_logging
    from shared.settings import load_settings

    configure_logging(load_settings().log_level)


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # Each worker process builds its own models, store handle and gRPC channel, never the parent's.
    from services.workers import tasks

    tasks.reset_runtime()
    tasks.warm_up()


@signals.task_prerun.connect
def _task_id(task_id: str | None = None, **_: Any) -> None:
    from shared.logs import request_id

    request_id.set(task_id or "")
