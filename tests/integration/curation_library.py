"""A small real look library for the curation tests: a Qdrant Edge store in a temp dir, seeded with looks.

Look photos come from the team data (../shared/data/looks) when it is there, else from the bundled
demo library; without either, plain generated JPEGs stand in, since curation never looks at pixels.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from shared.store import EdgeLookStore, LookPoint, LookRecord, look_id_for_sha256

ROOT = Path(__file__).resolve().parents[2]
LOOK_SOURCES = (ROOT.parent / "shared" / "data" / "looks", ROOT / "demo")
DIMS = (16, 8)
MODEL_VERSION = "curation-test-1"
REASONS = ("too_dark", "too_blurry", "low_resolution", "not_full_body", "not_a_look")


@dataclass(frozen=True)
class SeedLook:
    image: Path
    width: int
    height: int
    top_box: tuple[float, float, float, float] | None
    bottom_box: tuple[float, float, float, float] | None


def _boxes(rec: dict[str, Any]) -> tuple[Any, Any]:
    """Top and bottom boxes of a team-data record (upper/lower_box_xyxy) or a demo manifest entry (top/bottom_box)."""
    return rec.get("upper_box_xyxy", rec.get("top_box")), rec.get("lower_box_xyxy", rec.get("bottom_box"))


def _real_looks(limit: int) -> list[SeedLook]:
    for folder in LOOK_SOURCES:
        manifest = folder / "looks.json"
        if not manifest.is_file():
            continue
        data = json.loads(manifest.read_text())
        records = list(data["looks"].values()) if isinstance(data, dict) else list(data)
        found = []
        for rec in records:
            top, bottom = _boxes(rec) if isinstance(rec, dict) else (None, None)
            image = folder / str(rec.get("image", "")) if isinstance(rec, dict) else folder
            if top is None or bottom is None or not image.is_file():
                continue
            width, height = int(rec.get("width", 0)), int(rec.get("height", 0))
            if not (width and height):
                with Image.open(image) as opened:
                    width, height = opened.size
            found.append(SeedLook(image, width, height, tuple(top), tuple(bottom)))  # type: ignore[arg-type]
            if len(found) >= limit:
                return found
    return []


def _generated_looks(folder: Path, count: int) -> list[SeedLook]:
    folder.mkdir(parents=True, exist_ok=True)
    looks = []
    for i in range(count):
        image = Image.new("RGB", (300, 450), (230, 230, 225))
        draw = ImageDraw.Draw(image)
        draw.rectangle((90, 60, 210, 220), fill=((37 * i) % 255, 90, 160))
        draw.rectangle((100, 220, 200, 420), fill=(40, (53 * i) % 255, 70))
        path = folder / f"look-{i:03d}.jpg"
        image.save(path, quality=85)
        looks.append(SeedLook(path, 300, 450, (90, 60, 210, 220), (100, 220, 200, 420)))
    return looks


def seed_looks(count: int, scratch: Path) -> list[SeedLook]:
    looks = _real_looks(count)
    return looks if len(looks) >= count else _generated_looks(scratch / "generated", count)


def open_seeded_store(
    store_dir: Path, scratch: Path, *, count: int = 12, statuses: tuple[str, ...] = ("pending", "approved")
) -> tuple[EdgeLookStore, list[LookRecord]]:
    """A live store holding `count` looks, alternating through `statuses`, quality spread over [0, 1)."""
    store = EdgeLookStore(store_dir)
    store.ensure(MODEL_VERSION, DIMS)
    rng = np.random.default_rng(7)
    points = []
    for i, look in enumerate(seed_looks(count, scratch)):
        sha = hashlib.sha256(look.image.read_bytes()).hexdigest()
        record = LookRecord(
            look_id=look_id_for_sha256(sha),
            image_path=str(look.image),
            width=look.width,
            height=look.height,
            top_box=look.top_box,
            bottom_box=look.bottom_box,
            tags=["street"] + (["denim"] if i % 3 == 0 else []),
            source="team-looks" if i % 2 == 0 else "blog-import",
            attribution="Clothing Co-Parsing (Apache-2.0)",
            quality_score=round((i % 10) / 10 + 0.05, 2),
            quality_reasons=[] if (i % 10) >= 5 else [REASONS[i % len(REASONS)]],
            status=statuses[i % len(statuses)],  # type: ignore[arg-type]
            model_version=MODEL_VERSION,
            content_sha256=sha,
        )
        vectors = {
            name: rng.normal(size=DIMS[0] if name in ("top", "bottom") else DIMS[1])
            for name in ("top", "bottom", "top_compat", "bottom_compat")
        }
        points.append(LookPoint(record=record, vectors=vectors))
    store.upsert(points)
    records = [store.get(p.record.look_id) for p in points]
    return store, [r for r in records if r is not None]


def jpeg_bytes(color: tuple[int, int, int] = (120, 80, 60)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(out, format="JPEG")
    return out.getvalue()
