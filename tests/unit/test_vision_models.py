"""The vision heads' building blocks: colour features, garment extents, augmented views, the dev split,
head shapes and artifact round trips, and the commands' help."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw

from shared.models import category as category_mod
from shared.models import detector as detector_mod
from shared.models import embedding as embedding_mod
from shared.models.artifacts import load_artifact, save_artifact
from shared.models.colour import HIST_DIM, colour_histogram, colour_names
from shared.models.vision_data import (
    DETECT_KINDS,
    box_area,
    detection_view,
    foreground_box,
    iou,
    is_val,
    perturbed_crop,
)

pytestmark = pytest.mark.unit


def _product_shot(colour: tuple[int, int, int] = (200, 30, 30)) -> Image.Image:
    image = Image.new("RGB", (240, 330), (250, 250, 250))
    ImageDraw.Draw(image).rectangle((60, 40, 180, 290), fill=colour)
    return image


def test_colour_histogram_is_a_unit_vector_and_names_the_colour() -> None:
    hist = colour_histogram(_product_shot())
    assert hist.shape == (HIST_DIM,)
    assert np.isclose(np.linalg.norm(hist), 1.0, atol=1e-5)
    assert colour_names(Image.new("RGB", (50, 50), (200, 30, 30)))[0] == "red"
    assert colour_names(Image.new("RGB", (50, 50), (10, 10, 10)))[0] == "black"


def test_foreground_box_finds_a_product_on_a_plain_background() -> None:
    box = foreground_box(_product_shot())
    assert iou(box, (60, 40, 181, 291)) > 0.8


def test_foreground_box_of_a_busy_photo_is_the_whole_photo() -> None:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (100, 80, 3), dtype=np.uint8))
    assert foreground_box(noise) == (0.0, 0.0, 80.0, 100.0)


def test_detection_views_keep_boxes_inside_the_image() -> None:
    image = Image.new("RGB", (200, 300), (120, 120, 120))
    boxes = {"top": (50.0, 60.0, 150.0, 150.0), "bottom": (55.0, 140.0, 145.0, 260.0)}
    for view in range(12):
        out, moved = detection_view(image, boxes, view, "look:test")  # type: ignore[arg-type]
        w, h = out.size
        for box in moved.values():
            assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
            assert box_area(box) > 0
    same = detection_view(image, boxes, 5, "look:test")[1]  # type: ignore[arg-type]
    assert same == detection_view(image, boxes, 5, "look:test")[1]  # type: ignore[arg-type]


def test_perturbed_crop_is_seeded() -> None:
    image = _product_shot()
    a = np.asarray(perturbed_crop(image, (60, 40, 180, 290), "q"))
    b = np.asarray(perturbed_crop(image, (60, 40, 180, 290), "q"))
    assert a.shape == b.shape and np.array_equal(a, b)


def test_dev_split_is_fixed_and_about_a_fifth() -> None:
    ids = [f"LookRecord:{i:04d}" for i in range(2000)]
    share = np.mean([is_val(i) for i in ids])
    assert 0.15 < share < 0.25
    assert [is_val(i) for i in ids[:50]] == [is_val(i) for i in ids[:50]]


def test_detector_head_shapes_and_decoded_boxes() -> None:
    head = detector_mod.DetectorHead().eval()
    g = detector_mod.DETECT_SIZE
    raw = head(torch.randn(2, detector_mod.S16_CHANNELS, g // 16, g // 16),
               torch.randn(2, detector_mod.S32_CHANNELS, g // 32, g // 32))
    presence, boxes = detector_mod.decode(raw)
    assert presence.shape == (2, len(DETECT_KINDS)) and boxes.shape == (2, len(DETECT_KINDS), 4)
    assert bool((boxes[..., 2] >= boxes[..., 0]).all() and (boxes >= 0).all() and (boxes <= 1).all())


def test_heads_round_trip_through_artifacts(tmp_path: Path) -> None:
    head = detector_mod.DetectorHead()
    save_artifact("detector", detector_mod.head_state(head, {"c16": 32, "c32": 64, "grid": 5, "fc": 256}),
                  version="detector-t", training_data={}, params={}, metrics={}, models_dir=tmp_path)
    loaded = load_artifact("detector", tmp_path)
    assert loaded is not None
    restored = detector_mod.head_from_state(loaded[0])
    assert restored.mlp[-1].weight.shape == head.mlp[-1].weight.shape

    projection = embedding_mod.EmbeddingProjection()
    save_artifact("embedding", embedding_mod.projection_state(projection, {"dim": 256, "colour_weight": 0.5}),
                  version="embedding-t", training_data={}, params={}, metrics={}, models_dir=tmp_path)
    model = embedding_mod.load_embedding(tmp_path)
    assert model is not None and model.dim == 256
    vectors = model.embed(torch.randn(3, 1280), np.abs(np.random.default_rng(0).normal(size=(3, HIST_DIM))))
    assert vectors.shape == (3, 256) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3)

    category = category_mod.CategoryHead()
    save_artifact("category", category_mod.head_state(category, {"hidden": 256, "dropout": 0.3}),
                  version="category-t", training_data={}, params={}, metrics={}, models_dir=tmp_path)
    cat = category_mod.load_category(tmp_path)
    assert cat is not None
    probs = cat.probabilities(torch.randn(4, 1280))
    assert probs.shape == (4, 4) and torch.allclose(probs.sum(1), torch.ones(4), atol=1e-3)


def test_vision_commands_have_help() -> None:
    from services.cli import main

    runner = CliRunner()
    for args in (["train", "detector"], ["train", "category"], ["train", "embedding"], ["eval", "vision"],
                 ["bench", "vision"]):
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0, result.output
        assert "--data" in result.output


DEMO_IMAGES = Path(__file__).resolve().parents[2] / "demo" / "images"


def _demo_crops(n: int = 8) -> list[Image.Image]:
    """Garment-sized crops (upper and lower halves) of real demo looks, at several sizes."""
    crops = []
    for path in sorted(DEMO_IMAGES.glob("*.jpg"))[:n]:
        with Image.open(path) as image:
            image = image.convert("RGB")
        w, h = image.size
        crops += [image.crop((0, 0, w, h // 2)), image.crop((w // 4, h // 2, 3 * w // 4, h)).resize((90, 130))]
    return crops


def test_fast_bilinear_resize_is_pil_within_one_grey_level() -> None:
    from shared.models.resize import resize_array

    for crop in _demo_crops():
        for size in ((48, 64), (40, 40), (160, 160)):
            ours = resize_array(crop, *size).astype(int)
            pil = np.asarray(crop.resize(size, Image.Resampling.BILINEAR)).astype(int)
            assert ours.shape == pil.shape and np.abs(ours - pil).max() <= 1


def test_squash_features_match_the_pil_bicubic_ones() -> None:
    from shared.models.backbone import Squash, shared_backbone, to_tensor

    backbone, squash = shared_backbone(), Squash()
    crops = _demo_crops(4)
    ours = torch.stack([squash(c) for c in crops])
    pil = torch.stack([to_tensor(c.resize((224, 224), Image.Resampling.BICUBIC)) for c in crops])
    assert ours.shape == pil.shape and ours.dtype == torch.float32
    assert float(ours.min()) >= -1.0 and float(ours.max()) <= 1.0
    with torch.inference_mode():
        a = backbone.forward_head(backbone.forward_features(ours), pre_logits=True)
        b = backbone.forward_head(backbone.forward_features(pil), pre_logits=True)
    assert float(torch.nn.functional.cosine_similarity(a, b).min()) >= 0.9995


def test_colour_words_and_histogram_share_one_lab_pass() -> None:
    from shared.models.colour import centre_lab

    crop = _product_shot((20, 40, 160))
    lab = centre_lab(crop)
    np.testing.assert_array_equal(colour_histogram(crop, lab=lab), colour_histogram(crop))
    assert colour_names(crop, lab=lab) == colour_names(crop)
