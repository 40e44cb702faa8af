"""`lookbook bench match`: MatchOutfit latency and throughput against a running gateway, beside the bare
forward time of the models a query runs, measured in the same run on the same machine."""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import grpc

from services.commands.common import api_metadata, fail, gateway_channel, settings_or_exit


def query_photos(data_dir: Path, count: int, min_side: int) -> list[bytes]:
    """Top and bottom crops cut from the annotated looks of DIR, as JPEG bytes (shopper-like queries)."""

    from shared.images import crop_jpeg
    from shared.library import SourceError, read_source

    source = data_dir / "looks" if (data_dir / "looks" / "looks.json").is_file() else data_dir
    try:
        items = [i for i in read_source(source) if i.known]
    except SourceError as exc:
        fail(str(exc))
    photos: list[bytes] = []
    for item in items:
        # Boxes under the service's LOOKBOOK_MIN_IMAGE_SIDE would be refused as invalid input.
        photos.extend(
            crop_jpeg(item.path, known.box)
            for known in item.known
            if min(known.box[2] - known.box[0], known.box[3] - known.box[1]) >= min_side
        )
        if len(photos) >= count:
            break
    if not photos:
        fail(f"no annotated looks under {data_dir}: pass ../shared/data or demo/")
    return photos[:count]


class BareForward:
    """The forward time of every model a query runs, and nothing else.

    One analyze per photo records what the backbone is fed (the detector's pass and the crops')
    and the calls of the heads on top of it: the detector head, the category head, the appearance
    projection and the compatibility projection, with their arguments. `time(i)` replays those for
    photo i: the backbone passes on inputs of the same shapes, then the heads on the recorded
    arguments. Decoding, resizing, colour features, search, ranking and gRPC are left out.
    """

    def __init__(self, photos: list[bytes], settings) -> None:  # type: ignore[no-untyped-def]
        from services.runtime import local_vision

        vision = local_vision(settings)
        pipeline = vision.pipeline
        self.model_version = vision.model_version
        self.backbone = pipeline.backbone
        self.shapes: list[list[tuple[int, ...]]] = []
        self.heads: list[list[tuple[Any, tuple[Any, ...]]]] = []
        current: list[tuple[int, ...]] = []
        calls: list[tuple[Any, tuple[Any, ...]]] = []
        hooks = [
            # Every backbone pass, whichever way the pipeline drives it (whole forward, or stage by
            # stage for the detector and the compatibility stem), starts at conv_stem.
            self.backbone.conv_stem.register_forward_pre_hook(lambda _m, args: current.append(tuple(args[0].shape)))
        ]
        if pipeline.detector is not None:
            head = pipeline.detector.head
            hooks.append(head.register_forward_pre_hook(lambda _m, args: calls.append((head, args))))
        restore = []
        for owner, name in ((pipeline.category, "probabilities"), (pipeline.embedding_model, "embed"),
                            (pipeline.compat, "project_pooled")):
            if owner is None or not hasattr(owner, name):
                continue
            original = getattr(owner, name)

            def recording(*args: Any, _original: Any = original) -> Any:
                calls.append((_original, args))
                return _original(*args)

            setattr(owner, name, recording)
            restore.append((owner, name))
        try:
            for photo in photos:
                current, calls = [], []
                vision.analyze_sync(photo, single_garment=True)
                self.shapes.append(list(current))
                self.heads.append(list(calls))
        finally:
            for hook in hooks:
                hook.remove()
            for owner, name in restore:
                delattr(owner, name)  # the instance attribute goes; the class method is back
        self.samples: list[float] = []

    def time(self, index: int, repeats: int = 1) -> float:
        """Median over `repeats` of the model forwards of photo `index`, in ms; kept in `samples`."""
        import torch

        b = self.backbone
        tensors = [torch.randn(shape) for shape in self.shapes[index % len(self.shapes)]]
        heads = self.heads[index % len(self.heads)]
        runs = []
        with torch.inference_mode():
            for _ in range(repeats):
                started = time.perf_counter()
                for t in tensors:
                    b.forward_head(b.forward_features(t), pre_logits=True)
                for call, args in heads:
                    call(*args)
                runs.append((time.perf_counter() - started) * 1000)
        self.samples.append(statistics.median(runs))
        return self.samples[-1]

    @property
    def passes_per_query(self) -> float:
        return statistics.mean(len(s) for s in self.shapes)


def load(  # type: ignore[no-untyped-def]
    stub, photos: list[bytes], requests: int, concurrency: int, metadata, timeout: float, between=None
):
    """`requests` MatchOutfit calls from `concurrency` threads. With one thread, `between(i)` (if given)
    runs after request i, outside the timed call; its time is left out of the throughput."""
    from lookbook.outfit.v1 import outfit_pb2

    latencies: list[float] = []
    ratios: list[float] = []  # each request's latency over the bare forward timed right after it
    errors = 0
    paused = 0.0
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        nonlocal errors, paused
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            request = outfit_pb2.MatchOutfitRequest(image=photos[index % len(photos)])
            started = time.perf_counter()
            try:
                stub.MatchOutfit(request, timeout=timeout, metadata=metadata)
            except grpc.RpcError:  # counted and reported; the run goes on
                with lock:
                    errors += 1
                continue
            latency = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(latency)
            if between is not None and concurrency == 1:
                pause = time.perf_counter()
                ratios.append(latency / between(index))
                paused += time.perf_counter() - pause

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(worker)
    wall = time.perf_counter() - started - paused
    latencies.sort()
    if not latencies:
        fail("every request failed: is the gateway serving (make run)?")
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": errors,
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "throughput_rps": len(latencies) / wall,
        "paired_ratio_p50": statistics.median(ratios) if ratios else None,
    }


@click.command(name="match")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="A data dir in the ../shared/data layout (or demo/): query photos are crops of its looks.",
)
@click.option("--gateway", default=None, help="host:port of the running gateway [default: from settings].")
@click.option("--api-key", default=None, help="API key, when the gateway requires one.")
@click.option(
    "--requests", "n_requests", type=click.IntRange(1), default=200, show_default=True, help="Requests per level."
)
@click.option("--concurrency", default="1,4,16", show_default=True, help="Comma-separated concurrency levels.")
@click.option(
    "--photos", type=click.IntRange(1), default=100, show_default=True, help="Distinct query photos to cycle through."
)
@click.option(
    "--repeats",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Timed repeats of the bare forward when no concurrency-1 level runs (else one per request).",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def bench_match(
    data_dir: Path,
    gateway: str | None,
    api_key: str | None,
    n_requests: int,
    concurrency: str,
    photos: int,
    repeats: int,
    json_out: Path | None,
) -> None:
    """Latency (p50, p99) and throughput of MatchOutfit at each concurrency, beside the bare model forward."""
    from lookbook.outfit.v1 import outfit_pb2_grpc
    from tqdm import tqdm

    settings = settings_or_exit()
    levels = [int(c) for c in concurrency.split(",") if c.strip()]
    if not levels or min(levels) < 1:
        fail("--concurrency takes positive whole numbers, e.g. 1,4,16")
    queries = query_photos(data_dir, photos, settings.min_image_side)
    click.echo(f"recording the backbone passes of {len(queries)} queries ...", err=True)
    bare = BareForward(queries, settings)
    results = []
    with gateway_channel(settings, gateway) as channel:
        stub = outfit_pb2_grpc.OutfitServiceStub(channel)
        metadata = api_metadata(settings, api_key)
        load(stub, queries, min(10, n_requests), 1, metadata, 60)  # warm-up
        for i in range(min(10, len(queries))):
            bare.time(i)  # warm-up, dropped below
        bare.samples.clear()
        for level in tqdm(levels, desc="concurrency levels", file=sys.stderr):
            # At concurrency 1 the bare forward of each query is timed right after its request, so
            # both see the same machine (this one's speed drifts by a third within seconds).
            results.append(load(stub, queries, n_requests, level, metadata, 120, between=bare.time))
    if not bare.samples:  # no concurrency-1 level: time the bare forward on its own
        for i in range(min(len(queries), 20)):
            bare.time(i, repeats)
    bare_p50 = statistics.median(bare.samples)
    interleaved = 1 in levels
    click.echo(
        f"bare forward per query: {bare_p50:.1f} ms ({bare.passes_per_query:.1f} backbone passes, "
        f"{bare.model_version}; {len(bare.samples)} samples"
        f"{', interleaved with the concurrency-1 requests' if interleaved else ''})"
    )
    click.echo(
        f"{'concurrency':>11} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} {'p50/bare':>9} {'paired':>7} {'errors':>6}"
    )
    for r in results:
        paired = f"{r['paired_ratio_p50']:>7.2f}" if r["paired_ratio_p50"] is not None else f"{'-':>7}"
        click.echo(
            f"{r['concurrency']:>11} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['throughput_rps']:>7.1f} "
            f"{r['p50_ms'] / bare_p50:>9.2f} {paired} {r['errors']:>6}"
        )
    if interleaved:
        click.echo("paired: the median over requests of (latency / bare forward of that query timed right after it)")
    if json_out:
        summary = {
            "p50_ms": bare_p50,
            "samples": len(bare.samples),
            "interleaved": interleaved,
            "passes_per_query": bare.passes_per_query,
            "model_version": bare.model_version,
        }
        json_out.write_text(json.dumps({"bare_forward": summary, "levels": results}, indent=2))


def register(main: click.Group) -> None:
    group = main.commands["bench"]
    assert isinstance(group, click.Group)
    group.add_command(bench_match)
