"""`lookbook bench store`: upsert throughput, search latency and recall@10 of the embedded look store.

The looks are real: backbone embeddings of the garments in ../shared/data, reduced to the store's
dimension by PCA fitted on those features, and expanded to N by mixing neighbouring garments and
adding noise around them, because random Gaussian vectors are HNSW's worst case and not what we serve.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import json
import logging
import os
import shutil
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CACHE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "bench_store"
DIM = 256
# Vectors are generated in fixed chunks with a seed per chunk, so the upsert pass and the exact
# ground-truth pass see identical looks without holding all N in memory.
CHUNK = 10_000
APPROVED_SHARE = 0.8
EMBED_VERSION = "bench-base-1"  # bump when the base-embedding recipe changes, to refresh the cache
STATUSES = ("approved", "pending", "rejected", "featured")

TOP_LABELS = {
    "T-Shirt",
    "Longsleeve",
    "Shirt",
    "Polo",
    "Blazer",
    "Hoodie",
    "Outwear",
    "Top",
    "Undershirt",
    "Blouse",
    "Body",
}
BOTTOM_LABELS = {"Pants", "Shorts", "Skirt"}


# --------------------------------------------------------------------------- real base embeddings


@dataclass(frozen=True)
class GarmentImage:
    """One real garment: a whole product photo, or a box cut from a look photo."""

    path: Path
    kind: str  # "top" or "bottom"
    box: tuple[int, int, int, int] | None = None


def garment_images(data_dir: Path) -> list[GarmentImage]:
    """Every top and bottom in the team data: look boxes, phone photos and product shots."""
    found: list[GarmentImage] = []
    looks_json = data_dir / "looks" / "looks.json"
    if looks_json.is_file():
        looks = json.loads(looks_json.read_text())["looks"]
        for rec in looks.values():
            for key, kind in (("upper_box_xyxy", "top"), ("lower_box_xyxy", "bottom")):
                if key in rec:
                    box = tuple(int(v) for v in rec[key])
                    found.append(GarmentImage(data_dir / "looks" / rec["image"], kind, box))  # type: ignore[arg-type]
    garments_csv = data_dir / "garments" / "garments.csv"
    if garments_csv.is_file():
        with garments_csv.open() as handle:
            for row in csv.DictReader(handle):
                kind = "top" if row["label"] in TOP_LABELS else "bottom" if row["label"] in BOTTOM_LABELS else ""
                if kind:
                    found.append(GarmentImage(data_dir / "garments" / row["image"], kind))
    products_csv = data_dir / "outfits" / "products.csv"
    if products_csv.is_file():
        with products_csv.open() as handle:
            for row in csv.DictReader(handle):
                kind = {"Tops": "top", "Bottoms": "bottom"}.get(row["category"], "")
                if kind and row["image"]:
                    found.append(GarmentImage(data_dir / "outfits" / row["image"], kind))
    return [g for g in found if g.path.is_file()]


def _cache_key(images: list[GarmentImage]) -> str:
    from shared.models.backbone import WEIGHTS_SHA256

    digest = hashlib.sha256(f"{EMBED_VERSION}|{WEIGHTS_SHA256}".encode())
    for g in images:
        stat = g.path.stat()
        digest.update(f"{g.path}|{g.kind}|{g.box}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def base_features(data_dir: Path, *, cache_dir: Path = CACHE_DIR, batch: int = 32) -> dict[str, np.ndarray]:
    """Pooled 1280-d backbone features of every real top and bottom, cached by content."""
    images = garment_images(data_dir)
    if not images:
        raise click.ClickException(
            f"no garment images under {data_dir}: pass --data-dir pointing at the team data (../shared/data)"
        )
    cache = cache_dir / f"base_{_cache_key(images)}.npz"
    if cache.is_file():
        with np.load(cache) as saved:
            return {"top": saved["top"], "bottom": saved["bottom"]}

    import torch
    from PIL import Image
    from tqdm import tqdm

    from shared.models.backbone import Preprocess, Squash, shared_backbone

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model: Any = shared_backbone()  # timm's forward_head/forward_features are untyped
    whole, crop = Preprocess(), Squash()
    feats: dict[str, list[np.ndarray]] = {"top": [], "bottom": []}
    with torch.inference_mode(), tqdm(total=len(images), desc="embedding real garments", unit="img") as bar:
        for start in range(0, len(images), batch):
            part = images[start : start + batch]
            tensors = []
            for g in part:
                with Image.open(g.path) as image:
                    image.load()
                    tensors.append(crop(image.crop(g.box)) if g.box else whole(image))
            pooled = model.forward_head(model.forward_features(torch.stack(tensors)), pre_logits=True)
            for g, row in zip(part, pooled.numpy(), strict=True):
                feats[g.kind].append(row.astype(np.float32))
            bar.update(len(part))
    result = {kind: np.stack(rows) for kind, rows in feats.items()}
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache.with_suffix(".tmp.npz"), top=result["top"], bottom=result["bottom"])
    cache.with_suffix(".tmp.npz").replace(cache)
    return result


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def project_base(features: dict[str, np.ndarray], dim: int = DIM, seed: int = 0) -> dict[str, np.ndarray]:
    """PCA fitted on all real features, to `dim`, then unit length (the store uses cosine)."""
    from sklearn.decomposition import PCA

    everything = np.concatenate(list(features.values()))
    pca = PCA(n_components=min(dim, *everything.shape), random_state=seed).fit(everything)
    projected = {kind: pca.transform(rows) for kind, rows in features.items()}
    if pca.n_components_ < dim:  # fewer real garments than dimensions: pad so the store's size holds
        projected = {k: np.pad(v, ((0, 0), (0, dim - v.shape[1]))) for k, v in projected.items()}
    return {kind: _unit(rows) for kind, rows in projected.items()}


# --------------------------------------------------------------------------- expansion to N looks


@dataclass(frozen=True)
class Expansion:
    """How N synthetic looks are made from the real garments (recorded with every result)."""

    neighbours: int = 10  # a look mixes a real garment with one of its nearest real garments
    mix_low: float = 0.5  # weight of the first garment, uniform in [mix_low, 1]
    noise: float = 0.5  # Gaussian noise norm, as a fraction of the median nearest-real-neighbour distance
    seed: int = 1234


class LookSynth:
    """Deterministic synthetic looks: chunk c of the library is always the same vectors and statuses."""

    def __init__(self, base: dict[str, np.ndarray], expansion: Expansion) -> None:
        self.base = base
        self.expansion = expansion
        self.neighbours: dict[str, np.ndarray] = {}
        self.sigma: dict[str, float] = {}
        for kind, rows in base.items():
            sims = rows @ rows.T
            np.fill_diagonal(sims, -np.inf)
            order = np.argsort(-sims, axis=1)[:, : expansion.neighbours]
            self.neighbours[kind] = order
            nearest = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sims[np.arange(len(rows)), order[:, 0]]))
            # Per-dimension sigma, so that the expected noise norm is `noise` x the median NN distance.
            self.sigma[kind] = float(expansion.noise * np.median(nearest) / np.sqrt(rows.shape[1]))

    def _vectors(self, kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
        rows, near = self.base[kind], self.neighbours[kind]
        first = rng.integers(0, len(rows), n)
        second = near[first, rng.integers(0, near.shape[1], n)]
        weight = rng.uniform(self.expansion.mix_low, 1.0, (n, 1)).astype(np.float32)
        mixed = weight * rows[first] + (1.0 - weight) * rows[second]
        mixed += rng.normal(0.0, self.sigma[kind], mixed.shape).astype(np.float32)
        return _unit(mixed)

    def chunk(self, index: int, size: int = CHUNK) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Vectors by name and the status of looks [index*CHUNK, index*CHUNK + size)."""
        rng = np.random.default_rng([self.expansion.seed, index])
        vectors = {kind: self._vectors(kind, rng, size) for kind in ("top", "bottom")}
        # 75% approved + 5% featured: the default search filter (approved or featured) keeps ~80%.
        statuses = rng.choice(np.array(STATUSES), size, p=[0.75, 0.15, 0.05, 0.05])
        return vectors, statuses

    def chunks(self, n: int) -> Iterator[tuple[int, dict[str, np.ndarray], np.ndarray]]:
        for index, start in enumerate(range(0, n, CHUNK)):
            vectors, statuses = self.chunk(index)
            size = min(CHUNK, n - start)
            yield start, {k: v[:size] for k, v in vectors.items()}, statuses[:size]

    def queries(self, count: int, salt: int = 0) -> dict[str, np.ndarray]:
        """Queries drawn like the looks but from another seed, so none is in the library."""
        rng = np.random.default_rng([self.expansion.seed, 10**9 + salt])
        return {kind: self._vectors(kind, rng, count) for kind in ("top", "bottom")}


def exact_neighbours(
    synth: LookSynth, n: int, queries: dict[str, np.ndarray], k: int, searchable: bool
) -> dict[str, np.ndarray]:
    """Brute-force top-k ids per query by cosine, streaming the library in chunks (numpy, not the engine)."""
    best: dict[str, tuple[np.ndarray, np.ndarray]] = {
        kind: (np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64))
        for kind, q in queries.items()
    }
    for start, vectors, statuses in synth.chunks(n):
        keep = np.isin(statuses, ("approved", "featured")) if searchable else np.ones(len(statuses), bool)
        ids = np.arange(start, start + len(statuses))[keep]
        for kind, q in queries.items():
            scores = q @ vectors[kind][keep].T
            top_scores, top_ids = best[kind]
            all_scores = np.concatenate([top_scores, scores], axis=1)
            all_ids = np.concatenate([top_ids, np.broadcast_to(ids, scores.shape)], axis=1)
            pick = np.argpartition(-all_scores, k - 1, axis=1)[:, :k]
            best[kind] = (np.take_along_axis(all_scores, pick, 1), np.take_along_axis(all_ids, pick, 1))
    return {kind: ids for kind, (_, ids) in best.items()}


# --------------------------------------------------------------------------- measuring the store


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _dir_bytes(path: Path) -> dict[str, int]:
    """Allocated bytes under path (files are sparse), split into vectors, HNSW graph, payload, WAL, rest."""
    parts = {"vectors": 0, "hnsw": 0, "payload_index": 0, "payload": 0, "wal": 0, "other": 0}
    for file in path.rglob("*"):
        if not file.is_file():
            continue
        size = file.stat().st_blocks * 512
        text = str(file.relative_to(path)).lower()
        if "/wal/" in f"/{text}":
            key = "wal"  # preallocated log segments: a fixed cost per shard, not per look
        elif "vector_storage" in text or "vectors" in text:
            key = "hnsw" if ("graph" in text or "links" in text or "hnsw" in text) else "vectors"
        elif "hnsw" in text or "graph" in text or "links" in text or "vector_index" in text:
            key = "hnsw"
        elif "payload_index" in text:
            key = "payload_index"  # kept in RAM: filters read it on every query
        elif "payload" in text:
            key = "payload"  # read only for the hits: may stay on disk
        else:
            key = "other"
        parts[key] += size
    parts["total"] = sum(parts.values())
    return parts


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _look_uuid(index: int) -> str:
    # Look i is UUID i+1, so a hit maps back to its index without a lookup table.
    return str(uuid.UUID(int=index + 1))


def _look_index(look_id: str) -> int:
    return uuid.UUID(look_id).int - 1


@dataclass
class StoreRun:
    """Everything measured for one library size."""

    n: int
    vectors_per_look: int
    hnsw_m: int
    hnsw_ef_construct: int
    hnsw_ef: int
    upsert_looks: int = 0  # looks written through LookStore.upsert; their rate is upsert_looks_per_s
    upsert_seconds: float = 0.0
    upsert_looks_per_s: float = 0.0
    bulk_load_seconds: float = 0.0  # the remaining looks, through the engine write
    index_seconds: float = 0.0
    search: dict[str, dict[str, float]] = field(default_factory=dict)
    disk_bytes: dict[str, int] = field(default_factory=dict)
    disk_bytes_per_look: float = 0.0
    rss_delta_bytes: int = 0
    rss_bytes_per_look: float = 0.0
    reopen_seconds: float = 0.0
    first_query_ms: float = 0.0
    search_cpus: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    build_cpus: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    segments: int = 0
    indexed_vectors: int = 0
    expansion: dict[str, Any] = field(default_factory=dict)


def _payload_record(index: int, status: str, rng: np.random.Generator) -> Any:
    from shared.store import LookRecord

    words = ("denim", "linen", "floral", "striped", "casual", "office", "summer", "knit", "leather", "boho")
    return LookRecord(
        look_id=_look_uuid(index),
        image_path=f"looks/bench/{index:08d}.jpg",
        width=550,
        height=830,
        top_box=(60.0, 160.0, 350.0, 420.0),
        bottom_box=(110.0, 380.0, 360.0, 740.0),
        tags=[str(w) for w in rng.choice(words, 2, replace=False)],
        colors={"top": ["blue"], "bottom": ["black"]},
        source="bench",
        quality_score=float(rng.uniform(0.5, 1.0)),
        status=status,  # type: ignore[arg-type]
        model_version="bench-1",
        created_at=1.7e9 + index,
        content_sha256=f"{index:064x}",
    )


def _bulk_write(
    store: Any,
    records: list[Any],
    vectors: dict[str, np.ndarray],
    compat_map: np.ndarray | None,
    batch: int,
) -> None:
    from dataclasses import replace

    now = time.time()
    version = store.live_version()
    items = []
    for j, record in enumerate(records):
        named = {"top": vectors["top"][j], "bottom": vectors["bottom"][j]}
        if compat_map is not None:
            named["top_compat"] = vectors["top"][j] @ compat_map
            named["bottom_compat"] = vectors["bottom"][j] @ compat_map
        # What LookStore.upsert stores for a new look: version 1, created and updated now.
        payload = replace(record, version=1, created_at=now, updated_at=now).to_payload()
        items.append((record.look_id, named, payload))
    for begin in range(0, len(items), batch):
        store._write_points(version, items[begin : begin + batch])


def _open(work: Path, m: int, ef_construct: int, ef: int) -> Any:
    from shared.settings import load_settings
    from shared.store import open_store

    settings = load_settings(data_dir=work, qdrant_url="", hnsw_m=m, hnsw_ef_construct=ef_construct, hnsw_ef=ef)
    return open_store(settings)


def run_size(
    n: int,
    synth: LookSynth,
    *,
    work: Path,
    m: int,
    ef_construct: int,
    ef: int,
    queries: int,
    compat_dim: int,
    with_compat: bool,
    batch: int,
    search_cpus: int | None = None,
    store_upsert_looks: int = 100_000,
    sweep_ef: tuple[int, ...] = (),
    progress: bool = True,
) -> StoreRun:
    from tqdm import tqdm

    from shared.store import SEARCHABLE, LookPoint

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    result = StoreRun(
        n=n,
        vectors_per_look=4 if with_compat else 2,
        hnsw_m=m,
        hnsw_ef_construct=ef_construct,
        hnsw_ef=ef,
        expansion=asdict(synth.expansion),
    )
    # Compat vectors, when asked for, are a fixed random orthogonal map of the appearance vectors.
    compat_map = np.linalg.qr(np.random.default_rng(7).normal(size=(DIM, compat_dim)))[0].astype(np.float32)
    store = _open(work, m, ef_construct, ef)
    store.ensure("bench-1", (DIM, compat_dim))
    rng = np.random.default_rng(99)
    through_api = 0
    with tqdm(total=n, desc=f"upsert {n:,} looks", unit="look", disable=not progress) as bar:
        for start, vectors, statuses in synth.chunks(n):
            records = [_payload_record(start + j, str(status), rng) for j, status in enumerate(statuses)]
            if start < store_upsert_looks:
                points = []
                for j, record in enumerate(records):
                    named = {"top": vectors["top"][j], "bottom": vectors["bottom"][j]}
                    if with_compat:
                        named["top_compat"] = vectors["top"][j] @ compat_map
                        named["bottom_compat"] = vectors["bottom"][j] @ compat_map
                    points.append(LookPoint(record=record, vectors=named))
                started = time.perf_counter()
                store.upsert(points, keep_curation=False, batch_size=batch)
                result.upsert_seconds += time.perf_counter() - started
                through_api += len(points)
            else:
                # The rest of a big library goes through the store's engine write (same ids, payloads and
                # vectors, minus the per-look Python validation), so 1M looks load in minutes.
                started = time.perf_counter()
                _bulk_write(store, records, vectors, compat_map if with_compat else None, batch)
                result.bulk_load_seconds += time.perf_counter() - started
            bar.update(len(records))
    result.upsert_looks = through_api
    result.upsert_looks_per_s = through_api / result.upsert_seconds
    click.echo(
        f"  upserted at {result.upsert_looks_per_s:,.0f} looks/s; building the HNSW index "
        f"(m={m}, ef_construct={ef_construct}) ...",
        err=True,
    )
    started = time.perf_counter()
    store.optimize()
    result.index_seconds = time.perf_counter() - started
    click.echo(f"  index built in {result.index_seconds:.1f} s", err=True)
    if search_cpus is not None:
        # Threads started from now on (the reopened shard's search pool) inherit the smaller CPU set.
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:search_cpus])
        result.search_cpus = len(os.sched_getaffinity(0))
    store.close()
    del store
    gc.collect()

    # Ground truth first, so its arrays are gone before the store's memory is measured.
    query_vectors = synth.queries(queries)
    truths = {}
    for searchable in (True, False):
        click.echo(f"  exact top-10 by brute force ({'filtered' if searchable else 'unfiltered'}) ...", err=True)
        truths[searchable] = exact_neighbours(synth, n, query_vectors, 10, searchable)
    gc.collect()

    # Reopen: what a restart costs, and the memory the opened library takes once searched.
    rss_before = _rss_bytes()
    started = time.perf_counter()
    store = _open(work, m, ef_construct, ef)
    result.reopen_seconds = time.perf_counter() - started
    probe = synth.queries(1)["top"][0]
    started = time.perf_counter()
    store.search("top", probe, limit=10)
    result.first_query_ms = (time.perf_counter() - started) * 1000
    try:  # the engine's own view: how the optimizer split the library, and how much of it is indexed
        info = store._shard(store.live_version()).info()
        result.segments = int(info.segments_count)
        result.indexed_vectors = int(info.indexed_vectors_count)
    except (AttributeError, TypeError):
        pass
    # Warm up with other queries, as a serving process is warm; the measured ones are never repeated.
    for kind, asked in synth.queries(20, salt=1).items():
        for q in asked:
            store.search(kind, q, limit=10)
            store.search(kind, q, limit=10, statuses=None)

    # The default ef first (its figures are the headline), then any other search beams on the same index.
    for beam in [ef, *(e for e in sweep_ef if e != ef)]:
        for searchable in (True, False):
            label = ("filtered" if searchable else "unfiltered") + ("" if beam == ef else f"@ef={beam}")
            truth = truths[searchable]
            latencies: list[float] = []
            hits = 0
            wanted = SEARCHABLE if searchable else None
            for kind, asked in query_vectors.items():
                for q, expected in zip(asked, truth[kind], strict=True):
                    started = time.perf_counter()
                    found = store.search(kind, q, limit=10, statuses=wanted, hnsw_ef=beam)
                    latencies.append((time.perf_counter() - started) * 1000)
                    got = {_look_index(s.look.look_id) for s in found}
                    hits += len(got & set(expected.tolist()))
            result.search[label] = {
                "queries": len(latencies),
                "p50_ms": round(_percentile(latencies, 50), 3),
                "p99_ms": round(_percentile(latencies, 99), 3),
                "mean_ms": round(statistics.fmean(latencies), 3),
                "recall_at_10": round(hits / (10 * len(latencies)), 4),
            }
        if beam == ef:
            result.rss_delta_bytes = _rss_bytes() - rss_before
    result.rss_bytes_per_look = round(result.rss_delta_bytes / n, 1)
    store.close()
    result.disk_bytes = _dir_bytes(work)
    result.disk_bytes_per_look = round((result.disk_bytes["total"] - result.disk_bytes["wal"]) / n, 1)
    return result


# --------------------------------------------------------------------------- command


@click.command("store")
@click.option(
    "--n",
    "sizes",
    type=click.IntRange(min=1000),
    multiple=True,
    default=(100_000,),
    show_default=True,
    help="Library size in looks; repeat for several sizes (e.g. --n 100000 --n 1000000).",
)
@click.option(
    "--queries",
    type=click.IntRange(min=10),
    default=250,
    show_default=True,
    help="Queries per vector (top and bottom), for each of filtered and unfiltered search.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="Team data whose garments give the real base embeddings.",
)
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=CACHE_DIR / "libraries",
    show_default=True,
    help="Where the benchmark libraries are built (needs ~1.5 KB per look per vector).",
)
@click.option("--hnsw-m", type=int, default=None, help="Graph degree; default LOOKBOOK_HNSW_M.")
@click.option("--hnsw-ef-construct", type=int, default=None, help="Build beam; default LOOKBOOK_HNSW_EF_CONSTRUCT.")
@click.option("--hnsw-ef", type=int, default=None, help="Search beam; default LOOKBOOK_HNSW_EF.")
@click.option(
    "--compat/--no-compat",
    default=False,
    show_default=True,
    help="Also write the two compatibility vectors (4 named vectors per look instead of 2).",
)
@click.option("--compat-dim", type=click.IntRange(min=8), default=128, show_default=True)
@click.option(
    "--base-npz",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Projected base embeddings from --save-base, instead of embedding DATA_DIR (on another machine).",
)
@click.option(
    "--save-base",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the projected base embeddings here (a few MB) for --base-npz elsewhere.",
)
@click.option(
    "--store-upsert-looks",
    type=click.IntRange(min=CHUNK),
    default=100_000,
    show_default=True,
    help="Looks written through LookStore.upsert (the measured rate); the rest go through the engine write.",
)
@click.option(
    "--sweep-ef",
    type=click.IntRange(min=1),
    multiple=True,
    help="Also measure these search beams (hnsw_ef) on the same index; repeat the option.",
)
@click.option(
    "--search-cpus",
    type=click.IntRange(min=1),
    default=None,
    help="Pin the process to this many CPUs after the index is built, to measure search as on a smaller box.",
)
@click.option(
    "--noise",
    type=click.FloatRange(min=0.0),
    default=Expansion.noise,
    show_default=True,
    help="Noise around real garments, as a fraction of their median nearest-neighbour distance.",
)
@click.option("--batch", type=click.IntRange(min=1), default=512, show_default=True, help="Looks per upsert call.")
@click.option(
    "--json-out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the results as JSON here.",
)
@click.option("--keep/--no-keep", default=False, show_default=True, help="Keep the built libraries on disk.")
def bench_store(
    sizes: tuple[int, ...],
    queries: int,
    data_dir: Path,
    work_dir: Path,
    hnsw_m: int | None,
    hnsw_ef_construct: int | None,
    hnsw_ef: int | None,
    compat: bool,
    compat_dim: int,
    noise: float,
    batch: int,
    json_out: Path | None,
    keep: bool,
    base_npz: Path | None,
    save_base: Path | None,
    search_cpus: int | None,
    store_upsert_looks: int,
    sweep_ef: tuple[int, ...],
) -> None:
    """Upsert throughput, search p50/p99 and recall@10 vs exact, memory per look and reopen time.

    Runs on the embedded Qdrant Edge store through the same store API the services use, with the HNSW
    index built, on real garment embeddings from DATA_DIR expanded to each --n.
    """
    from shared.settings import load_settings

    settings = load_settings()
    m = hnsw_m or settings.hnsw_m
    ef_construct = hnsw_ef_construct or settings.hnsw_ef_construct
    ef = hnsw_ef or settings.hnsw_ef
    if base_npz is not None:
        with np.load(base_npz) as saved:
            base = {"top": saved["top"], "bottom": saved["bottom"]}
    else:
        base = project_base(base_features(data_dir))
    if save_base is not None:
        np.savez_compressed(save_base, top=base["top"], bottom=base["bottom"])
    synth = LookSynth(base, Expansion(noise=noise))
    click.echo(f"real garments: {len(base['top'])} tops, {len(base['bottom'])} bottoms (PCA to {DIM} dims)", err=True)
    runs = []
    for n in sizes:
        run = run_size(
            n,
            synth,
            work=work_dir / f"n{n}",
            m=m,
            ef_construct=ef_construct,
            ef=ef,
            queries=queries,
            compat_dim=compat_dim,
            with_compat=compat,
            batch=batch,
            search_cpus=search_cpus,
            store_upsert_looks=store_upsert_looks,
            sweep_ef=sweep_ef,
        )
        runs.append(run)
        if not keep:
            shutil.rmtree(work_dir / f"n{n}", ignore_errors=True)
        _print_run(run)
        _print_capacity(run)
        if json_out is not None:  # after each size, so a long run that is cut off keeps what it measured
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps([asdict(r) for r in runs], indent=2))
    if json_out is not None:
        click.echo(f"results written to {json_out}", err=True)


def _print_run(run: StoreRun) -> None:
    click.echo(
        f"\n== {run.n:,} looks x {run.vectors_per_look} named vectors of {DIM} dims "
        f"(hnsw m={run.hnsw_m}, ef_construct={run.hnsw_ef_construct}, ef={run.hnsw_ef})"
    )
    click.echo(
        f"upsert        {run.upsert_looks_per_s:,.0f} looks/s through LookStore.upsert "
        f"({run.upsert_looks:,} looks in {run.upsert_seconds:.1f} s); the rest bulk-written in "
        f"{run.bulk_load_seconds:.1f} s"
    )
    click.echo(f"index build   {run.index_seconds:.1f} s")
    for label, row in run.search.items():
        click.echo(
            f"search {label:<11} p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  "
            f"recall@10 {row['recall_at_10']:.4f}  ({row['queries']} queries)"
        )
    click.echo(f"disk          {run.disk_bytes_per_look:,.0f} B/look without the WAL  {run.disk_bytes}")
    click.echo(f"memory (RSS)  {run.rss_bytes_per_look:,.0f} B/look after reopen and searches")
    click.echo(f"reopen        {run.reopen_seconds:.2f} s, first query {run.first_query_ms:.1f} ms")
    click.echo(f"cpus          {run.build_cpus} while building, {run.search_cpus} while searching")
    click.echo(f"engine        {run.segments} segments, {run.indexed_vectors:,} vectors in HNSW")


GIB = 2**30


def capacity_rows(
    run: StoreRun,
    sizes: tuple[int, ...] = (10**6, 10**7, 10**8),
    *,
    replication: int = 2,
    node_gib: float = 16.0,
    usable: float = 0.75,
) -> list[dict[str, Any]]:
    """RAM, disk and Qdrant nodes per library size, scaled from the measured bytes per look.

    RAM holds what every search touches: vectors (float32, or int8 with scalar quantization, the
    float32 originals then staying on disk for rescoring), the HNSW graphs, the payload indexes and
    the id tracker. Payload storage and the WAL stay on disk. Each node gives `usable` of `node_gib`
    to the library; a cluster keeps at least 3 peers.
    """
    import math

    per = {k: v / run.n for k, v in run.disk_bytes.items()}
    rest = per["hnsw"] + per["payload_index"] + per["other"]
    rows = []
    for quantized in (False, True):
        ram = (per["vectors"] / 4 if quantized else per["vectors"]) + rest
        disk = per["vectors"] * (1.25 if quantized else 1.0) + rest + per["payload"]
        for n in sizes:
            total_ram = ram * n * replication
            nodes = max(3, math.ceil(total_ram / (node_gib * usable * GIB)))
            rows.append(
                {
                    "looks": n,
                    "scalar_quantization": quantized,
                    "ram_bytes_per_look": round(ram),
                    "ram_gib": round(total_ram / GIB, 1),
                    "disk_gib": round(disk * n * replication / GIB, 1),
                    "nodes": nodes,
                }
            )
    return rows


def _print_capacity(run: StoreRun) -> None:
    click.echo("\ncapacity (replication 2, 16 GiB Qdrant nodes, 75% for the library):")
    click.echo("| looks | quantization | RAM/look | RAM (all replicas) | disk (all replicas) | Qdrant nodes |")
    click.echo("|---|---|---|---|---|---|")
    for row in capacity_rows(run):
        click.echo(
            f"| {row['looks']:,} | {'int8 scalar' if row['scalar_quantization'] else 'none (float32)'} | "
            f"{row['ram_bytes_per_look']:,} B | {row['ram_gib']:,} GiB | {row['disk_gib']:,} GiB | {row['nodes']} |"
        )


def register(main: click.Group) -> None:
    bench = main.commands["bench"]
    assert isinstance(bench, click.Group)
    bench.add_command(bench_store)


if __name__ == "__main__":  # `python -m services.commands.bench_store` where the full CLI's deps are missing
    bench_store()
