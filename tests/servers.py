"""Runs the real Lookbook services in a background event loop, so synchronous tests can call them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from services.runtime import Running, start
from shared.settings import Settings

T = TypeVar("T")


class ServiceThread:
    """An event loop on its own thread, running `services.runtime.start(...)` with free ports."""

    def __init__(self, settings: Settings, service: str = "all", *, import_demo: bool = False) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running: Running = self.call(start(settings, service, import_demo=import_demo, random_ports=True))

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 600) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.running.ports[name]}"

    def stop(self, grace: float = 0) -> None:
        try:
            self.call(self.running.stop(grace))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
