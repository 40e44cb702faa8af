"""The store benchmark's synthetic library: deterministic, near the real garments, and exact ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from services.commands.bench_store import CHUNK, Expansion, LookSynth, _unit, exact_neighbours

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def synth() -> LookSynth:
    rng = np.random.default_rng(0)
    # Clustered stand-ins for real garments: the test needs structure, not the backbone.
    centres = _unit(rng.normal(size=(12, 64)).astype(np.float32))
    tops = _unit(centres[rng.integers(0, 12, 300)] + 0.2 * rng.normal(size=(300, 64)).astype(np.float32))
    bottoms = _unit(centres[rng.integers(0, 12, 200)] + 0.2 * rng.normal(size=(200, 64)).astype(np.float32))
    return LookSynth({"top": tops, "bottom": bottoms}, Expansion())


def test_chunks_are_deterministic_and_unit_length(synth: LookSynth) -> None:
    first, statuses = synth.chunk(3)
    again, statuses_again = synth.chunk(3)
    assert np.array_equal(first["top"], again["top"]) and np.array_equal(statuses, statuses_again)
    assert not np.array_equal(first["top"], synth.chunk(4)[0]["top"])
    assert np.allclose(np.linalg.norm(first["bottom"], axis=1), 1.0, atol=1e-5)
    assert len(statuses) == CHUNK


def test_searchable_share_is_about_eighty_percent(synth: LookSynth) -> None:
    _, statuses = synth.chunk(0)
    share = np.isin(statuses, ("approved", "featured")).mean()
    assert 0.77 < share < 0.83


def test_looks_stay_near_real_garments(synth: LookSynth) -> None:
    vectors, _ = synth.chunk(0)
    nearest_real = (vectors["top"][:500] @ synth.base["top"].T).max(axis=1)
    random = _unit(np.random.default_rng(1).normal(size=(500, 64)).astype(np.float32))
    nearest_random = (random @ synth.base["top"].T).max(axis=1)
    assert np.median(nearest_real) > np.median(nearest_random) + 0.3


def test_queries_are_not_library_looks(synth: LookSynth) -> None:
    queries = synth.queries(20)
    vectors, _ = synth.chunk(0)
    assert (queries["top"] @ vectors["top"].T).max() < 0.9999


def test_exact_neighbours_match_brute_force(synth: LookSynth) -> None:
    n = CHUNK + 2500  # spans two chunks, the second one partial
    queries = synth.queries(15)
    got = exact_neighbours(synth, n, queries, 10, searchable=True)
    library = [synth.chunk(0), synth.chunk(1)]
    tops = np.concatenate([c[0]["top"] for c in library])[:n]
    keep = np.isin(np.concatenate([c[1] for c in library])[:n], ("approved", "featured"))
    scores = queries["top"] @ tops.T
    scores[:, ~keep] = -np.inf
    expected = np.argsort(-scores, axis=1)[:, :10]
    for row_got, row_expected in zip(got["top"], expected, strict=True):
        assert set(row_got.tolist()) == set(row_expected.tolist())
