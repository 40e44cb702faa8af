"""The team data as the vision heads see it: looks with garment boxes, single-garment photos with their
kind and extent, the fixed dev split, and the seeded augmentations that mimic shoppers' photos.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
from PIL import Image, ImageEnhance

Kind = Literal["top", "bottom", "full_body", "other"]
BoxXYXY = tuple[float, float, float, float]
Split = Literal["train", "val", "all"]
T = TypeVar("T", "LookRecord", "GarmentPhoto")

DETECT_KINDS: tuple[Kind, ...] = ("top", "bottom", "full_body")
CATEGORY_KINDS: tuple[Kind, ...] = ("top", "bottom", "full_body", "other")
# One in VAL_MODULUS items (by a hash of its id) is the dev validation split that training never sees.
VAL_MODULUS = 5

GARMENT_LABELS: dict[str, Kind] = {
    **{k: "top" for k in ("T-Shirt", "Longsleeve", "Shirt", "Polo", "Blazer", "Hoodie", "Outwear", "Top",
                          "Undershirt", "Blouse", "Body")},
    **{k: "bottom" for k in ("Pants", "Shorts", "Skirt")},
    "Dress": "full_body",
    **{k: "other" for k in ("Shoes", "Hat", "Other")},
}
PRODUCT_CATEGORIES: dict[str, Kind] = {
    "Tops": "top", "Outerwear": "top", "Bottoms": "bottom", "Dresses, jumpsuits and Complete set": "full_body",
}
# looks.json's box fields: the kind each names, and the field that lists that box's garment labels.
_LOOK_KEYS: dict[str, tuple[Kind, str]] = {
    "upper_box_xyxy": ("top", "upper_labels"), "lower_box_xyxy": ("bottom", "lower_labels"),
    "full_box_xyxy": ("full_body", "full_labels"),
}
# looks.json's `labels` lists: which tags name a top, a bottom or a full-body garment.
_LABEL_LISTS: dict[str, Kind] = {"upper_labels": "top", "lower_labels": "bottom", "full_body_labels": "full_body"}


@dataclass(frozen=True)
class LookRecord:
    """A street look with its annotated garment boxes (pixels); `boxes` is empty for tag-only looks.

    `worn` holds the kinds its labels name (a box look's box kinds; a tag-only look's from its tags),
    so a tag-only look still teaches the detector which garments are present. `labels` holds a box
    look's garment labels per box kind (looks.json's upper_labels, lower_labels, full_labels: a
    lower box made from a skirt's and leggings' masks is ("leggings", "skirt")).
    """

    id: str
    path: Path
    boxes: dict[Kind, BoxXYXY]
    worn: frozenset[Kind] = frozenset()
    labels: dict[Kind, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class GarmentPhoto:
    """A photo of one garment (a phone photo from garments/ or a product shot from outfits/)."""

    id: str
    path: Path
    kind: Kind
    source: Literal["garments", "outfits"]


def is_val(item_id: str) -> bool:
    return int(hashlib.sha1(item_id.encode()).hexdigest()[:8], 16) % VAL_MODULUS == 0


def pick_split(items: Sequence[T], split: Split) -> list[T]:
    if split == "all":
        return list(items)
    return [item for item in items if is_val(f"{type(item).__name__}:{item.id}") == (split == "val")]


def load_looks(data_dir: Path) -> list[LookRecord]:
    path = data_dir / "looks" / "looks.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: pass --data pointing at a folder laid out like ../shared/data")
    document = json.loads(path.read_text())
    labels = document.get("labels", {})
    tag_kinds: dict[str, Kind] = {}
    for key, kind in _LABEL_LISTS.items():
        tag_kinds.update({str(label): kind for label in labels.get(key, [])})
    looks = []
    for look_id, rec in sorted(document["looks"].items()):
        boxes: dict[Kind, BoxXYXY] = {}
        box_labels: dict[Kind, tuple[str, ...]] = {}
        for key, (kind, labels_key) in _LOOK_KEYS.items():
            if rec.get(key):
                x0, y0, x1, y1 = (float(v) for v in rec[key])
                boxes[kind] = (x0, y0, x1, y1)
                box_labels[kind] = tuple(sorted(str(v) for v in rec.get(labels_key) or ()))
        worn = frozenset(boxes) | frozenset(tag_kinds[t] for t in rec.get("tags", []) if t in tag_kinds)
        looks.append(LookRecord(id=str(look_id), path=data_dir / "looks" / rec["image"], boxes=boxes, worn=worn,
                                labels=box_labels))
    return looks


def load_garment_photos(data_dir: Path) -> list[GarmentPhoto]:
    """garments/garments.csv (labels mapped, 'Not sure' dropped) and outfits/products.csv rows with an image."""
    photos: list[GarmentPhoto] = []
    garments = data_dir / "garments" / "garments.csv"
    if garments.is_file():
        with garments.open(newline="") as handle:
            for row in csv.DictReader(handle):
                kind = GARMENT_LABELS.get(row["label"])
                if kind is not None:
                    photos.append(GarmentPhoto(Path(row["image"]).stem, data_dir / "garments" / row["image"],
                                               kind, "garments"))
    products = data_dir / "outfits" / "products.csv"
    if products.is_file():
        with products.open(newline="") as handle:
            for row in csv.DictReader(handle):
                kind = PRODUCT_CATEGORIES.get(row["category"])
                if kind is not None and row.get("image"):
                    photos.append(GarmentPhoto(row["product_id"], data_dir / "outfits" / row["image"], kind, "outfits"))
    return photos


def foreground_box(image: Image.Image) -> BoxXYXY:
    """The garment's extent in a single-garment photo: pixels far from the median border colour.

    Product shots on a plain background give a tight box; a busy background (a phone photo on a bed)
    gives nearly the whole image, which is then the honest answer.
    """
    w, h = image.size
    small = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    border = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
    background = np.median(border, axis=0)
    if np.abs(border - background).sum(axis=1).mean() > 0.25:
        return (0.0, 0.0, float(w), float(h))
    mask = np.abs(small - background).sum(axis=2) > 0.15
    rows, cols = np.where(mask.mean(axis=1) > 0.03)[0], np.where(mask.mean(axis=0) > 0.03)[0]
    if len(rows) < 4 or len(cols) < 4:
        return (0.0, 0.0, float(w), float(h))
    return (cols[0] / 64 * w, rows[0] / 64 * h, (cols[-1] + 1) / 64 * w, (rows[-1] + 1) / 64 * h)


def clip_box(box: BoxXYXY, w: float, h: float) -> BoxXYXY:
    x0, y0, x1, y1 = box
    return (min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h))


def box_area(box: BoxXYXY) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def iou(a: BoxXYXY, b: BoxXYXY) -> float:
    inter = box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def seeded_rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _border_colour(image: Image.Image) -> tuple[int, int, int]:
    a = np.asarray(image.convert("RGB").resize((32, 32)))
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    r, g, b = (int(v) for v in np.median(border, axis=0))
    return (r, g, b)


def photometric(image: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """Light and colour-cast changes of a phone camera."""
    image = ImageEnhance.Brightness(image).enhance(1 + strength * rng.uniform(-0.25, 0.25))
    image = ImageEnhance.Contrast(image).enhance(1 + strength * rng.uniform(-0.2, 0.2))
    image = ImageEnhance.Color(image).enhance(1 + strength * rng.uniform(-0.2, 0.2))
    return image


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _mirror(image: Image.Image, boxes: dict[Kind, BoxXYXY]) -> tuple[Image.Image, dict[Kind, BoxXYXY]]:
    w = image.width
    mirrored = {k: (w - b[2], b[1], w - b[0], b[3]) for k, b in boxes.items()}
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), mirrored


def _crop_keeping(
    image: Image.Image, boxes: dict[Kind, BoxXYXY], region: tuple[int, int, int, int], always: Kind | None = None
) -> tuple[Image.Image, dict[Kind, BoxXYXY]]:
    """The crop and the boxes moved into it: a garment cut by it stays (clipped) while at least half of
    its height remains, and `always` stays whatever is left of it."""
    x0, y0, x1, y1 = region
    kept: dict[Kind, BoxXYXY] = {}
    for kind, box in boxes.items():
        moved = clip_box((box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0), x1 - x0, y1 - y0)
        if kind == always or ((moved[3] - moved[1]) >= 0.5 * (box[3] - box[1]) and box_area(moved) > 0):
            kept[kind] = moved
    return image.crop(region), kept


def detection_view(
    image: Image.Image, boxes: dict[Kind, BoxXYXY], view: int, seed: object
) -> tuple[Image.Image, dict[Kind, BoxXYXY]]:
    """View 0 is the photo itself; others are seeded mirror, half-body crop, zoom-out and shift views.

    A garment cut by the crop stays present (clipped) while at least half of its height remains.
    """
    image = image.convert("RGB")
    if view == 0:
        return image, dict(boxes)
    rng = seeded_rng(seed, view)
    w, h = image.size
    if rng.random() < 0.5:
        image, boxes = _mirror(image, boxes)
    mode = rng.choice(["crop", "half", "zoom_out", "crop"]) if view > 1 else "none"
    if mode == "half":
        # A half-body photo: the top of the frame down to somewhere around the hips or knees.
        cy1 = h * rng.uniform(0.45, 0.8)
        cy0 = h * rng.uniform(0.0, 0.12)
        cx0, cx1 = w * rng.uniform(0.0, 0.12), w * rng.uniform(0.88, 1.0)
        region = (cx0, cy0, cx1, cy1)
    elif mode == "crop":
        cx0, cy0 = w * rng.uniform(0, 0.15), h * rng.uniform(0, 0.15)
        cx1, cy1 = w * rng.uniform(0.85, 1.0), h * rng.uniform(0.85, 1.0)
        region = (cx0, cy0, cx1, cy1)
    else:
        region = (0.0, 0.0, float(w), float(h))
    if mode in ("half", "crop"):
        x0, y0, x1, y1 = (round(v) for v in region)
        image, boxes = _crop_keeping(image, boxes, (x0, y0, x1, y1))
        w, h = image.size
    if mode == "zoom_out":
        scale = rng.uniform(0.5, 0.9)
        cw, ch = round(w / scale), round(h / scale * rng.uniform(0.9, 1.1))
        ox, oy = int(rng.integers(0, max(1, cw - w))), int(rng.integers(0, max(1, ch - h)))
        canvas = Image.new("RGB", (cw, max(ch, h)), _border_colour(image))
        canvas.paste(image, (ox, oy))
        image = canvas
        boxes = {k: (b[0] + ox, b[1] + oy, b[2] + ox, b[3] + oy) for k, b in boxes.items()}
    return photometric(image, rng), boxes


def garment_photo_view(
    image: Image.Image, boxes: dict[Kind, BoxXYXY], focus: Kind, seed: object, *, augment: bool = True,
    tight: float = 0.5,
) -> tuple[Image.Image, dict[Kind, BoxXYXY]]:
    """A shopper's photo of one garment of a look: the `focus` box with a margin of background on
    each side, seeded; with `augment`, maybe mirrored, with other light.

    Each side's margin is `tight` of the time none (a photo cropped to the garment, as a crop cut
    from a look is), else 5-35% of the box. The other garments stay present (clipped) while at
    least half of their height is in the frame, as in detection_view.
    """
    image = image.convert("RGB")
    rng = seeded_rng(seed, "garment", focus)
    w, h = image.size
    x0, y0, x1, y1 = boxes[focus]
    bw, bh = x1 - x0, y1 - y0
    m = [0.0 if rng.random() < tight else rng.uniform(0.05, 0.35) for _ in range(4)]
    region = clip_box((x0 - bw * m[0], y0 - bh * m[1], x1 + bw * m[2], y1 + bh * m[3]), w, h)
    cx0, cy0, cx1, cy1 = (round(v) for v in region)
    out, kept = _crop_keeping(image, boxes, (cx0, cy0, max(cx1, cx0 + 1), max(cy1, cy0 + 1)), always=focus)
    if augment:
        if rng.random() < 0.5:
            out, kept = _mirror(out, kept)
        out = photometric(out, rng)
    return out, kept


def perturbed_crop(image: Image.Image, box: BoxXYXY, seed: object, strength: float = 1.0) -> Image.Image:
    """A shopper's photo of a garment: a looser or tighter crop, other light, a small tilt, JPEG."""
    rng = seeded_rng(seed)
    w, h = image.size
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    jitter = 0.12 * strength

    def edge(v: float, span: float) -> float:
        return v + span * rng.uniform(-jitter, jitter)

    region = clip_box((edge(x0, bw), edge(y0, bh), edge(x1, bw), edge(y1, bh)), w, h)
    if box_area(region) < 16:
        region = box
    out = image.convert("RGB").crop(tuple(round(v) for v in region))  # type: ignore[arg-type]
    out = photometric(out, rng, strength)
    angle = rng.uniform(-8, 8) * strength
    if abs(angle) > 0.5:
        out = out.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=_border_colour(out))
    return jpeg(out, int(rng.integers(45, 85)))


def garment_view(image: Image.Image, box: BoxXYXY | None, view: int, seed: object) -> Image.Image:
    """View 0: the garment box (or the whole photo) as served; views >= 1: perturbed crops of it."""
    image = image.convert("RGB")
    w, h = image.size
    region = box if box is not None else (0.0, 0.0, float(w), float(h))
    if view == 0:
        return image.crop(tuple(round(v) for v in clip_box(region, w, h)))  # type: ignore[arg-type]
    return perturbed_crop(image, region, (seed, view))


def pack_data(src: Path, dst: Path, *, looks_long_side: int = 448, garment_long_side: int = 224,
              quality: int = 80, keep_fraction: float = 1.0) -> None:
    """Writes a smaller copy of a data folder (same layout, resized JPEGs, boxes rescaled), e.g. to
    carry it to a GPU machine for training. Tag-only looks are left out."""
    dst.mkdir(parents=True, exist_ok=True)
    raw = json.loads((src / "looks" / "looks.json").read_text())
    kept = {}
    for look_id, rec in raw["looks"].items():
        if not any(rec.get(k) for k in _LOOK_KEYS):
            continue
        im = Image.open(src / "looks" / rec["image"]).convert("RGB")
        scale = min(1.0, looks_long_side / max(im.size))
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
        out = dst / "looks" / rec["image"]
        out.parent.mkdir(parents=True, exist_ok=True)
        im.save(out, quality=quality)
        rec = dict(rec, width=im.width, height=im.height)
        for key in _LOOK_KEYS:
            if rec.get(key):
                rec[key] = [round(v * scale, 1) for v in rec[key]]
        kept[look_id] = rec
    (dst / "looks" / "looks.json").write_text(json.dumps({"labels": raw.get("labels", {}), "looks": kept}))
    for folder, table in (("garments", "garments.csv"), ("outfits", "products.csv")):
        (dst / folder).mkdir(parents=True, exist_ok=True)
        with (src / folder / table).open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        fields = list(rows[0].keys())
        keep = []
        for row in rows:
            if not row.get("image") or row.get("label") == "Not sure":
                continue
            if folder == "outfits" and row["category"] not in PRODUCT_CATEGORIES:
                continue
            if keep_fraction < 1.0 and seeded_rng("pack", row["image"]).random() > keep_fraction:
                continue
            im = Image.open(src / folder / row["image"]).convert("RGB")
            scale = min(1.0, garment_long_side / max(im.size))
            if scale < 1.0:
                im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
            out = dst / folder / row["image"]
            out.parent.mkdir(parents=True, exist_ok=True)
            im.save(out, quality=quality)
            keep.append(row)
        with (dst / folder / table).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(keep)

