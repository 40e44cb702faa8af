"""`lookbook bench ingest`: library ingestion throughput on 1 and 2 worker processes, beside bare Analyze."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click


def _pick_looks(data: Path, n: int) -> list[Path]:
    folder = data / "looks" / "images" if (data / "looks" / "images").is_dir() else data
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if len(files) < n:
        raise click.ClickException(f"{folder} has {len(files)} images, fewer than --n {n}: lower --n")
    return files[:n]


def _bare_analyze(files: list[Path], settings: Any, barrier: Any = None) -> float:
    """Looks/s of the same Analyze the workers run (vision pipeline + quality), one process, one thread.

    With a barrier, the clock starts when every process sharing it has loaded its models.
    """
    import torch

    from services.workers.refresh import QualityCheckedAnalyzer, limits_of, local_analyzer
    from shared.models.quality import load_quality

    torch.set_num_threads(1)
    analyzer = QualityCheckedAnalyzer(local_analyzer(settings), load_quality(settings.models_dir), limits_of(settings))
    datas = [p.read_bytes() for p in files]
    for data in datas[:2]:  # warm-up: first calls pay for lazy init
        analyzer.analyze_sync(data, want_quality=True)
    if barrier is not None:
        barrier.wait(timeout=600)
    started = time.perf_counter()
    for data in datas:
        analyzer.analyze_sync(data, want_quality=True)
    return len(datas) / (time.perf_counter() - started)


def _bare_worker(files: list[Path], barrier: Any, results: Any) -> None:
    from shared.malloc import tune_malloc
    from shared.settings import load_settings

    tune_malloc()  # as a worker process runs (services/workers/__main__.py)

    results.put(_bare_analyze(files, load_settings(), barrier=barrier))


def _bare_analyze_parallel(files: list[Path], processes: int) -> list[float]:
    """Looks/s of each of `processes` bare Analyze processes (spawned) running at once, each on all the files.

    What this machine gives several single-threaded torch processes side by side, before any queue,
    store or worker is involved: the ceiling for the per-process ingestion figures.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_bare_worker, args=(files, barrier, results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    rates = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    return rates


def _worker_log_stats(log_path: Path) -> dict[str, Any]:
    """What the workers' time went on, from their log.

    `store lease taken` lines: how many times a process took the embedded store's shard, and the
    seconds spent waiting for it and opening it. `chunk ingested` lines (one per ingestion task),
    per worker process: tasks, looks, seconds in tasks, of which in ingest_look (read, quality,
    Analyze, image copy) and in the chunk's store write (with its hand-over to the lease holder).
    """
    taken, waited, opened = 0, 0.0, 0.0
    processes: dict[str, dict[str, float]] = {}
    with log_path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            lease, chunk = '"store lease taken"' in line, '"chunk ingested"' in line
            if not (lease or chunk):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if lease:
                taken += 1
                waited += float(record.get("waited_s", 0.0))
                opened += float(record.get("open_s", 0.0))
                continue
            row = processes.setdefault(str(record.get("pid", "?")),
                                       {"tasks": 0, "looks": 0, "task_s": 0.0, "ingest_s": 0.0, "write_s": 0.0})
            row["tasks"] += 1
            row["looks"] += int(record.get("looks", 0))
            for key in ("task_s", "ingest_s", "write_s"):
                row[key] += float(record.get(key, 0.0))
    return {"leases_taken": taken, "lease_wait_s": waited, "shard_open_s": opened, "processes": processes}


def _ingest(
    files: list[Path], workers: int, workdir: Path, redis_url: str, chunk_size: int
) -> tuple[float, dict[str, float]]:
    """Looks/s of a whole refresh on `workers` Celery processes (models loaded before the clock starts),
    and where the workers' time went (_worker_log_stats)."""
    from services.workers.embedded import CeleryLibrary, wait_for
    from services.workers.local_cluster import Worker, worker_env
    from shared.settings import load_settings

    source = workdir / f"source-{workers}"
    source.mkdir(parents=True)
    for path in files:
        shutil.copy(path, source / path.name)
    data_dir = workdir / f"data-{workers}"
    settings = {"worker_concurrency": workers, "ingest_chunk_size": chunk_size}
    worker = Worker(worker_env(redis_url, data_dir, **settings), workdir / f"worker-{workers}.log").start()
    try:
        worker.wait_ready()
        library = CeleryLibrary(load_settings(mode="scale-out", redis_url=redis_url, data_dir=data_dir, **settings))
        started = time.perf_counter()
        job_id = library.start(str(source))
        progress = wait_for(library.jobs, job_id, poll_s=0.05)
        elapsed = time.perf_counter() - started
        if progress.done != len(files):
            raise click.ClickException(f"the refresh ingested {progress.done} of {len(files)}: see {worker.log_path}")
    finally:
        worker.stop()
    return len(files) / elapsed, {"elapsed_s": elapsed, **_worker_log_stats(worker.log_path)}


@click.command(name="ingest")
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("../shared/data"),
    show_default=True,
    help="A folder laid out like ../shared/data (its looks/images are used), or a folder of look images.",
)
@click.option(
    "--n",
    default=96,
    show_default=True,
    type=click.IntRange(4),
    help="Looks per measurement (a few dozen are dominated by the job's fixed start-up cost).",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(1),
    default=None,
    help="Looks per ingestion task [default: LOOKBOOK_INGEST_CHUNK_SIZE, what a deployment runs]. Each "
    "task's store write changes hands between processes on the embedded store, so small chunks cost more.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the figures as JSON to this file.",
)
def bench_ingest(data: Path, n: int, chunk_size: int | None, json_path: Path | None) -> None:
    """Ingestion throughput (looks/s) of a refresh on 1 and 2 Celery worker processes, on a throwaway
    redis-server and store, beside the bare Analyze throughput of one process, in the same run
    (timed before and after the refreshes; the ratios use the mean).

    Each worker process runs one torch thread, like the bare Analyze, so per-process figures compare.
    Two bare Analyze processes side by side show what the machine itself gives two processes. The
    workers' `store lease taken` log lines give what taking turns on the embedded store cost.
    Needs redis-server on PATH (`bash scripts/ensure_redis.sh`).
    """
    from services.workers.local_cluster import redis_server
    from shared.settings import load_settings

    files = _pick_looks(data, n)
    settings = load_settings()
    chunk_size = chunk_size or settings.ingest_chunk_size
    click.echo(f"bare Analyze on {n} looks ...", err=True)
    # In a process of its own, like every other measurement: this one only polls the job, and with
    # the models loaded here it used about a tenth of a core while the workers ran (likely its GCs).
    (bare_before,) = _bare_analyze_parallel(files, 1)
    click.echo(f"bare Analyze on {n} looks, 2 processes at once ...", err=True)
    side_by_side = _bare_analyze_parallel(files, 2)
    results: dict[str, Any] = {
        "n": n,
        "chunk_size": chunk_size,
        "bare_analyze_before_looks_per_s": bare_before,
        "bare_analyze_2_processes_looks_per_s": side_by_side,
        "ingest": {},
    }
    with tempfile.TemporaryDirectory(prefix="lookbook-bench-") as tmp:
        workdir = Path(tmp)
        try:
            with redis_server(workdir / "redis") as redis_url:
                for workers in (1, 2):
                    click.echo(f"refresh on {workers} worker process(es) ...", err=True)
                    rate, lease = _ingest(files, workers, workdir, redis_url, chunk_size)
                    results["ingest"][str(workers)] = {"looks_per_s": rate, "per_worker_looks_per_s": rate / workers,
                                                       **lease}
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
    # This machine's speed drifts within a minute: the reference is timed before and after the
    # refreshes, and the ratios are against the mean of the two.
    click.echo(f"bare Analyze on {n} looks, again ...", err=True)
    (bare_after,) = _bare_analyze_parallel(files, 1)
    bare = (bare_before + bare_after) / 2
    results.update(bare_analyze_after_looks_per_s=bare_after, bare_analyze_looks_per_s=bare)
    for row in results["ingest"].values():
        row["per_worker_vs_bare"] = row["per_worker_looks_per_s"] / bare
    lines = [
        f"{n} looks, {chunk_size} per ingestion task",
        f"{'path':<34}{'looks/s':>10}{'per process':>13}{'vs bare':>9}",
        f"{'bare Analyze (1 process), mean':<34}{bare:>10.2f}{bare:>13.2f}{1.0:>9.2f}"
        f"   (before {bare_before:.2f}, after {bare_after:.2f})",
        f"{'bare Analyze (2 processes at once)':<34}{sum(side_by_side):>10.2f}"
        f"{sum(side_by_side) / 2:>13.2f}{sum(side_by_side) / 2 / bare:>9.2f}",
    ]
    for workers, row in results["ingest"].items():
        lines.append(
            f"{f'refresh, {workers} worker process(es)':<34}{row['looks_per_s']:>10.2f}"
            f"{row['per_worker_looks_per_s']:>13.2f}{row['per_worker_vs_bare']:>9.2f}"
        )
    lines.append("embedded store lease (Qdrant Edge: one process per directory, the workers take turns):")
    for workers, row in results["ingest"].items():
        lines.append(
            f"  {workers} worker process(es): taken {row['leases_taken']} times in {row['elapsed_s']:.1f} s, "
            f"{row['lease_wait_s']:.2f} s waiting for it, {row['shard_open_s']:.2f} s opening the shard"
        )
    lines.append("where each worker process's time went (share of the refresh's wall time; per look: ms):")
    lines.append(f"  {'process':<22}{'tasks':>6}{'looks':>6}{'ingest_look':>13}{'store write':>13}"
                 f"{'rest of task':>14}{'outside tasks':>15}{'ms/look':>9}")
    for workers, row in results["ingest"].items():
        for pid, p in sorted(row["processes"].items()):
            elapsed = row["elapsed_s"]
            rest = p["task_s"] - p["ingest_s"] - p["write_s"]
            lines.append(
                f"  {f'{workers} worker(s), pid {pid}':<22}{p['tasks']:>6}{p['looks']:>6}"
                f"{p['ingest_s'] / elapsed:>13.1%}{p['write_s'] / elapsed:>13.1%}{rest / elapsed:>14.1%}"
                f"{1 - p['task_s'] / elapsed:>15.1%}{1000 * p['ingest_s'] / max(1, p['looks']):>9.0f}"
            )
    lines.append(f"  bare Analyze: {1000 / bare:.0f} ms/look alone; {2000 / sum(side_by_side):.0f} ms/look with "
                 "2 processes at once")
    click.echo("\n".join(lines))
    text = json.dumps(results, indent=2)
    click.echo(text)
    if json_path is not None:
        json_path.write_text(text + "\n")
        click.echo(f"wrote {json_path}", err=True)
    sys.stdout.flush()


def register(main: click.Group) -> None:
    group = main.commands["bench"]
    assert isinstance(group, click.Group)
    group.add_command(bench_ingest)
