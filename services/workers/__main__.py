"""`python -m services.workers` runs a Celery worker; `python -m services.workers beat` runs the one beat."""

from __future__ import annotations

import logging
import sys

from services.workers.app import MissingBrokerError, create_app
from shared.logs import configure_logging
from shared.malloc import tune_malloc
from shared.openmp import tune_openmp
from shared.settings import SettingsError, load_settings

log = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    tune_openmp()  # before the worker processes load torch
    tune_malloc()  # inherited by the forked worker processes
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        app = create_app(settings)
    except MissingBrokerError as exc:
        # Scale-out without a broker is an error, never a silent in-process fallback.
        print(exc, file=sys.stderr)
        return 2
    app.set_default()
    # `python -m services.workers [worker|beat] [celery options...]`; options alone mean a worker.
    role = argv[0] if argv and not argv[0].startswith("-") else "worker"
    argv = argv[1:] if argv and argv[0] == role else argv
    log.info(
        "library workers starting",
        extra={
            "role": role,
            "mode": settings.mode.value,
            "broker": settings.redis_url.split("@")[-1],
            "concurrency": settings.worker_concurrency,
        },
    )
    if role == "beat":
        # The schedule file (last run of each entry) lives in the data directory.
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            "beat schedule",
            extra={"sources": list(settings.refresh_sources), "interval_s": settings.refresh_interval_s},
        )
        app.start(["beat", "--loglevel", settings.log_level, *argv])
    elif role == "worker":
        app.worker_main(
            [
                "worker",
                "--loglevel",
                settings.log_level,
                "--concurrency",
                str(settings.worker_concurrency),
                *argv,
            ]
        )
    else:
        print(
            f"unknown role {role!r}: use `python -m services.workers` (a worker) or `python -m services.workers beat`",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
