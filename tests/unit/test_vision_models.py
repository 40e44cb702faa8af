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
    garment_photo_view,
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


def test_garment_photo_view_frames_the_garment_with_some_background() -> None:
    image = Image.new("RGB", (200, 400), (120, 120, 120))
    boxes = {"top": (50.0, 60.0, 150.0, 170.0), "bottom": (55.0, 160.0, 145.0, 380.0)}
    for seed in range(10):
        out, kept = garment_photo_view(image, boxes, "top", ("t", seed))  # type: ignore[arg-type]
        w, h = out.size
        top = kept["top"]
        # The top fills most of the photo: none or 5-35% of its size is added on each side.
        assert 100 <= w <= 100 * 1.7 + 1 and 110 <= h <= 110 * 1.7 + 1
        assert 0 <= top[0] < top[2] <= w and 0 <= top[1] < top[3] <= h
        assert (top[2] - top[0]) == pytest.approx(100, abs=1) and (top[3] - top[1]) == pytest.approx(110, abs=1)
        # The bottom is mostly out of the frame: no longer a garment of this photo.
        assert "bottom" not in kept
    # Unaugmented, it is a plain crop: the same pixels as the source, and fixed by the seed.
    plain, kept = garment_photo_view(image, boxes, "bottom", "q", augment=False)  # type: ignore[arg-type]
    assert plain.size == garment_photo_view(image, boxes, "bottom", "q", augment=False)[0].size  # type: ignore[arg-type]
    assert "bottom" in kept and np.asarray(plain).std() == 0
    loose, _ = garment_photo_view(image, boxes, "top", "q", augment=False, tight=0.0)  # type: ignore[arg-type]
    assert loose.width >= 110 and loose.height >= 121
    # Tight: the crop of the box itself, which then fills the photo.
    crop, kept = garment_photo_view(image, boxes, "top", "q", augment=False, tight=1.0)  # type: ignore[arg-type]
    assert crop.size == (100, 110) and kept["top"] == (0.0, 0.0, 100.0, 110.0)


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


def _maps(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = detector_mod.DETECT_SIZE
    return (torch.randn(n, detector_mod.S16_CHANNELS, g // 16, g // 16),
            torch.randn(n, detector_mod.S32_CHANNELS, g // 32, g // 32))


def test_detector_head_shapes_and_decoded_boxes() -> None:
    head = detector_mod.DetectorHead().eval()
    out = head(*_maps(2))
    g = detector_mod.DETECT_SIZE // 16
    assert out.columns.shape == (2, len(DETECT_KINDS), 2, g) and out.rows.shape == (2, len(DETECT_KINDS), 2, g)
    presence, boxes = detector_mod.decode(out)
    assert presence.shape == (2, len(DETECT_KINDS)) and boxes.shape == (2, len(DETECT_KINDS), 4)
    assert bool((boxes[..., 2] >= boxes[..., 0]).all() and (boxes[..., 3] >= boxes[..., 1]).all())
    assert bool((boxes >= 0).all() and (boxes <= 1).all())


def test_edge_profiles_decode_to_their_peaks() -> None:
    # Sharp profiles at columns 2 and 7, rows 1 and 8 of a 10-cell map decode to those cells' centres.
    cells = 10
    columns = torch.full((1, 1, 2, cells), -50.0)
    rows = torch.full((1, 1, 2, cells), -50.0)
    columns[0, 0, 0, 2] = columns[0, 0, 1, 7] = 50.0
    rows[0, 0, 0, 8] = rows[0, 0, 1, 1] = 50.0  # given in either order: the box is still y0 <= y1
    presence, boxes = detector_mod.decode(detector_mod.HeadOutput(torch.zeros(1, 1), columns, rows))
    assert boxes[0, 0].tolist() == pytest.approx([0.25, 0.15, 0.75, 0.85], abs=0.02)
    assert presence.item() == pytest.approx(0.5)


def test_detector_head_learns_boxes_and_presence_from_maps() -> None:
    from shared.models.vision_training import detector_loss

    torch.manual_seed(0)
    s16, s32 = _maps(16)
    # Each kind's box moves with a feature the maps carry: the head must read it off them.
    shift = (s16[:, 0].mean(dim=(1, 2)) > 0).float()
    target = torch.zeros(16, len(DETECT_KINDS), 6)
    one = torch.ones(16)
    target[:, 0] = torch.stack([one, 0.2 + 0.2 * shift, 0.1 * one, 0.8 * one, 0.4 + 0.2 * shift, one], 1)
    target[:, 1, 0] = shift  # the bottom is present exactly when the feature is on
    head = detector_mod.DetectorHead()
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    first = float(detector_loss(head(s16, s32), target).detach())
    for _ in range(150):
        loss = detector_loss(head(s16, s32), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    presence, boxes = detector_mod.decode(head(s16, s32))
    assert float(loss.detach()) < first / 3
    assert boxes[:, 0, 0].tolist() == pytest.approx((0.2 + 0.2 * shift).tolist(), abs=0.05)
    assert boxes[:, 0, 3].tolist() == pytest.approx((0.4 + 0.2 * shift).tolist(), abs=0.05)
    assert ((presence[:, 1] > 0.5).float() == shift).all()


def test_tag_only_looks_teach_presence_but_not_boxes(tmp_path: Path) -> None:
    import json

    from shared.models.vision_data import load_looks
    from shared.models.vision_training import _target, detection_jobs

    (tmp_path / "looks" / "images").mkdir(parents=True)
    document = {
        "labels": {"upper_labels": ["blouse"], "lower_labels": ["skirt"], "full_body_labels": ["dress"]},
        "looks": {
            "1": {"image": "images/1.jpg", "annotation": "boxes", "upper_box_xyxy": [10, 10, 90, 50]},
            "2": {"image": "images/2.jpg", "annotation": "tags", "tags": ["blouse", "skirt", "hair"]},
            "3": {"image": "images/3.jpg", "annotation": "tags", "tags": ["hair"]},
        },
    }
    (tmp_path / "looks" / "looks.json").write_text(json.dumps(document))
    looks = {lk.id: lk for lk in load_looks(tmp_path)}
    assert looks["1"].worn == {"top"} and looks["2"].worn == {"top", "bottom"} and not looks["3"].worn
    assert not looks["2"].boxes

    # A tag-only look: present, box unknown (last column 0); a box look: box known.
    tagged = _target({}, 100, 100, looks["2"].worn)
    assert tagged[:, 0].tolist() == [1.0, 1.0, 0.0] and tagged[:, 5].tolist() == [0.0, 0.0, 0.0]
    boxed = _target(looks["1"].boxes, 100, 100)
    assert boxed[0].tolist() == pytest.approx([1.0, 0.1, 0.1, 0.9, 0.5, 1.0]) and boxed[1:].sum() == 0

    # Tag-only looks get no crop views (a crop could cut a garment whose box we do not know).
    jobs = detection_jobs(tmp_path, "all", look_views=4, photo_views=1, tag_views=4)
    assert sorted(j.view for j in jobs if j.seed == "look:2") == [0, 1]
    assert sorted(j.view for j in jobs if j.seed == "look:1") == [0, 1, 2, 3]
    assert not [j for j in jobs if j.seed == "look:3"]

    # Garment views: shopper-like photos of a box look's annotated garments only.
    jobs = detection_jobs(tmp_path, "all", look_views=1, photo_views=0, garment_views=2)
    assert sorted((j.focus or "", j.view) for j in jobs if j.seed == "look:1") == [("", 0), ("top", 0), ("top", 1)]
    assert not [j for j in jobs if j.seed == "look:2" and j.focus]


def test_heads_round_trip_through_artifacts(tmp_path: Path) -> None:
    head = detector_mod.DetectorHead(width=64).eval()
    save_artifact("detector", detector_mod.head_state(head, {"width": 64}),
                  version="detector-t", training_data={}, params={}, metrics={}, models_dir=tmp_path)
    loaded = load_artifact("detector", tmp_path)
    assert loaded is not None
    restored = detector_mod.head_from_state(loaded[0])
    maps = _maps(1)
    with torch.inference_mode():
        assert torch.allclose(detector_mod.decode(restored(*maps))[1], detector_mod.decode(head(*maps))[1], atol=2e-3)

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
                 ["eval", "detector-seeds"], ["bench", "vision"]):
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


def test_feature_extraction_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    # Training seeds torch, then computes (or reads cached) features, then initialises its head:
    # the features must not draw from the global RNG, or a cached run trains a different head.
    from shared.models.vision_training import CropJob, DetectJob, crop_features, detect_features

    paths = []
    for i, colour in enumerate(("red", "navy")):
        image = Image.new("RGB", (120, 180), "white")
        ImageDraw.Draw(image).rectangle((30, 20, 90, 90), fill=colour)
        paths.append(tmp_path / f"{i}.jpg")
        image.save(paths[-1])
    detect_jobs = [DetectJob(p, {"top": (30.0, 20.0, 90.0, 90.0)}, 0, f"look:{i}") for i, p in enumerate(paths)]
    crop_jobs = [CropJob(p, (30.0, 20.0, 90.0, 90.0), 0, f"look:{i}") for i, p in enumerate(paths)]
    torch.manual_seed(0)
    expected = torch.rand(4)
    for _ in range(2):  # computed, then read from the cache
        torch.manual_seed(0)
        s16, s32, target = detect_features(detect_jobs, device=torch.device("cpu"), cache_dir=tmp_path / "cache")
        crop_features(crop_jobs, device=torch.device("cpu"), cache_dir=tmp_path / "cache")
        assert torch.equal(torch.rand(4), expected)
    assert s16.shape[0] == s32.shape[0] == 2 and target[:, 0, 0].tolist() == [1.0, 1.0]


def test_iou_histogram_puts_each_detection_in_one_bin_and_tells_near_misses_from_gross_ones() -> None:
    from shared.models.vision_training import iou_histogram

    bins = iou_histogram([0.0, 0.05, 0.45, 0.49, 0.5, 0.93, 1.0])
    assert sum(bins.values()) == 7
    assert bins["0.0-0.1"] == 2 and bins["0.4-0.5"] == 2 and bins["0.5-0.6"] == 1
    assert bins["0.9-1.0"] == 2  # a perfect box is in the last bin
    assert list(bins) == [f"{i / 10:.1f}-{(i + 1) / 10:.1f}" for i in range(10)]


def test_edge_diagnosis_names_the_edge_that_alone_would_turn_a_miss_into_a_hit() -> None:
    from shared.models.vision_training import edge_diagnosis

    truth = (0.0, 0.0, 100.0, 100.0)
    found = [truth,
             (0.0, 0.0, 100.0, 250.0),  # runs on down: IoU 0.4, the true bottom edge makes it a hit
             (60.0, 0.0, 160.0, 100.0)]  # shifted right: IoU 0.25, only the true left edge gets it to 0.625
    report = edge_diagnosis(found, [truth] * 3, [(200.0, 200.0)] * 3)
    assert report["misses"] == 2
    assert report["fixed_by_true_edge"] == {"left": 1, "top": 0, "right": 0, "bottom": 1}
    assert report["mean_error"] == pytest.approx({"left": 0.1, "top": 0.0, "right": 0.1, "bottom": 0.25})
    assert report["mean_abs_error"] == pytest.approx(report["mean_error"])


def test_hits_by_label_groups_hits_per_garment_label_most_frequent_first() -> None:
    from shared.models.vision_training import hits_by_label

    labels = [("pants",), ("skirt",), ("pants",), ("leggings", "skirt"), (), ("skirt",), ("pants",)]
    hits = [True, False, True, True, False, True, False]
    groups = hits_by_label(labels, hits)
    assert list(groups) == ["pants", "skirt", "leggings+skirt", "unlabelled"]
    assert groups["pants"] == {"n": 3, "hits": 2, "hit_rate": pytest.approx(2 / 3)}
    assert groups["skirt"]["hits"] == 1 and groups["unlabelled"] == {"n": 1, "hits": 0, "hit_rate": 0.0}
    assert sum(g["n"] for g in groups.values()) == len(labels)
    with pytest.raises(ValueError):
        hits_by_label(labels, hits[:-1])


def test_load_looks_keeps_each_box_kinds_garment_labels(tmp_path: Path) -> None:
    import json

    from shared.models.vision_data import load_looks

    (tmp_path / "looks").mkdir()
    document = {"looks": {
        "1": {"image": "images/1.jpg", "annotation": "boxes", "upper_box_xyxy": [1, 1, 9, 5],
              "upper_labels": ["shirt", "blazer"], "lower_box_xyxy": [1, 5, 9, 9],
              "lower_labels": ["skirt", "leggings"]},
        "2": {"image": "images/2.jpg", "annotation": "boxes", "full_box_xyxy": [1, 1, 9, 9]},
        "3": {"image": "images/3.jpg", "annotation": "tags", "tags": ["skirt"]},
    }}
    (tmp_path / "looks" / "looks.json").write_text(json.dumps(document))
    looks = {lk.id: lk for lk in load_looks(tmp_path)}
    assert looks["1"].labels == {"top": ("blazer", "shirt"), "bottom": ("leggings", "skirt")}
    assert looks["2"].labels == {"full_body": ()}  # a box without labels
    assert looks["3"].labels == {}  # tag-only: no boxes, so no box labels
