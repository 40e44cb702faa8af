"""Server backend specifics: opening errors, retries on transient faults only, cluster settings, aliases.

Local mode (`QdrantClient(":memory:")`) accepts but ignores sharding, replication, write and read
consistency: these tests check that the store passes them, not that a cluster honours them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from shared.settings import load_settings
from shared.store import LookPoint, LookRecord, StoreError, StoreUnavailableError, look_id_for, open_store
from shared.store.server import ServerLookStore, is_transient, parse_read_consistency

pytestmark = pytest.mark.unit


class RecordingClient(QdrantClient):
    """Local-mode client that remembers the keyword arguments of the calls the cluster settings reach."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.calls: dict[str, list[dict[str, Any]]] = {}

    def _record(self, name: str, kwargs: dict[str, Any]) -> None:
        self.calls.setdefault(name, []).append(kwargs)

    def create_collection(self, *args: Any, **kwargs: Any) -> bool:  # type: ignore[override]
        self._record("create_collection", kwargs)
        return super().create_collection(*args, **kwargs)

    def query_points(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self._record("query_points", kwargs)
        return super().query_points(*args, **kwargs)

    def retrieve(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self._record("retrieve", kwargs)
        return super().retrieve(*args, **kwargs)


def point(i: int) -> LookPoint:
    rng = np.random.default_rng(i)
    record = LookRecord(look_id=look_id_for(f"look-{i}".encode()), image_path=f"{i}.jpg", status="approved")
    return LookPoint(record, {"top": rng.normal(size=8), "bottom": rng.normal(size=8)})


def http_error(status: int) -> UnexpectedResponse:
    return UnexpectedResponse(status_code=status, reason_phrase="x", content=b"", headers=httpx.Headers())


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


def test_cluster_settings_reach_collection_creation_and_reads() -> None:
    client = RecordingClient()
    store = ServerLookStore(
        client=client,
        shard_number=6,
        replication_factor=2,
        write_consistency_factor=2,
        read_consistency="majority",
    )
    store.ensure("model-1", (8, 4))
    created = client.calls["create_collection"][0]
    assert (created["shard_number"], created["replication_factor"], created["write_consistency_factor"]) == (
        6,
        2,
        2,
    )
    assert created["hnsw_config"].m == store.hnsw_m
    store.upsert([point(1)])
    store.search("top", np.ones(8), limit=3)
    store.get(look_id_for(b"look-1"))
    assert client.calls["query_points"][-1]["consistency"] == qm.ReadConsistencyType.MAJORITY
    assert client.calls["retrieve"][-1]["consistency"] == qm.ReadConsistencyType.MAJORITY
    store.close()


def test_read_consistency_values() -> None:
    assert parse_read_consistency("2") == 2
    assert parse_read_consistency("quorum") == qm.ReadConsistencyType.QUORUM
    assert parse_read_consistency("ALL") == qm.ReadConsistencyType.ALL
    with pytest.raises(StoreError, match="LOOKBOOK_READ_CONSISTENCY"):
        parse_read_consistency("most")


def test_alias_moves_on_promote_and_old_versions_are_dropped() -> None:
    client = QdrantClient(":memory:")
    store = ServerLookStore(client=client, collection="looks")
    store.ensure("model-1", (8, 4))
    store.upsert([point(i) for i in range(5)])
    for version in ("model-2", "model-3"):
        writer = store.begin_rebuild(version, (8, 4))
        writer.upsert([point(i) for i in range(5)])
        writer.promote()
        aliases = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}
        assert aliases == {"looks": f"looks__{version}"}
    assert sorted(c.name for c in client.get_collections().collections) == [
        "looks__model-2",
        "looks__model-3",
    ]
    # A second store on the same server sees the live version through the alias.
    other = ServerLookStore(client=client, collection="looks")
    assert other.live_version() == "model-3" and other.count() == 5
    store.close()


def test_transient_errors_are_retried_with_backoff() -> None:
    store = ServerLookStore(location=":memory:", retries=3, backoff_s=0.0)
    outcomes: list[BaseException | str] = [
        http_error(503),
        ResponseHandlingException(ConnectionError("down")),
        "ok",
    ]
    calls = []

    def flaky() -> str:
        calls.append(1)
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    assert store._call(flaky) == "ok" and len(calls) == 3

    def always_down() -> None:
        calls.append(1)
        raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)

    calls.clear()
    with pytest.raises(StoreUnavailableError, match="LOOKBOOK_QDRANT_URL"):
        store._call(always_down)
    assert len(calls) == 4  # the first try and three retries
    store.close()


def test_client_errors_are_not_retried() -> None:
    store = ServerLookStore(location=":memory:", retries=3, backoff_s=0.0)
    calls = []

    def bad_request() -> None:
        calls.append(1)
        raise http_error(400)

    with pytest.raises(StoreError) as err:
        store._call(bad_request)
    assert not isinstance(err.value, StoreUnavailableError) and len(calls) == 1
    assert is_transient(http_error(502)) and is_transient(http_error(429))
    assert not is_transient(http_error(404)) and not is_transient(ValueError("bug"))
    assert not is_transient(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT))
    store.close()


def test_unreachable_url_fails_at_open_naming_the_variable() -> None:
    with pytest.raises(StoreUnavailableError) as err:
        ServerLookStore(url="http://127.0.0.1:1", retries=1, backoff_s=0.0, timeout_s=2)
    message = str(err.value)
    assert "LOOKBOOK_QDRANT_URL='http://127.0.0.1:1'" in message and "unset LOOKBOOK_QDRANT_URL" in message


def test_open_store_uses_the_server_backend_when_a_url_is_set(tmp_path: Path) -> None:
    store = open_store(load_settings(data_dir=tmp_path, qdrant_url=":memory:", shard_number=3))
    try:
        assert isinstance(store, ServerLookStore) and store.shard_number == 3
        store.ensure("model-1", (8, 4))
        assert store.live_version() == "model-1"
    finally:
        store.close()
