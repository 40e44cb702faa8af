"""The shipped compatibility artifact loads and serves: unit projections, scores in [0, 1], small on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.models.compat import CompatModel, load_compat

pytestmark = pytest.mark.unit

ARTIFACTS = Path(__file__).resolve().parents[2] / "shared" / "models" / "artifacts"


@pytest.fixture(scope="module")
def model() -> CompatModel:
    loaded = load_compat(ARTIFACTS)
    assert loaded is not None, "the compat artifact is missing: run `lookbook train compat --data ../shared/data`"
    return loaded


def _garments() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    plain = Image.new("RGB", (239, 334), (240, 238, 235))
    plain.paste((30, 40, 120), (60, 60, 180, 280))
    noisy = Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8))
    return [plain, noisy, Image.new("L", (64, 48), 128)]


def test_artifact_is_small_and_versioned(model: CompatModel) -> None:
    assert (ARTIFACTS / "compat" / "model.pt").stat().st_size < 8 * 2**20
    assert model.version.startswith("compat-")
    assert model.dim > 0


@pytest.mark.parametrize("kind", ["top", "bottom"])
def test_projection_is_unit_float32(model: CompatModel, kind: str) -> None:
    vectors = model.project(_garments(), kind)  # type: ignore[arg-type]
    assert vectors.shape == (3, model.dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_projection_is_deterministic_and_kind_aware(model: CompatModel) -> None:
    images = _garments()[:1]
    first, second = model.project(images, "top"), model.project(images, "top")
    np.testing.assert_allclose(first, second, atol=1e-6)
    assert not np.allclose(first, model.project(images, "bottom"), atol=1e-3)


def test_score_is_a_probability(model: CompatModel) -> None:
    tops = model.project(_garments(), "top")
    bottoms = model.project(_garments(), "bottom")
    for top in tops:
        for bottom in bottoms:
            value = model.score(top, bottom)
            assert isinstance(value, float)
            assert 0.0 <= value <= 1.0


def test_empty_batch_and_bad_kind(model: CompatModel) -> None:
    assert model.project([], "bottom").shape == (0, model.dim)
    with pytest.raises(ValueError, match="kind"):
        model.project(_garments(), "dress")  # type: ignore[arg-type]


def test_missing_artifact_gives_none(tmp_path: Path) -> None:
    assert load_compat(tmp_path) is None


def test_serving_and_training_paths_agree(model: CompatModel, tmp_path: Path) -> None:
    """project() on an image equals project_features() on the cached features training and eval use."""
    from shared.models.compat_features import extract_features

    path = tmp_path / "garment.png"
    _garments()[0].save(path)
    features = extract_features([path], (0,), backbone=model.backbone, cache_dir=tmp_path / "cache", progress=False)
    for kind in ("top", "bottom"):
        cached = model.project_features(features.stem[0].astype(np.float32), features.colour[0], kind)  # type: ignore[arg-type]
        direct = model.project([Image.open(path)], kind)  # type: ignore[arg-type]
        # The cache stores the stem in float16.
        np.testing.assert_allclose(cached, direct, atol=5e-3)


def test_unit_histogram_is_numpys_histogram() -> None:
    from shared.models.compat_features import _unit_histogram

    rng = np.random.default_rng(0)
    # HSV channels are k/255; include both ends of [0, 1] and every bin edge a k/255 can hit.
    values = np.concatenate([np.arange(256, dtype=np.float32) / 255.0, rng.random(500).astype(np.float32)])
    for bins in (4, 12):
        np.testing.assert_array_equal(_unit_histogram(values, bins), np.histogram(values, bins=bins, range=(0, 1))[0])
