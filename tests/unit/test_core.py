"""Settings, image validation, API-key access and library sources: the core's pure parts."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from services.gateway.access import TokenBucket
from shared.images import ImageLimits, ImageRejected, decode_image
from shared.library import SourceError, decide_status, read_source
from shared.settings import SettingsError, load_settings
from tests.support import DEMO

pytestmark = pytest.mark.unit


def _encode(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def test_settings_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKBOOK_API_KEYS", "alpha, beta,")
    monkeypatch.setenv("LOOKBOOK_MAX_LIMIT", "20")
    settings = load_settings()
    assert settings.api_keys == ("alpha", "beta")
    assert settings.max_limit == 20
    assert settings.base_url == f"http://{settings.host}:{settings.http_port}"
    with pytest.raises(Exception):  # noqa: B017 - frozen: pydantic raises its own ValidationError
        settings.max_limit = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LOOKBOOK_MAX_IMAGE_BYTES", "-5"),
        ("LOOKBOOK_MIN_QUALITY", "1.5"),
        ("LOOKBOOK_LOG_LEVEL", "CHATTY"),
        ("LOOKBOOK_MODE", "cluster"),
    ],
)
def test_invalid_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert name in str(err.value) and repr(value) in str(err.value)


def test_unknown_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKBOOK_GATWAY_PORT", "1")
    with pytest.raises(SettingsError, match="LOOKBOOK_GATWAY_PORT"):
        load_settings()


def test_tls_needs_both_files() -> None:
    with pytest.raises(SettingsError, match="LOOKBOOK_TLS_KEY"):
        load_settings(tls_cert=Path("/tmp/cert.pem"))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_accepted_formats_decode_to_rgb(fmt: str) -> None:
    image = decode_image(_encode(Image.new("RGBA" if fmt == "PNG" else "RGB", (64, 48), "red"), fmt), ImageLimits())
    assert image.mode == "RGB" and image.size == (64, 48)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = _encode(Image.new("RGB", (80, 40), "blue"), "JPEG", exif=exif)
    assert decode_image(data, ImageLimits()).size == (40, 80)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"GIF89a" + b"\x00" * 64, "not a recognised image"),
        (b"%PDF-1.4 hello", "not a recognised image"),
    ],
)
def test_rejected_bytes(data: bytes, words: str) -> None:
    with pytest.raises(ImageRejected, match=words):
        decode_image(data, ImageLimits())


def test_limits_are_settings() -> None:
    data = _encode(Image.new("RGB", (300, 300)), "PNG")
    with pytest.raises(ImageRejected, match="LOOKBOOK_MAX_IMAGE_BYTES"):
        decode_image(data, ImageLimits(max_bytes=100))
    with pytest.raises(ImageRejected, match="LOOKBOOK_MAX_IMAGE_PIXELS"):
        decode_image(data, ImageLimits(max_pixels=80_000))
    with pytest.raises(ImageRejected, match="smaller than"):
        decode_image(_encode(Image.new("RGB", (10, 300)), "PNG"), ImageLimits())
    gif = _encode(Image.new("RGB", (300, 300)), "GIF")
    with pytest.raises(ImageRejected, match="GIF images are not supported"):
        decode_image(gif, ImageLimits())


def test_truncated_jpeg_is_rejected() -> None:
    data = (DEMO / "images" / "0007.jpg").read_bytes()
    with pytest.raises(ImageRejected, match="corrupt or truncated"):
        decode_image(data[: len(data) * 2 // 3], ImageLimits())


@pytest.mark.parametrize("fmt, keep", [("JPEG", 200), ("WEBP", 20)])
def test_image_cut_inside_its_header_is_rejected(fmt: str, keep: int) -> None:
    # Pillow fails these in Image.open with a bare OSError (not UnidentifiedImageError).
    data = _encode(Image.new("RGB", (200, 300), "red"), fmt)
    with pytest.raises(ImageRejected, match="corrupt or truncated"):
        decode_image(data[:keep], ImageLimits())


def test_token_bucket_limits_and_refills(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("services.gateway.access.time.monotonic", lambda: clock[0])
    bucket = TokenBucket(per_minute=2)
    assert bucket.take("k") == 0 and bucket.take("k") == 0
    assert bucket.take("k") == pytest.approx(30.0)
    assert bucket.take("other") == 0
    clock[0] += 30
    assert bucket.take("k") == 0


def test_read_source_demo_manifest() -> None:
    items = read_source(DEMO / "looks.json")
    assert len(items) == 120
    assert all(i.status == "approved" and i.path.is_file() for i in items)
    assert all({k.kind for k in i.known} == {"top", "bottom"} for i in items)
    assert read_source(DEMO)[0] == items[0]


def test_read_source_csv_and_dir(tmp_path: Path) -> None:
    Image.new("RGB", (64, 64)).save(tmp_path / "a.jpg")
    (tmp_path / "looks.csv").write_text('image,tags,top_box\na.jpg,Denim;Summer,"1,2,30,40"\n')
    (item,) = read_source(tmp_path / "looks.csv")
    assert item.tags == ("denim", "summer") and item.known[0].box == (1.0, 2.0, 30.0, 40.0)
    assert [i.path.name for i in read_source(tmp_path)] == ["a.jpg"]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('[{"tags": []}]', "no 'image'"),
        ('{"what": 1}', "expected a list"),
        ("not json", "cannot be read"),
        ('[{"image": "a.jpg", "status": "maybe"}]', "unknown status"),
    ],
)
def test_bad_manifest(tmp_path: Path, content: str, words: str) -> None:
    (tmp_path / "m.json").write_text(content)
    with pytest.raises(SourceError, match=words):
        read_source(tmp_path / "m.json")
    with pytest.raises(SourceError, match="does not exist"):
        read_source(tmp_path / "missing")


def test_auto_approve_policy() -> None:
    from shared.library import LookItem

    item = LookItem(path=Path("x.jpg"))
    assert decide_status(item, 0.95, 0.9) == "approved"
    assert decide_status(item, 0.5, 0.9) == "pending"
    assert decide_status(item, None, 0.9) == "pending"
    assert decide_status(item, 0.99, 1.0) == "pending"
    assert decide_status(LookItem(path=Path("x.jpg"), status="approved"), 0.1, 0.9) == "approved"
