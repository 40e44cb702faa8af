"""`lookbook eval detector-seeds` end to end on a small folder of real looks: one training per seed,
reproducible per seed, summarised, and no artifact written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from services.cli import main
from shared.models.vision_data import is_val

pytestmark = pytest.mark.integration

ARTIFACT = Path(__file__).resolve().parents[2] / "shared" / "models" / "artifacts" / "detector" / "manifest.json"


def _mini_looks(team_data: Path, root: Path, train: int = 10, val: int = 3) -> Path:
    looks = json.loads((team_data / "looks" / "looks.json").read_text())
    both = [(k, r) for k, r in sorted(looks["looks"].items()) if r.get("upper_box_xyxy") and r.get("lower_box_xyxy")]
    picked = dict([(k, r) for k, r in both if not is_val(f"LookRecord:{k}")][:train]
                  + [(k, r) for k, r in both if is_val(f"LookRecord:{k}")][:val])
    (root / "looks" / "images").mkdir(parents=True)
    for rec in picked.values():
        shutil.copy(team_data / "looks" / rec["image"], root / "looks" / rec["image"])
    (root / "looks" / "looks.json").write_text(json.dumps({"labels": looks["labels"], "looks": picked}))
    return root


def test_detector_seeds_trains_once_per_seed_reproducibly_and_writes_no_artifact(
    team_data: Path, tmp_path: Path
) -> None:
    data = _mini_looks(team_data, tmp_path / "data")
    shipped = ARTIFACT.read_bytes()
    out = tmp_path / "seeds.json"
    args = ["eval", "detector-seeds", "--data", str(data), "--seeds", "7,3,7", "--look-views", "2",
            "--garment-views", "0", "--tag-views", "0", "--photo-fraction", "0", "--epochs", "2", "--json", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "bottom hit" in result.output and "mean" in result.output
    report = json.loads(out.read_text())
    assert [r["seed"] for r in report["runs"]] == [7, 3, 7]
    first, _, again = report["runs"]
    assert first == again  # a fixed seed trains the same head
    for key in ("top_hit_rate", "bottom_hit_rate", "bottom_mean_iou"):
        values = [r[key] for r in report["runs"]]
        assert report["summary"][key]["mean"] == pytest.approx(sum(values) / 3)
        assert report["summary"][key]["min"] == min(values) <= max(values) == report["summary"][key]["max"]
    assert report["recipe"]["epochs"] == 2 and report["split"] == "val"
    assert ARTIFACT.read_bytes() == shipped


def test_detector_seeds_rejects_a_bad_seed_list_before_training(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["eval", "detector-seeds", "--seeds", "one,two", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "comma-separated list of integers" in result.output


def test_detector_seeds_says_what_to_pass_when_a_split_has_no_annotated_looks(team_data: Path, tmp_path: Path) -> None:
    data = _mini_looks(team_data, tmp_path / "data", train=3, val=0)
    result = CliRunner().invoke(main, ["eval", "detector-seeds", "--data", str(data), "--seeds", "1"])
    assert result.exit_code == 1 and "no annotated looks (with boxes) in split val" in result.output


def test_eval_detection_counts_hits_per_garment_label_and_misses_per_edge_of_the_shipped_detector(
    team_data: Path, tmp_path: Path
) -> None:
    import torch

    from shared.models.detector import load_detector
    from shared.models.vision_data import load_looks, pick_split
    from shared.models.vision_training import evaluate_detection

    data = _mini_looks(team_data, tmp_path / "data", train=0, val=6)
    models = ARTIFACT.parent.parent
    report = evaluate_detection(data, "val", device=torch.device("cpu"), detector=load_detector(models),
                                cache_dir=tmp_path / "cache")
    looks = pick_split(load_looks(data), "val")
    for kind in ("top", "bottom"):
        entry = report[kind]
        groups = entry["by_label"]
        assert sum(g["n"] for g in groups.values()) == entry["n"] == 6
        assert sum(g["hits"] for g in groups.values()) == round(entry["hit_rate"] * entry["n"])
        assert set(groups) == {"+".join(lk.labels[kind]) for lk in looks}
        edges = entry["edges"]
        below_half = sum(n for bin_, n in entry["iou_histogram"].items() if float(bin_.split("-")[1]) <= 0.5)
        assert edges["misses"] == below_half
        assert all(0 <= n <= edges["misses"] for n in edges["fixed_by_true_edge"].values())


def test_eval_vision_on_a_folder_of_looks_alone_scores_them_and_says_why_category_is_not_scored(
    team_data: Path, tmp_path: Path
) -> None:
    data = _mini_looks(team_data, tmp_path / "data", train=0, val=3)
    out = tmp_path / "vision.json"
    result = CliRunner().invoke(main, ["eval", "vision", "--data", str(data), "--split", "val", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "category: not scored" in result.output and "garments/garments.csv" in result.output
    assert "bottom misses (IoU < 0.5" in result.output
    report = json.loads(out.read_text())
    assert report["detection"]["looks"] == 3 and report["category"]["photos"] == 0
    assert report["retrieval"]["library_looks"] == 3
