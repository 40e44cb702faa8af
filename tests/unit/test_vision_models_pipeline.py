"""The vision pipeline on the shipped artifacts: shapes, kinds, model version and thread safety."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from shared.models.pipeline import KnownGarment, VisionPipeline

pytestmark = pytest.mark.unit

MODELS_DIR = Path(__file__).resolve().parents[2] / "shared" / "models" / "artifacts"


@pytest.fixture(scope="module")
def pipeline() -> VisionPipeline:
    return VisionPipeline(MODELS_DIR, torch_threads=2)


def _look() -> Image.Image:
    """A crude person: a blue top over dark trousers on a light street."""
    image = Image.new("RGB", (400, 640), (210, 205, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse((170, 40, 230, 110), fill=(220, 180, 150))
    draw.rectangle((130, 110, 270, 330), fill=(30, 60, 180))
    draw.rectangle((140, 320, 260, 580), fill=(40, 40, 45))
    return image


def test_model_version_names_the_artifacts(pipeline: VisionPipeline) -> None:
    assert pipeline.model_version.startswith("det-")
    assert "+cat-" in pipeline.model_version and "+emb-" in pipeline.model_version
    assert pipeline.embedding_dim <= 1280


def test_library_look_gets_unit_embeddings(pipeline: VisionPipeline) -> None:
    analysis = pipeline.analyze(_look())
    assert (analysis.width, analysis.height) == (400, 640)
    for garment in analysis.garments:
        assert garment.embedding.dtype == np.float32
        assert garment.embedding.shape == (pipeline.embedding_dim,)
        assert np.isclose(np.linalg.norm(garment.embedding), 1.0, atol=1e-3)
        x0, y0, x1, y1 = garment.box
        assert 0 <= x0 < x1 <= 400 and 0 <= y0 < y1 <= 640
        assert garment.colors


def test_known_boxes_replace_detection(pipeline: VisionPipeline) -> None:
    known = [KnownGarment("top", (130, 110, 270, 330)), KnownGarment("bottom", (140, 320, 260, 580))]
    analysis = pipeline.analyze(_look(), known=known)
    top, bottom = analysis.garment("top"), analysis.garment("bottom")
    assert top is not None and top.box == (130, 110, 270, 330) and top.confidence == 1.0
    assert bottom is not None and bottom.box == (140, 320, 260, 580)


def test_query_photo_gives_one_top_or_bottom(pipeline: VisionPipeline) -> None:
    product = Image.new("RGB", (239, 334), (245, 245, 245))
    ImageDraw.Draw(product).rectangle((50, 30, 190, 300), fill=(180, 30, 40))
    auto = pipeline.analyze(product, single_garment=True)
    assert len(auto.garments) == 1 and auto.garments[0].kind in ("top", "bottom")
    hinted = pipeline.analyze(_look(), single_garment=True, kind_hint="bottom")
    assert [g.kind for g in hinted.garments] == ["bottom"]


def test_embed_matches_dimension(pipeline: VisionPipeline) -> None:
    vectors = pipeline.embed([_look().crop((130, 110, 270, 330))])
    assert vectors.shape == (1, pipeline.embedding_dim)
    assert pipeline.embed([]).shape == (0, pipeline.embedding_dim)


def test_concurrent_analyze_is_consistent(pipeline: VisionPipeline) -> None:
    image = _look()
    expected = pipeline.analyze(image).garments
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: pipeline.analyze(image).garments, range(6)))
    for garments in results:
        assert [g.kind for g in garments] == [g.kind for g in expected]
        for a, b in zip(garments, expected, strict=True):
            assert np.allclose(a.embedding, b.embedding, atol=1e-4)


def test_quality_is_scored_when_asked(pipeline: VisionPipeline) -> None:
    analysis = pipeline.analyze(_look(), want_quality=True)
    if pipeline.quality is None:
        assert analysis.quality_score is None
    else:
        assert analysis.quality_score is not None and 0.0 <= analysis.quality_score <= 1.0


def test_compat_projection_when_the_model_exists(pipeline: VisionPipeline) -> None:
    known = [KnownGarment("top", (130, 110, 270, 330)), KnownGarment("bottom", (140, 320, 260, 580))]
    analysis = pipeline.analyze(_look(), known=known)
    for garment in analysis.garments:
        if pipeline.compat_dim:
            assert garment.compat is not None and garment.compat.shape == (pipeline.compat_dim,)
        else:
            assert garment.compat is None


@pytest.mark.parametrize("want_quality", [False, True])
def test_look_with_no_garment_found_gives_an_empty_analysis(
    pipeline: VisionPipeline, monkeypatch: pytest.MonkeyPatch, want_quality: bool
) -> None:
    """A photo where the detector finds nothing above the presence threshold must not crash."""
    from shared.models.detector import Detection

    nothing = {k: Detection(k, (0.0, 0.0, 10.0, 10.0), 0.01) for k in ("top", "bottom", "full_body")}
    monkeypatch.setattr(pipeline, "_detect", lambda image: nothing)
    analysis = pipeline.analyze(Image.new("RGB", (300, 300), (128, 128, 128)), want_quality=want_quality)
    assert analysis.garments == []
    assert (analysis.width, analysis.height) == (300, 300)
    assert (analysis.quality_score is not None) == (want_quality and pipeline.quality is not None)


def test_compat_reusing_the_shared_pool_equals_rerunning_the_tail(pipeline: VisionPipeline) -> None:
    """With a frozen tail, the served shortcut (pooled feature of the shared forward) gives the same vectors."""
    import torch

    compat = pipeline.compat
    if compat is None or not compat.reuses_backbone_pool:
        pytest.skip("the shipped compatibility model fine-tunes its tail")
    crop = _look().crop((130, 110, 270, 330))
    stem, pooled = pipeline._forward(torch.stack([pipeline.squash(crop)]))
    colour = pipeline._compat_colour(crop)[None]
    shortcut = compat.project_pooled(stem, pooled, colour, "top")
    rerun = compat.project_features(stem.numpy(), colour, "top")
    np.testing.assert_allclose(shortcut, rerun, atol=1e-4)


def test_query_photo_with_quality_scores_the_whole_photo(pipeline: VisionPipeline) -> None:
    analysis = pipeline.analyze(_look(), single_garment=True, kind_hint="top", want_quality=True)
    assert len(analysis.garments) == 1 and analysis.garments[0].kind == "top"
    if pipeline.quality is not None:
        assert analysis.quality_score is not None and 0.0 <= analysis.quality_score <= 1.0


def test_presence_threshold_is_the_setting(pipeline: VisionPipeline) -> None:
    from shared.models.pipeline import pipeline_for
    from shared.settings import load_settings

    assert pipeline_for(load_settings(detect_min_confidence=0.7)).presence_threshold == 0.7
    found = {d.kind: d.confidence for d in pipeline.detector.detect(_look())}  # type: ignore[union-attr]
    for threshold in (0.0, 1.0, sorted(found.values())[1]):
        pipeline.presence_threshold = threshold
        try:
            kinds = {g.kind for g in pipeline.analyze(_look()).garments}
        finally:
            pipeline.presence_threshold = 0.5
        assert kinds == {k for k, c in found.items() if c >= threshold}
