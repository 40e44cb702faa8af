"""`lookbook bench ingest`: library ingestion throughput on 1 and 2 worker processes, beside bare Analyze."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def _pick_looks(data: Path, n: int) -> list[Path]:
    folder = data / "looks" / "images" if (data / "looks" / "images").is_dir() else data
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if len(files) < n:
        raise click.ClickException(f"{folder} has {len(files)} images, fewer than --n {n}: lower --n")
    return files[:n]


def _bare_pass(files: list[Path], settings: Any) -> Callable[[], float]:
    """The same Analyze the workers run (vision pipeline + quality), one thread, models loaded and
    warmed up: returns a function that times one pass over the files (looks/s)."""
    import torch

    from services.workers.refresh import QualityCheckedAnalyzer, limits_of, local_analyzer
    from shared.models.quality import load_quality

    torch.set_num_threads(1)
    analyzer = QualityCheckedAnalyzer(local_analyzer(settings), load_quality(settings.models_dir), limits_of(settings))
    datas = [p.read_bytes() for p in files]
    for data in datas[:2]:  # warm-up: first calls pay for lazy init
        analyzer.analyze_sync(data, want_quality=True)

    def timed_pass() -> float:
        started = time.perf_counter()
        for data in datas:
            analyzer.analyze_sync(data, want_quality=True)
        return len(datas) / (time.perf_counter() - started)

    return timed_pass


def _bare_server(files: list[Path], conn: Any) -> None:
    """A spawned process holding bare Analyze: one timed pass per request on `conn`, until None."""
    from shared.malloc import tune_malloc
    from shared.settings import load_settings

    tune_malloc()  # as a worker process runs (services/workers/__main__.py)
    timed_pass = _bare_pass(files, load_settings())
    conn.send("ready")
    while conn.recv() is not None:
        conn.send(timed_pass())


class _BareReference:
    """Bare Analyze in a spawned process that keeps its models loaded, timing a pass on request.

    Between passes it blocks on its pipe and uses no CPU, so it can stay up while the workers run,
    and each refresh is timed between two passes of it: this machine's speed drifts by 10-20%
    within minutes (other jobs beside it), more than the gap the ratios are there to show.
    Several of them started and then asked together run their passes side by side.
    """

    def __init__(self, files: list[Path]) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_bare_server, args=(files, child), daemon=True)
        self._process.start()  # loads its models while the caller goes on
        self._ready = False

    def _receive(self) -> Any:
        if not self._conn.poll(600):
            raise click.ClickException("the bare Analyze process gave no answer in 600 s: see its output above")
        try:
            return self._conn.recv()
        except EOFError:
            raise click.ClickException("the bare Analyze process exited: see its output above") from None

    def wait_ready(self) -> None:
        if not self._ready:
            self._receive()  # "ready"
            self._ready = True

    def start_pass(self) -> None:
        self.wait_ready()
        self._conn.send("pass")

    def result(self) -> float:
        return float(self._receive())

    def measure(self) -> float:
        self.start_pass()
        return self.result()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()


def _bare_analyze_parallel(files: list[Path], processes: int) -> list[float]:
    """Looks/s of each of `processes` bare Analyze processes running at once, each on all the files
    (their passes start together, once every one has loaded its models).

    What this machine gives several single-threaded torch processes side by side, before any queue,
    store or worker is involved: the ceiling for the per-process ingestion figures.
    """
    references = [_BareReference(files) for _ in range(processes)]
    try:
        for reference in references:
            reference.wait_ready()
        for reference in references:
            reference.start_pass()
        return [reference.result() for reference in references]
    finally:
        for reference in references:
            reference.close()


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
    files: list[Path], workers: int, workdir: Path, redis_url: str, chunk_size: int, tag: str
) -> tuple[float, dict[str, Any]]:
    """Looks/s of a whole refresh on `workers` Celery processes (models loaded before the clock starts),
    and where the workers' time went (_worker_log_stats)."""
    from services.workers.embedded import CeleryLibrary, wait_for
    from services.workers.local_cluster import Worker, worker_env
    from shared.settings import load_settings

    source = workdir / f"source-{tag}"
    source.mkdir(parents=True)
    for path in files:
        shutil.copy(path, source / path.name)
    data_dir = workdir / f"data-{tag}"
    settings = {"worker_concurrency": workers, "ingest_chunk_size": chunk_size}
    worker = Worker(worker_env(redis_url, data_dir, **settings), workdir / f"worker-{tag}.log").start()
    try:
        worker.wait_ready()
        library = CeleryLibrary(load_settings(mode="scale-out", redis_url=redis_url, data_dir=data_dir, **settings))
        started = time.time()
        job_id = library.start(str(source))
        # Timed by the job board itself, from this call to the last look's mark (its updated_at), so
        # the polling can be slow: polling every 50 ms took CPU from the cores the workers need.
        progress = wait_for(library.jobs, job_id, poll_s=0.5)
        elapsed = (progress.updated_at or time.time()) - started
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
    "--rounds",
    default=3,
    show_default=True,
    type=click.IntRange(1),
    help="Rounds of (refresh on 1 worker, refresh on 2), each refresh timed between two bare Analyze passes; "
    "the summary is the median over the rounds.",
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
def bench_ingest(data: Path, n: int, rounds: int, chunk_size: int | None, json_path: Path | None) -> None:
    """Ingestion throughput (looks/s) of a refresh on 1 and 2 Celery worker processes, on a throwaway
    redis-server and store, beside the bare Analyze throughput of one process, in the same run.

    Each refresh is timed between two passes of the bare Analyze (one spawned process that keeps
    its models loaded and idles between passes), and its ratio is against the mean of those two:
    this machine's speed drifts within minutes, so a reference timed far from a refresh says little
    about it. `--rounds` repeats the pair of refreshes; the summary gives the median, min and max.
    Each worker process runs one torch thread, like the bare Analyze, so per-process figures
    compare. Two bare Analyze processes side by side show what the machine itself gives two
    processes. The workers' log lines give where each worker process's time went.
    Needs redis-server on PATH (`bash scripts/ensure_redis.sh`).
    """
    import statistics

    from services.workers.local_cluster import redis_server
    from shared.settings import load_settings

    files = _pick_looks(data, n)
    settings = load_settings()
    chunk_size = chunk_size or settings.ingest_chunk_size
    total_steps = 2 + 4 * rounds
    step = 0

    def say(what: str) -> None:
        nonlocal step
        step += 1
        click.echo(f"[{step}/{total_steps}] {what} ...", err=True)

    say(f"bare Analyze on {n} looks, 2 processes at once")
    side_by_side = _bare_analyze_parallel(files, 2)
    say(f"bare Analyze on {n} looks, 1 process")
    reference = _BareReference(files)
    results: dict[str, Any] = {
        "n": n,
        "chunk_size": chunk_size,
        "rounds": rounds,
        "bare_analyze_2_processes_looks_per_s": side_by_side,
        "ingest": {"1": {"rounds": []}, "2": {"rounds": []}},
    }
    try:
        bare_runs = [reference.measure()]
        results["bare_analyze_passes_looks_per_s"] = bare_runs
        with tempfile.TemporaryDirectory(prefix="lookbook-bench-") as tmp:
            workdir = Path(tmp)
            try:
                with redis_server(workdir / "redis") as redis_url:
                    for r in range(rounds):
                        for workers in (1, 2):
                            say(f"round {r + 1}: refresh on {workers} worker process(es)")
                            rate, stats = _ingest(files, workers, workdir, redis_url, chunk_size, f"{workers}-r{r}")
                            say(f"round {r + 1}: bare Analyze again")
                            bare_runs.append(reference.measure())
                            bare = (bare_runs[-2] + bare_runs[-1]) / 2
                            results["ingest"][str(workers)]["rounds"].append(
                                {"looks_per_s": rate, "per_worker_looks_per_s": rate / workers,
                                 "bare_before": bare_runs[-2], "bare_after": bare_runs[-1],
                                 "per_worker_vs_bare": rate / workers / bare, **stats})
            except RuntimeError as exc:
                raise click.ClickException(str(exc)) from None
    finally:
        reference.close()
    for row in results["ingest"].values():
        ratios = [x["per_worker_vs_bare"] for x in row["rounds"]]
        row.update(per_worker_vs_bare_median=statistics.median(ratios), per_worker_vs_bare_min=min(ratios),
                   per_worker_vs_bare_max=max(ratios))
    first = bare_runs[0]
    lines = [
        f"{n} looks, {chunk_size} per ingestion task, {rounds} round(s); each refresh against the mean of the bare "
        "Analyze passes just before and after it",
        f"{'path':<40}{'looks/s':>10}{'per process':>13}{'vs bare':>9}",
        f"{'bare Analyze (2 processes at once)':<40}{sum(side_by_side):>10.2f}"
        f"{sum(side_by_side) / 2:>13.2f}{sum(side_by_side) / 2 / first:>9.2f}   (against the first bare pass, "
        f"{first:.2f})",
    ]
    for r in range(rounds):
        for key in ("1", "2"):
            row = results["ingest"][key]["rounds"][r]
            lines.append(
                f"{f'round {r + 1}: refresh, {key} worker process(es)':<40}{row['looks_per_s']:>10.2f}"
                f"{row['per_worker_looks_per_s']:>13.2f}{row['per_worker_vs_bare']:>9.2f}"
                f"   (bare {row['bare_before']:.2f} before, {row['bare_after']:.2f} after)"
            )
    lines.append("per worker process vs bare Analyze, over the rounds:")
    for key, row in results["ingest"].items():
        lines.append(f"  {key} worker process(es): median {row['per_worker_vs_bare_median']:.2f} "
                     f"(min {row['per_worker_vs_bare_min']:.2f}, max {row['per_worker_vs_bare_max']:.2f})")
    lines.append("embedded store lease (Qdrant Edge: one process per directory, the workers take turns):")
    for key, row in results["ingest"].items():
        for r, x in enumerate(row["rounds"]):
            lines.append(
                f"  round {r + 1}, {key} worker process(es): taken {x['leases_taken']} times in "
                f"{x['elapsed_s']:.1f} s, {x['lease_wait_s']:.2f} s waiting for it, {x['shard_open_s']:.2f} s "
                "opening the shard"
            )
    lines.append("where each worker process's time went (share of the refresh's wall time; per look: ms):")
    lines.append(f"  {'process':<30}{'tasks':>6}{'looks':>6}{'ingest_look':>13}{'store write':>13}"
                 f"{'rest of task':>14}{'outside tasks':>15}{'ms/look':>9}")
    for r in range(rounds):
        for key in ("1", "2"):
            x = results["ingest"][key]["rounds"][r]
            elapsed = x["elapsed_s"]
            for pid, p in sorted(x["processes"].items()):
                rest = p["task_s"] - p["ingest_s"] - p["write_s"]
                lines.append(
                    f"  {f'round {r + 1}, {key} worker(s), pid {pid}':<30}{p['tasks']:>6}{p['looks']:>6}"
                    f"{p['ingest_s'] / elapsed:>13.1%}{p['write_s'] / elapsed:>13.1%}{rest / elapsed:>14.1%}"
                    f"{1 - p['task_s'] / elapsed:>15.1%}{1000 * p['ingest_s'] / max(1, p['looks']):>9.0f}"
                )
    lines.append(f"  bare Analyze: {1000 / statistics.mean(bare_runs):.0f} ms/look alone (mean of the passes); "
                 f"{2000 / sum(side_by_side):.0f} ms/look with 2 processes at once")
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
