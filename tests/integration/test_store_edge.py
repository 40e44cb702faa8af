"""The embedded look store under serving conditions: a real Qdrant Edge shard on disk, concurrent readers
while imports, edits and index builds run, and a re-embed that survives a restart.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from shared.store import EdgeLookStore, LookFilter, LookPoint, LookRecord, look_id_for

pytestmark = pytest.mark.integration

DIMS = (64, 32)


def looks(start: int, stop: int, seed: int = 0) -> list[LookPoint]:
    rng = np.random.default_rng(seed + start)
    points = []
    for i in range(start, stop):
        record = LookRecord(
            look_id=look_id_for(f"look-{i}".encode()),
            image_path=f"looks/{i}.jpg",
            status="approved" if i % 4 else "rejected",
            tags=["summer"] if i % 2 else ["winter"],
            quality_score=(i % 10) / 10,
            source="demo",
            created_at=float(i),
        )
        vectors = {
            "top": rng.normal(size=DIMS[0]),
            "bottom": rng.normal(size=DIMS[0]),
            "top_compat": rng.normal(size=DIMS[1]),
            "bottom_compat": rng.normal(size=DIMS[1]),
        }
        points.append(LookPoint(record, vectors))
    return points


def test_readers_keep_working_during_imports_edits_and_index_builds(tmp_path: Path) -> None:
    store = EdgeLookStore(tmp_path, hnsw_m=8, hnsw_ef_construct=32, hnsw_ef=32)
    store.ensure("model-1", DIMS)
    store.upsert(looks(0, 1500), batch_size=500)
    stop = threading.Event()
    errors: list[BaseException] = []
    served = [0]

    def reader(kind: int) -> None:
        rng = np.random.default_rng(kind)  # one generator per thread: they are not thread-safe
        cursor: str | None = None
        while not stop.is_set():
            try:
                q = rng.normal(size=DIMS[0])
                if kind == 0:
                    hits = store.search("top", q, limit=10, tags=["summer"])
                    assert all(h.look.status != "rejected" and "summer" in h.look.tags for h in hits)
                elif kind == 1:
                    hits = store.fused_search([("top", q), ("bottom", q)], limit=10)
                    assert len(hits) == 10
                elif kind == 2:
                    page = store.scroll(LookFilter(statuses=("approved",)), cursor=cursor, limit=50)
                    cursor = page.next_cursor
                else:
                    assert store.get(look_id_for(b"look-5")) is not None
                served[0] += 1
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        store.upsert(looks(1500, 3000), batch_size=250)
        for i in range(0, 40, 4):  # editors reject looks while the import runs
            store.update_look(look_id_for(f"look-{i + 1}".encode()), {"status": "rejected"})
        store.optimize()
        store.upsert(looks(0, 200))  # a refresh re-imports some looks
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert served[0] > 0
    assert store.count() == 3000
    assert store.count(LookFilter(statuses=("rejected",))) == 750 + 10
    assert store.get(look_id_for(b"look-1")).status == "rejected"  # type: ignore[union-attr]
    store.close()


def test_parallel_searches_from_a_thread_pool_agree_with_serial_ones(tmp_path: Path) -> None:
    with EdgeLookStore(tmp_path) as store:
        store.ensure("model-1", DIMS)
        store.upsert(looks(0, 800))
        queries = np.random.default_rng(2).normal(size=(64, DIMS[0]))

        def ids(q: np.ndarray) -> list[str]:
            return [h.look.look_id for h in store.search("bottom", q, limit=5)]

        serial = [ids(q) for q in queries]
        with ThreadPoolExecutor(max_workers=8) as pool:
            parallel = list(pool.map(ids, queries))
        assert parallel == serial


def test_reembed_resumes_after_a_restart_and_keeps_curation(tmp_path: Path) -> None:
    with EdgeLookStore(tmp_path) as store:
        store.ensure("model-1", DIMS)
        store.upsert(looks(0, 300))
        store.update_look(look_id_for(b"look-1"), {"status": "featured", "tags": ["editor"]})
        writer = store.begin_rebuild("model-2", DIMS)
        writer.upsert(looks(0, 120, seed=5))
    # The process died mid re-embed; the next one resumes the same rebuild.
    with EdgeLookStore(tmp_path) as store:
        assert store.live_version() == "model-1"
        writer = store.begin_rebuild("model-2", DIMS)
        assert writer.count() == 120
        writer.upsert(looks(120, 300, seed=5))
        writer.promote()
    with EdgeLookStore(tmp_path) as store:
        assert store.live_version() == "model-2" and store.count() == 300
        look = store.get(look_id_for(b"look-1"))
        assert look is not None and look.status == "featured" and look.tags == ["editor"]
        assert look.model_version == "model-2"


def test_acknowledged_writes_survive_a_killed_process(tmp_path: Path) -> None:
    # The shard's write-ahead log makes an acknowledged upsert durable without flush or close.
    code = f"""
import os
import numpy as np
from shared.store import EdgeLookStore, LookPoint, LookRecord, look_id_for
store = EdgeLookStore({str(tmp_path)!r})
store.ensure("model-1", (8, 4))
rng = np.random.default_rng(0)
store.upsert([
    LookPoint(LookRecord(look_id_for(str(i).encode()), f"{{i}}.jpg", status="approved"), {{"top": rng.normal(size=8)}})
    for i in range(50)
])
store.update_look(look_id_for(b"1"), {{"status": "rejected"}})
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
    with EdgeLookStore(tmp_path) as store:  # the dead process's directory lock is gone with it
        assert store.live_version() == "model-1" and store.count() == 50
        assert store.get(look_id_for(b"1")).status == "rejected"  # type: ignore[union-attr]
