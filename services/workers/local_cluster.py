"""A throwaway redis-server and real Celery worker processes on this host, for tests and benches."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the worker runs `python -m services.workers` from here


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """Starts `redis-server` from PATH on a free port, without persistence; yields its URL."""
    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed: run `bash scripts/ensure_redis.sh` (or `make test`)")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = (workdir / f"redis-{port}.log").open("w")
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        for _ in range(200):
            with contextlib.suppress(redis.exceptions.ConnectionError):
                if client.ping():
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited at start; see {log.name}")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def worker_env(redis_url: str, data_dir: Path, **settings: object) -> dict[str, str]:
    """The environment of a scale-out worker: no LOOKBOOK_* of the caller's, these settings only."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LOOKBOOK_")}
    env.update(
        {
            "LOOKBOOK_MODE": "scale-out",
            "LOOKBOOK_REDIS_URL": redis_url,
            "LOOKBOOK_DATA_DIR": str(data_dir),
            "LOOKBOOK_TORCH_THREADS": "1",
            "LOOKBOOK_LOG_LEVEL": "INFO",
        }
    )
    env.update({f"LOOKBOOK_{k.upper()}": str(v) for k, v in settings.items()})
    return env


class Worker:
    """`python -m services.workers` as a child process group, so SIGKILL takes the pool with it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.name = ""

    def start(self) -> Worker:
        self.name = f"w{uuid.uuid4().hex[:8]}@%h"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.workers",
                "-n",
                self.name,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Waits for every pool process to have loaded its models (the 'worker process ready' log line)."""
        concurrency = int(self.env.get("LOOKBOOK_WORKER_CONCURRENCY", "1"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.proc.returncode}:\n{self.tail()}")
            if self.log_path.read_text(errors="replace").count("worker process ready") >= concurrency:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the worker was not ready after {timeout} s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL of the whole worker (main process and pool), as a crash or an OOM kill would."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
