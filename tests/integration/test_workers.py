"""Library refresh on a real redis-server and real Celery worker processes, with real looks and a real store.

Each guarantee of the workers is proven here: a refresh stores the looks, a second one changes
nothing, a SIGKILLed worker loses and duplicates nothing, a bad file is quarantined while the rest
goes in, and transient faults are retried with backoff while permanent ones are not.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from services.workers.embedded import CeleryLibrary
from services.workers.jobs import JobProgress
from services.workers.local_cluster import REPO, Worker, free_port, redis_server, worker_env
from services.workers.refresh import StoreAccess
from shared.settings import load_settings
from shared.store import look_id_for

pytestmark = pytest.mark.integration

# Short enough that a redelivery after SIGKILL comes within the test; still longer than any task here.
TIMINGS = {
    "task_time_limit_s": 60,
    "visibility_timeout_s": 75,
    "retry_backoff_max_s": 4,
    "task_max_retries": 12,
}
WAIT_S = 600.0  # an upper bound for a whole job on a busy 2-core machine, not a timing assertion


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path / "redis") as url:
        yield url


@pytest.fixture
def looks_dir(tmp_path: Path, team_data: Path) -> Path:
    """12 real street looks, copied to a temporary source directory (never into the repo)."""
    source = tmp_path / "source"
    source.mkdir()
    for path in sorted((team_data / "looks" / "images").glob("*.jpg"))[:12]:
        shutil.copy(path, source / path.name)
    return source


def expected_ids(folder: Path) -> set[str]:
    return {look_id_for(p.read_bytes()) for p in folder.iterdir() if p.suffix == ".jpg"}


def client(redis_url: str, data_dir: Path, **settings: Any) -> CeleryLibrary:
    return CeleryLibrary(
        load_settings(mode="scale-out", redis_url=redis_url, data_dir=data_dir, **{**TIMINGS, **settings})
    )


def wait_job(library: CeleryLibrary, job_id: str, until: Any = None, worker: Worker | None = None) -> JobProgress:
    """Polls the job until it finishes (or `until(progress)` holds)."""
    deadline = time.monotonic() + WAIT_S
    progress = None
    while time.monotonic() < deadline:
        progress = library.jobs.progress(job_id)
        if progress is not None and (progress.finished if until is None else until(progress)):
            return progress
        if worker is not None and worker.proc is not None and worker.proc.poll() is not None:
            pytest.fail(f"the worker died:\n{worker.tail()}")
        time.sleep(0.3)
    pytest.fail(f"job {job_id} did not get there: {progress}\n{worker.tail() if worker else ''}")


def library_ids(data_dir: Path) -> tuple[int, list[str], dict[str, int]]:
    """Count, ids and statuses of the live library, read from the store on disk (asking the workers'
    store lease for it, as any process beside them must)."""
    access = StoreAccess(load_settings(data_dir=data_dir), held=False)
    try:
        with access.session() as store:
            ids: list[str] = []
            statuses: dict[str, int] = {}
            cursor = None
            while True:
                page = store.scroll(cursor=cursor, limit=256)
                ids += [look.look_id for look in page.looks]
                for look in page.looks:
                    statuses[look.status] = statuses.get(look.status, 0) + 1
                if (cursor := page.next_cursor) is None:
                    break
            scores = [look.quality_score for look in store.get_many(ids)]
            assert all(0.0 < q <= 1.0 for q in scores), "every stored look carries the quality filter's score"
            return store.count(), ids, statuses
    finally:
        access.close()


def start_worker(redis_url: str, data_dir: Path, log: Path, **settings: Any) -> Worker:
    worker = Worker(worker_env(redis_url, data_dir, **{**TIMINGS, **settings}), log).start()
    worker.wait_ready()
    return worker


def test_refresh_stores_every_look_and_a_second_refresh_changes_nothing(
    redis_url: str, looks_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    worker = start_worker(redis_url, data_dir, tmp_path / "worker.log", ingest_chunk_size=4)
    try:
        library = client(redis_url, data_dir, ingest_chunk_size=4)
        first = wait_job(library, library.start(str(looks_dir)), worker=worker)
        assert (first.state, first.total, first.done, first.quarantined, first.failed) == (
            "succeeded",
            12,
            12,
            0,
            0,
        )
        count, ids, statuses = library_ids(data_dir)
        assert count == 12 and set(ids) == expected_ids(looks_dir)
        assert set(statuses) <= {"pending", "approved", "rejected"}

        second = wait_job(library, library.start(str(looks_dir)), worker=worker)
        assert (second.state, second.total, second.done, second.skipped) == ("succeeded", 0, 0, 12)
        assert library_ids(data_dir)[:2] == (count, ids)
    finally:
        worker.stop()


def test_sigkill_mid_refresh_then_restart_keeps_every_look_exactly_once(
    redis_url: str, looks_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    log = tmp_path / "worker.log"
    worker = start_worker(redis_url, data_dir, log, ingest_chunk_size=1)
    library = client(redis_url, data_dir, ingest_chunk_size=1)
    job_id = library.start(str(looks_dir))
    try:
        partial = wait_job(library, job_id, until=lambda p: p.done >= 3, worker=worker)
        # Kill while a chunk (a look here) is delivered and not yet acknowledged: with late acks it sits
        # in the broker's `unacked` hash until the task ends. A look takes ~0.1 s, so poll tightly.
        broker = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 30
        while broker.hlen("unacked") < 1 and time.monotonic() < deadline:
            time.sleep(0.002)
        worker.kill()
        assert partial.done < 12, "the refresh finished before the kill; nothing was tested"
        assert broker.hlen("unacked") >= 1, "no task was in flight at the kill; nothing was tested"
        at_kill = library.jobs.progress(job_id)
        assert at_kill is not None and at_kill.done < 12, "the refresh finished before the kill; nothing was tested"
        worker = start_worker(redis_url, data_dir, log, ingest_chunk_size=1)
        # The lost task comes back once the visibility timeout has passed.
        final = wait_job(library, job_id, worker=worker)
    finally:
        worker.stop()
    assert (final.state, final.total, final.done, final.failed) == ("succeeded", 12, 12, 0)
    count, ids, _ = library_ids(data_dir)
    assert count == 12 and len(ids) == len(set(ids)) == 12 and set(ids) == expected_ids(looks_dir)


def test_a_corrupt_file_is_quarantined_with_its_reason_and_the_rest_ingested(
    redis_url: str, looks_dir: Path, tmp_path: Path
) -> None:
    for extra in sorted(looks_dir.iterdir())[4:]:
        extra.unlink()
    good = sorted(looks_dir.iterdir())
    (looks_dir / "truncated.jpg").write_bytes(good[0].read_bytes()[:3000])
    (looks_dir / "notes.jpg").write_text("this is not a photo")
    data_dir = tmp_path / "data"
    worker = start_worker(redis_url, data_dir, tmp_path / "worker.log", ingest_chunk_size=2)
    try:
        library = client(redis_url, data_dir, ingest_chunk_size=2)
        job_id = library.start(str(looks_dir))
        progress = wait_job(library, job_id, worker=worker)
    finally:
        worker.stop()
    assert (progress.state, progress.total, progress.done, progress.quarantined) == ("succeeded", 6, 4, 2)
    assert progress.retries == 0, "a bad image is permanent: it must not be retried"
    reasons = {Path(q.path).name: q.reason for q in library.jobs.quarantined() if q.job_id == job_id}
    assert set(reasons) == {"truncated.jpg", "notes.jpg"}
    assert "corrupt or truncated" in reasons["truncated.jpg"]
    assert "not a recognised image" in reasons["notes.jpg"]
    count, ids, _ = library_ids(data_dir)
    assert count == 4 and set(ids) == {look_id_for(p.read_bytes()) for p in good}


def test_vision_unavailable_is_retried_with_backoff_until_it_comes_back(
    redis_url: str, looks_dir: Path, tmp_path: Path
) -> None:
    for extra in sorted(looks_dir.iterdir())[3:]:
        extra.unlink()
    vision_port = free_port()
    data_dir = tmp_path / "data"
    worker = start_worker(
        redis_url,
        data_dir,
        tmp_path / "worker.log",
        ingest_chunk_size=3,
        vision_addr=f"127.0.0.1:{vision_port}",
        task_max_retries=40,  # the vision server may take a while to load on a busy machine
    )
    vision = None
    try:
        library = client(redis_url, data_dir, ingest_chunk_size=3)
        job_id = library.start(str(looks_dir))
        wait_job(library, job_id, until=lambda p: p.retries >= 2, worker=worker)
        env = worker_env(redis_url, tmp_path / "vision-data", vision_port=vision_port)
        env.pop("LOOKBOOK_MODE")
        env.pop("LOOKBOOK_REDIS_URL")
        vision = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", "--service", "vision"],
            cwd=REPO,
            env=env,
            stdout=(tmp_path / "vision.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        progress = wait_job(library, job_id, worker=worker)
    finally:
        worker.stop()
        if vision is not None:
            vision.terminate()
            vision.wait(timeout=60)
    assert (progress.state, progress.done, progress.failed, progress.quarantined) == ("succeeded", 3, 0, 0)
    assert progress.retries >= 2
    log = worker.tail(10_000)
    # Celery logs each retry with its countdown: exponential backoff with jitter, capped by the setting.
    assert "Retry in" in log and "task retried after a transient fault" in log
    assert library_ids(data_dir)[0] == 3


def test_scale_out_without_a_broker_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    env = worker_env("", tmp_path / "data")
    env.pop("LOOKBOOK_REDIS_URL")
    result = subprocess.run(
        [sys.executable, "-m", "services.workers"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "LOOKBOOK_REDIS_URL" in result.stderr


def test_job_progress_in_redis_counts_each_look_once(redis_url: str) -> None:
    from services.workers.jobs import QuarantinedImage, RedisJobBoard

    jobs = RedisJobBoard.from_url(redis_url)
    job_id = jobs.create("src")
    jobs.start(job_id)
    jobs.plan(job_id, ["a", "b", "c"], skipped=2)
    jobs.plan(job_id, ["a"], skipped=5)  # a redelivered refresh: same plan, first skipped count kept
    jobs.mark(job_id, "a", "done")
    jobs.mark(job_id, "a", "done")
    jobs.mark(job_id, "b", "failed")
    jobs.mark(job_id, "b", "done")  # redelivered after a failure
    progress = jobs.progress(job_id)
    assert progress is not None
    assert (progress.state, progress.total, progress.done, progress.failed, progress.skipped) == (
        "running",
        3,
        2,
        0,
        2,
    )
    jobs.quarantine(QuarantinedImage(path="c", reason="corrupt", job_id=job_id))
    jobs.mark(job_id, "c", "quarantined")
    progress = jobs.progress(job_id)
    assert progress is not None and progress.state == "succeeded" and progress.quarantined == 1
    assert json.loads(json.dumps(progress.to_json()))["finished"] is True
    assert [q.reason for q in jobs.quarantined()] == ["corrupt"]


def test_beat_refreshes_the_configured_sources_on_schedule(redis_url: str, looks_dir: Path, tmp_path: Path) -> None:
    for extra in sorted(looks_dir.iterdir())[2:]:
        extra.unlink()
    data_dir = tmp_path / "data"
    schedule = {"refresh_sources": str(looks_dir), "refresh_interval_s": 10}
    worker = start_worker(redis_url, data_dir, tmp_path / "worker.log", **schedule)
    beat = subprocess.Popen(
        [sys.executable, "-m", "services.workers", "beat"],
        cwd=REPO,
        env=worker_env(redis_url, data_dir, **{**TIMINGS, **schedule}),
        stdout=(tmp_path / "beat.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        library = client(redis_url, data_dir)
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            jobs = [j for j in library.jobs.recent() if j.source == str(looks_dir) and j.finished and j.total]
            if jobs:
                break
            assert beat.poll() is None, (tmp_path / "beat.log").read_text()
            time.sleep(0.5)
        else:
            pytest.fail(f"beat never refreshed {looks_dir}:\n{(tmp_path / 'beat.log').read_text()}")
    finally:
        beat.terminate()
        beat.wait(timeout=60)
        worker.stop()
    assert (jobs[0].state, jobs[0].done) == ("succeeded", 2)
    assert library_ids(data_dir)[0] == 2
