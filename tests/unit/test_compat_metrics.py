"""FITB, pair AUC and negative sampling of the compatibility evaluation, on tiny inputs with known answers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest

from shared.models.compat_data import (
    OutfitDataError,
    build_benchmark,
    fitb_accuracy,
    pair_auc,
    sample_negatives,
    split_by_top,
)
from shared.models.compat_training import evaluate_scorer

pytestmark = pytest.mark.unit


def test_fitb_counts_questions_where_the_truth_wins() -> None:
    scores = np.array([[0.9, 0.1, 0.2, 0.3], [0.1, 0.5, 0.2, 0.3], [0.8, 0.8, 0.1, 0.1], [0.5, 0.5, 0.5, 0.5]])
    # Won, lost, tied with one (1/2), tied with three (1/4).
    assert fitb_accuracy(scores) == pytest.approx((1 + 0 + 0.5 + 0.25) / 4)


def test_fitb_of_constant_scores_is_chance() -> None:
    assert fitb_accuracy(np.zeros((10, 4))) == pytest.approx(0.25)


def test_fitb_rejects_a_single_column() -> None:
    with pytest.raises(ValueError):
        fitb_accuracy(np.zeros((3, 1)))


def test_pair_auc_known_answers() -> None:
    assert pair_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == pytest.approx(1.0)
    assert pair_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == pytest.approx(0.0)
    # Of the four (positive, negative) comparisons only 3 < 4 is lost.
    assert pair_auc(np.array([3.0, 5.0]), np.array([1.0, 4.0])) == pytest.approx(0.75)
    # Ties count half.
    assert pair_auc(np.array([1.0]), np.array([1.0])) == pytest.approx(0.5)
    assert pair_auc(np.array([2.0, 1.0]), np.array([1.0])) == pytest.approx(0.75)


def _toy_pairs() -> list[tuple[str, str]]:
    pairs = []
    for t in range(12):
        for b in {t % 6, (t * 5 + 1) % 6, 6 + t % 3}:
            pairs.append((f"t{t}", f"b{b}"))
    return sorted(set(pairs))


def test_popularity_negatives_never_include_a_partner_of_the_query() -> None:
    pairs = _toy_pairs()
    partners: dict[str, set[str]] = {}
    for t, b in pairs:
        partners.setdefault(t, set()).add(b)
    bench = build_benchmark(pairs, seed=3)
    for kind in ("uniform", "popularity"):
        q = bench.top_to_bottom[kind]
        for top, row in zip(q.queries, q.candidates, strict=True):
            assert row[0] in partners[top]
            assert len(set(row)) == len(row) == 4
            assert not set(row[1:]) & partners[top]
        qb = bench.bottom_to_top[kind]
        for bottom, row in zip(qb.queries, qb.candidates, strict=True):
            assert all(bottom not in partners[t] for t in row[1:])
    assert all(b not in partners[t] for t, b in bench.auc_negatives)
    assert len(bench.auc_negatives) == 3 * len(pairs)


def test_popularity_negatives_follow_frequency() -> None:
    pool = ["rare", "common"]
    weights = np.array([1.0, 9.0])
    rng = np.random.default_rng(0)
    drawn = Counter(sample_negatives("q", "truth", pool, weights, {}, 1, rng)[0] for _ in range(2000))
    assert 0.85 < drawn["common"] / 2000 < 0.95
    # A partner of the query is never drawn, however popular it is.
    drawn = Counter(sample_negatives("q", "truth", pool, weights, {"q": {"common"}}, 1, rng)[0] for _ in range(200))
    assert drawn == {"rare": 200}


def test_sampling_fails_clearly_when_too_few_candidates() -> None:
    with pytest.raises(OutfitDataError, match="too few candidates"):
        sample_negatives("q", "a", ["a", "b"], None, {}, 3, np.random.default_rng(0))


def test_benchmark_is_deterministic_per_seed() -> None:
    pairs = _toy_pairs()
    a, b = build_benchmark(pairs, seed=1), build_benchmark(pairs, seed=1)
    assert (a.top_to_bottom["popularity"].candidates == b.top_to_bottom["popularity"].candidates).all()


def test_split_by_top_is_disjoint_in_tops() -> None:
    pairs = _toy_pairs()
    train, val = split_by_top(pairs, val_fraction=0.25, seed=0)
    assert {t for t, _ in train}.isdisjoint({t for t, _ in val})
    assert sorted(train + val) == pairs
    assert len({t for t, _ in val}) == 3


def test_an_oracle_scores_perfectly_and_the_evaluation_reports_every_figure() -> None:
    pairs = _toy_pairs()
    truth = set(pairs)
    bench = build_benchmark(pairs, seed=0)

    def oracle(tops: Sequence[str], bottoms: Sequence[str]) -> np.ndarray:
        return np.array([1.0 if (t, b) in truth else 0.0 for t, b in zip(tops, bottoms, strict=True)])

    figures = evaluate_scorer(bench, oracle)
    assert set(figures) == {
        "fitb_top_to_bottom_uniform", "fitb_top_to_bottom_popularity",
        "fitb_bottom_to_top_uniform", "fitb_bottom_to_top_popularity", "pair_auc",
    }
    assert all(v == pytest.approx(1.0) for v in figures.values())
