"""`lookbook eval quality` end to end on a small folder laid out like ../shared/data, with the shipped model."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from services.cli import main

pytestmark = pytest.mark.integration


def _mini_data(team_data: Path, root: Path) -> Path:
    looks = json.loads((team_data / "looks" / "looks.json").read_text())
    picked = dict(sorted(looks["looks"].items())[:4])
    (root / "looks" / "images").mkdir(parents=True)
    for rec in picked.values():
        shutil.copy(team_data / "looks" / rec["image"], root / "looks" / rec["image"])
    (root / "looks" / "looks.json").write_text(json.dumps({"labels": looks["labels"], "looks": picked}))
    for folder, csv_name, rows_from in (("garments", "garments.csv", "image"), ("outfits", "products.csv", "image")):
        with (team_data / folder / csv_name).open(newline="") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            rows = [r for r in reader if r.get(rows_from)][:2]
        (root / folder / "images").mkdir(parents=True)
        for row in rows:
            shutil.copy(team_data / folder / row[rows_from], root / folder / row[rows_from])
        with (root / folder / csv_name).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    return root


def test_eval_quality_prints_a_table_and_json_for_all_of_a_new_folder(team_data: Path, tmp_path: Path) -> None:
    data = _mini_data(team_data, tmp_path / "data")
    out = tmp_path / "quality.json"
    result = CliRunner().invoke(main, ["eval", "quality", "--data", str(data), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "precision (accepted looks)" in result.output and "not_full_body" in result.output
    report = json.loads(out.read_text())
    # Not the training folder: every image of it, each look with its five degraded copies.
    assert report["split"] == "all"
    assert (report["n_good"], report["n_bad"]) == (4, 4 * 5 + 2 + 2)
    assert set(report["reasons"]) == {"too_dark", "too_blurry", "low_resolution", "not_full_body", "not_a_look"}
    assert 0.0 <= report["precision"] <= 1.0 and 0.0 <= report["auc"] <= 1.0
