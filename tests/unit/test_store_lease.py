"""Worker processes sharing the embedded store: the lease, and writes handed to its holder.

Two StoreAccess objects in one process stand for two processes: the lease and Qdrant Edge's own
directory lock are flock locks of separately opened files, which exclude each other here too.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from services.workers.refresh import SessionStore, StoreAccess
from shared.settings import load_settings
from tests.unit.test_store import DIMS, make_point

pytestmark = pytest.mark.unit


def _session_store(access: StoreAccess) -> SessionStore:
    return SessionStore(access, lambda: DIMS, lambda: "model-1")


def _ids(access: StoreAccess) -> set[str]:
    with access.session() as store:
        return {look.look_id for look in store.scroll(None, limit=100).looks}


def test_a_write_is_handed_to_the_process_holding_the_store(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    holder, writer = StoreAccess(settings, held=False), StoreAccess(settings, held=False)
    rng = np.random.default_rng(0)
    points = [make_point(i, rng) for i in range(6)]
    try:
        assert _session_store(holder).upsert(points[:3]) == 3  # nobody held it: the holder took the lease
        assert holder._lease is not None

        # The store is held: the writer spools its points, the holder's lease watcher writes them.
        assert _session_store(writer).upsert(points[3:]) == 3
        assert writer._lease is None and holder._lease is not None, "the lease did not move"
        assert not list((tmp_path / "store-spool").iterdir())
        assert _ids(holder) == {p.record.look_id for p in points}

        # A retried write stores nothing twice.
        assert _session_store(writer).upsert(points[3:]) == 3
        with holder.session() as store:
            assert store.count() == 6
    finally:
        holder.close()
        writer.close()


def test_a_spooled_write_is_written_by_the_next_holder_when_its_holder_went_away(tmp_path: Path) -> None:
    import pickle

    from services.workers.refresh import _Upsert

    settings = load_settings(data_dir=tmp_path)
    rng = np.random.default_rng(1)
    first, second = make_point(1, rng), make_point(2, rng)
    # What a writer left when the holder it handed points to died before writing them.
    spool = tmp_path / "store-spool"
    spool.mkdir()
    (spool / "4242-1-1.points").write_bytes(pickle.dumps(_Upsert([first], "model-1", DIMS, {})))

    access = StoreAccess(settings, held=False)
    try:
        # Nobody holds the store: this process takes the lease, writes its own points and the spool.
        assert _session_store(access).upsert([second]) == 1
        deadline = time.monotonic() + 5
        while list(spool.glob("*.points")) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _ids(access) == {first.record.look_id, second.record.look_id}
        assert not list(spool.glob("*.points"))
    finally:
        access.close()


def test_a_spooled_write_the_holder_cannot_make_is_retried_by_its_writer(tmp_path: Path) -> None:
    from services.workers.refresh import TransientError

    settings = load_settings(data_dir=tmp_path)
    holder, writer = StoreAccess(settings, held=False), StoreAccess(settings, held=False)
    rng = np.random.default_rng(2)
    try:
        _session_store(holder).upsert([make_point(1, rng)])
        bad = make_point(2, rng)
        bad = type(bad)(bad.record, {"shoes": np.ones(4)})  # a vector the collection does not have
        with pytest.raises(TransientError, match="retried"):
            _session_store(writer).upsert([bad])
        assert not list((tmp_path / "store-spool").iterdir()), "nothing is left behind"
        # The holder goes on: the next handed-over write is stored.
        good = make_point(3, rng)
        assert _session_store(writer).upsert([good]) == 1
        assert good.record.look_id in _ids(holder)
    finally:
        holder.close()
        writer.close()


def test_the_holder_is_woken_for_a_handed_over_write_and_for_a_request_for_the_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the watcher's fallback poll and the idle release a minute away, only the wake-up FIFO
    gets the spooled write written, and the lease to a process that asks for it; without it the
    write would time out (a TransientError) and the request would hang."""
    import threading

    from services.workers import refresh

    monkeypatch.setattr(refresh, "LEASE_POLL_S", 60.0)
    monkeypatch.setattr(refresh, "HANDOFF_TIMEOUT_S", 10.0)
    settings = load_settings(data_dir=tmp_path)
    holder = StoreAccess(settings, held=False, idle_release_s=60.0)
    writer = StoreAccess(settings, held=False, idle_release_s=60.0)
    rng = np.random.default_rng(3)
    try:
        _session_store(holder).upsert([make_point(1, rng)])
        time.sleep(0.2)  # the watcher is asleep on the FIFO now
        assert _session_store(writer).upsert([make_point(2, rng)]) == 1
        assert writer._lease is None and len(_ids(holder)) == 2

        asked = threading.Thread(target=lambda: _ids(writer), daemon=True)
        asked.start()
        asked.join(timeout=10)
        assert not asked.is_alive(), "the holder was not woken to hand the lease over"
        assert writer._lease is not None and holder._lease is None
    finally:
        holder.close()
        writer.close()


def test_the_lease_is_kept_through_a_unit_of_work_and_released_for_idleness_after_it(tmp_path: Path) -> None:
    """An ingestion task writes one chunk of Analyze apart, which can take longer than the idle
    release: it must not reopen the shard for each write. Outside a unit of work idleness releases."""
    settings = load_settings(data_dir=tmp_path)
    access = StoreAccess(settings, held=False, idle_release_s=0.3)
    rng = np.random.default_rng(4)
    try:
        with access.working():
            _session_store(access).upsert([make_point(1, rng)])
            lease = access._lease
            time.sleep(1.0)  # "Analyze": over three idle-release periods without a store session
            assert access._lease is lease, "the lease was dropped in the middle of the task"
            _session_store(access).upsert([make_point(2, rng)])
            assert access._lease is lease
        deadline = time.monotonic() + 5
        while access._lease is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert access._lease is None, "the lease was not released once the work was over and idle"
    finally:
        access.close()
