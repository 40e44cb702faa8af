"""The quality filter: degradations, leak-free split, label store, threshold rule and the shipped model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.models.quality import REASONS, STAT_NAMES, image_stats, load_quality
from shared.models.quality_training import (
    DEGRADATIONS,
    Item,
    build_items,
    choose_threshold,
    load_image,
    read_labels,
    split_of,
)
from shared.settings import REPO_ROOT

pytestmark = pytest.mark.unit

DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()
MODELS = REPO_ROOT / "shared" / "models" / "artifacts"


def _look(tmp_path: Path, size: tuple[int, int] = (550, 830)) -> Path:
    rng = np.random.default_rng(0)
    array = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    path = tmp_path / "look.jpg"
    Image.fromarray(array).save(path, quality=95)
    return path


def test_each_degradation_does_what_its_reason_says(tmp_path: Path) -> None:
    path = _look(tmp_path)
    clean = image_stats(Image.open(path).convert("RGB"))
    stat = {name: i for i, name in enumerate(STAT_NAMES)}
    for name, (_, reason) in DEGRADATIONS.items():
        assert reason in REASONS
        item = Item(source="look:x", path=path, origin="look", degradation=name, good=False, reasons=(reason,))
        image = load_image(item)
        again = load_image(item)
        assert np.array_equal(np.asarray(image), np.asarray(again)), "degradations must be deterministic"
        stats = image_stats(image)
        if name == "dark":
            assert stats[stat["luma_mean"]] < 0.35 * clean[stat["luma_mean"]]
        elif name == "blur":
            assert stats[stat["log_laplacian_var"]] < clean[stat["log_laplacian_var"]] - 2
        elif name == "lowres":
            assert min(image.size) <= 160
        else:
            assert image.size[0] == 550 and image.size[1] <= 0.5 * 830 + 1


def test_split_never_separates_a_look_from_its_degraded_copies() -> None:
    if not (DATA / "looks" / "looks.json").is_file():
        pytest.skip("../shared/data is not on this machine")
    items = build_items(DATA, split="all", max_garments=50, max_products=50)
    sides: dict[str, set[str]] = {}
    for it in items:
        sides.setdefault(it.source, set()).add(it.split)
    assert all(len(s) == 1 for s in sides.values())
    looks = [it for it in items if it.origin == "look"]
    assert {it.degradation for it in looks} == {"none", *DEGRADATIONS}
    val = {s for s, side in sides.items() if side == {"val"}}
    assert 0.1 < len(val) / len(sides) < 0.3


def test_split_is_stable() -> None:
    assert [split_of(f"look:{i}") for i in range(50)] == [split_of(f"look:{i}") for i in range(50)]


def test_label_store_reads_editor_decisions(tmp_path: Path) -> None:
    path = _look(tmp_path)
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        "\n".join(
            json.dumps(rec)
            for rec in [
                {"image": "look.jpg", "label": "good", "reasons": [], "source": "editor"},
                {"image": str(path), "label": "bad", "reasons": ["too_dark", "odd"], "source": "editor"},
                {"image": str(path), "label": "bad", "source": "editor"},
                {"image": "missing.jpg", "label": "good", "source": "editor"},
            ]
        )
        + "\n"
    )
    items = read_labels(labels)
    assert [(it.good, it.reasons, it.reasons_known) for it in items] == [
        (True, (), True),
        (False, ("too_dark",), True),
        (False, (), False),
    ]
    assert all(it.origin == "editor" and it.weight > 1 for it in items)
    labels.write_text('{"image": "look.jpg", "label": "maybe"}\n')
    with pytest.raises(ValueError, match="good' or 'bad"):
        read_labels(labels)


def test_threshold_is_the_lowest_that_keeps_precision() -> None:
    rng = random.Random(0)
    scores = np.array([rng.random() for _ in range(2000)])
    good = (scores + np.array([rng.gauss(0, 0.2) for _ in range(2000)]) > 0.7).astype(np.int64)
    t = choose_threshold(scores, good, target=0.97)
    for cut in np.linspace(t, scores.max(), 20):
        kept = scores >= cut
        assert good[kept].mean() >= 0.97
    lower = scores >= t - 0.02
    assert good[lower].mean() < 0.97 or lower.sum() == (scores >= t).sum()


def test_shipped_model_keeps_a_look_and_rejects_its_dark_and_half_copies() -> None:
    model = load_quality(MODELS)
    if model is None:
        pytest.fail("the quality artifact is missing: run `lookbook train quality --data ../shared/data`")
    assert model.version.startswith("quality-") and 0.0 < model.threshold < 1.0
    if not (DATA / "looks" / "looks.json").is_file():
        pytest.skip("../shared/data is not on this machine")
    looks = json.loads((DATA / "looks" / "looks.json").read_text())["looks"]
    look_id = next(i for i in sorted(looks) if split_of(f"look:{i}") == "val" and "lower_box_xyxy" in looks[i])
    path = DATA / "looks" / looks[look_id]["image"]
    item = Item(source=f"look:{look_id}", path=path, origin="look")
    verdict = model.score(load_image(item))
    assert verdict.accepted and verdict.reasons == [] and 0 <= verdict.score <= 1
    dark = model.score(load_image(Item(source=item.source, path=path, origin="look", degradation="dark")))
    assert not dark.accepted and "too_dark" in dark.reasons
    features = model.backbone_features([load_image(item)])
    assert abs(model.score(load_image(item), features=features).score - verdict.score) < 1e-5
