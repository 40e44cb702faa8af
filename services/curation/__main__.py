"""`python -m services.curation`: the curation service alone, CurationService over gRPC plus the console over HTTP.

For scale-out, where the look store is a Qdrant server (LOOKBOOK_QDRANT_URL) and imports run on the
Celery workers; the embedded all-in-one process (`lookbook serve`) composes the same factories.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import uvicorn

from services.curation.console import build_console_http
from services.curation.imports import BoardImportJobs, ImportJobs
from services.curation.ledger import Ledger
from services.curation.server import build_server
from shared.grpc_runtime import drain, set_serving, wait_for_signal
from shared.logs import configure_logging
from shared.settings import Settings, SettingsError, load_settings
from shared.store import StoreError, open_store

log = logging.getLogger(__name__)


def import_jobs(settings: Settings, store: Any) -> ImportJobs | None:
    """Imports on the workers' runner for this mode (a thread here, or Celery), or None when they are absent."""
    try:
        from services.workers.embedded import library_runner
    except ImportError:
        log.warning("the workers package is not installed: imports are off in this process")
        return None
    runner = library_runner(settings, store=store)
    return BoardImportJobs(runner.jobs, runner.launch, check_source=runner.check_source)


async def serve(settings: Settings) -> None:
    store = open_store(settings)
    try:
        ledger = Ledger.in_data_dir(settings.data_dir)
        jobs = import_jobs(settings, store)
        server, health, port, names = build_server(settings, store, ledger=ledger, jobs=jobs)
        app = build_console_http(settings, store, ledger=ledger, jobs=jobs)
        http = uvicorn.Server(
            uvicorn.Config(app, host=settings.host, port=settings.http_port, log_config=None, access_log=False)
        )
        http_task = asyncio.create_task(http.serve())
        await server.start()
        await set_serving(health, names, True)
        print(
            f"Lookbook curation is serving:\n  gRPC     {settings.host}:{port}\n"
            f"  console  {settings.base_url}/console/\n"
            "Create an editor first: lookbook editors add NAME",
            flush=True,
        )
        await wait_for_signal()
        await drain([(server, health, names)], settings.shutdown_grace_s)
        http.should_exit = True
        await http_task
    finally:
        store.close()


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
