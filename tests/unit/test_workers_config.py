"""The Celery app's contract (JSON only, late acks, retry only transient faults) and the memory job board."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.workers.app import (
    INGEST_TASK,
    REFRESH_TASK,
    MissingBrokerError,
    celery_config,
    create_app,
)
from services.workers.jobs import MemoryJobBoard, QuarantinedImage
from shared.settings import SettingsError, load_settings

pytestmark = pytest.mark.unit


def test_celery_runs_json_only_with_late_acks_and_a_long_visibility_timeout(tmp_path: Path) -> None:
    settings = load_settings(
        redis_url="redis://127.0.0.1:1/0",
        data_dir=tmp_path,
        refresh_sources="/looks/a,/looks/b.json",
        refresh_interval_s=600,
        worker_max_memory_per_child_kb=500_000,
    )
    conf = celery_config(settings)
    assert conf["broker_url"] == conf["result_backend"] == "redis://127.0.0.1:1/0"
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["accept_content"] == ["json"]
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["worker_max_memory_per_child"] == 500_000
    assert conf["broker_transport_options"]["visibility_timeout"] > conf["task_time_limit"]
    schedule = conf["beat_schedule"]
    assert {entry["args"] for entry in schedule.values()} == {("/looks/a",), ("/looks/b.json",)}
    assert all(entry["task"] == REFRESH_TASK and entry["schedule"] == 600 for entry in schedule.values())


def test_a_visibility_timeout_shorter_than_a_task_is_refused() -> None:
    with pytest.raises(SettingsError, match="LOOKBOOK_VISIBILITY_TIMEOUT_S"):
        load_settings(task_time_limit_s=600, visibility_timeout_s=300)


def test_no_broker_means_no_celery_app() -> None:
    with pytest.raises(MissingBrokerError, match="LOOKBOOK_REDIS_URL"):
        create_app(load_settings())
    with pytest.raises(SettingsError, match="LOOKBOOK_REDIS_URL"):
        load_settings(mode="scale-out")


def test_only_transient_faults_are_retried_with_backoff(tmp_path: Path) -> None:
    import redis

    from services.workers.refresh import TransientError

    app = create_app(load_settings(redis_url="redis://127.0.0.1:1/0", data_dir=tmp_path, task_max_retries=3))
    app.loader.import_default_modules()
    task = app.tasks[INGEST_TASK]
    assert set(task.autoretry_for) == {
        TransientError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
    }
    assert task.retry_backoff and task.retry_jitter
    assert task.max_retries == 3
    app.close()


def test_memory_board_counts_each_look_once(tmp_path: Path) -> None:
    jobs = MemoryJobBoard(tmp_path / "quarantine.json")
    job_id = jobs.create("src")
    jobs.plan(job_id, ["a", "b"], skipped=1)
    jobs.mark(job_id, "a", "done")
    jobs.mark(job_id, "a", "done")
    progress = jobs.progress(job_id)
    assert progress is not None and (progress.state, progress.total, progress.done) == ("queued", 2, 1)
    jobs.quarantine(QuarantinedImage(path="b", reason="corrupt", job_id=job_id))
    jobs.mark(job_id, "b", "quarantined")
    progress = jobs.progress(job_id)
    assert progress is not None and progress.state == "succeeded" and progress.quarantined == 1
    # The quarantine list outlives the process.
    assert [q.reason for q in MemoryJobBoard(tmp_path / "quarantine.json").quarantined()] == ["corrupt"]


def test_look_items_travel_as_json() -> None:
    import json

    from services.workers.refresh import item_from_json, item_to_json
    from shared.library import LookItem
    from shared.models.pipeline import KnownGarment

    item = LookItem(
        path=Path("/x/look.jpg"),
        tags=("denim",),
        source="blog",
        attribution="A. Person",
        known=(KnownGarment(kind="top", box=(1.0, 2.0, 3.0, 4.0)),),
        status="approved",
    )
    assert item_from_json(json.loads(json.dumps(item_to_json(item)))) == item


def test_bench_ingest_reads_the_lease_cost_and_task_times_off_the_worker_log(tmp_path: Path) -> None:
    from services.commands.bench_ingest import _worker_log_stats

    log = tmp_path / "worker.log"
    log.write_text(
        '{"msg": "store lease taken", "waited_s": 0.05, "open_s": 0.1}\n'
        "celery banner, not JSON\n"
        '{"msg": "look ingested", "waited_s": 9}\n'
        '{"msg": "store lease taken", "waited_s": 0.0, "open_s": 0.25}\n'
        '{"msg": "store lease taken", "waited_s": \n'
        '{"msg": "chunk ingested", "looks": 4, "ingest_s": 0.6, "write_s": 0.02, "task_s": 0.65, "pid": 11}\n'
        '{"msg": "chunk ingested", "looks": 3, "ingest_s": 0.5, "write_s": 0.01, "task_s": 0.52, "pid": 11}\n'
        '{"msg": "chunk ingested", "looks": 1, "ingest_s": 0.2, "write_s": 0.0, "task_s": 0.21, "pid": 12}\n'
    )
    stats = _worker_log_stats(log)
    assert stats["leases_taken"] == 2
    assert stats["lease_wait_s"] == pytest.approx(0.05) and stats["shard_open_s"] == pytest.approx(0.35)
    first, second = stats["processes"]["11"], stats["processes"]["12"]
    assert (first["tasks"], first["looks"], second["tasks"], second["looks"]) == (2, 7, 1, 1)
    assert first["ingest_s"] == pytest.approx(1.1) and first["write_s"] == pytest.approx(0.03)
    assert first["task_s"] == pytest.approx(1.17) and second["task_s"] == pytest.approx(0.21)


@pytest.mark.parametrize(
    ("n", "size", "workers"), [(96, 4, 2), (96, 4, 1), (10, 8, 3), (1, 4, 2), (0, 4, 2), (7, 1, 4)]
)
def test_refresh_chunks_keep_order_and_shrink_towards_the_end(n: int, size: int, workers: int) -> None:
    from services.workers.refresh import chunks

    parts = list(chunks(list(range(n)), size, workers))
    assert [i for part in parts for i in part] == list(range(n))  # every look once, in order
    sizes = [len(part) for part in parts]
    assert all(1 <= s <= size for s in sizes)
    assert sizes == sorted(sizes, reverse=True)  # the tail is where the small chunks are
    if n >= 4 * size * workers:
        assert sizes[0] == size and sizes[-1] == 1
