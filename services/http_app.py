"""The HTTP side of the embedded default: look images and garment crops the app fetches, and a health URL.

The editor console is mounted beside these routes when the curation service is part of the process.
"""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

from PIL import Image, ImageOps
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from shared.models.pipeline import crop
from shared.settings import Settings
from shared.store import InvalidLookError, LookStore

IMAGE_NAME = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.(jpg|png|webp)$")
CACHE_SECONDS = 86400


def build_http_app(settings: Settings, store: LookStore, extra_routes: list[BaseRoute] | None = None) -> Starlette:
    images_dir: Path = settings.images_dir
    crops_dir = settings.data_dir / "crops"

    async def image(request: Request) -> Response:
        name = request.path_params["name"]
        path = images_dir / name
        if not IMAGE_NAME.match(name) or not path.is_file():
            return JSONResponse({"error": f"no image {name}: use an image_uri from MatchOutfit"}, status_code=404)
        return FileResponse(path, headers={"Cache-Control": f"public, max-age={CACHE_SECONDS}, immutable"})

    def _crop_bytes(look_id: str, kind: str) -> bytes | None:
        look = store.get(look_id)
        box = getattr(look, f"{kind}_box", None) if look else None
        if look is None or box is None or look.status not in ("approved", "featured"):
            return None
        cached = crops_dir / f"{look.look_id}-{kind}-{look.version}.jpg"
        if cached.is_file():
            return cached.read_bytes()
        with Image.open(images_dir / look.image_path) as source:
            piece = crop(ImageOps.exif_transpose(source).convert("RGB"), box)
        buffer = io.BytesIO()
        piece.save(buffer, format="JPEG", quality=90)
        crops_dir.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(cached)
        return buffer.getvalue()

    async def garment_crop(request: Request) -> Response:
        look_id, kind = request.path_params["look_id"], request.path_params["kind"]
        if kind not in ("top", "bottom"):
            return JSONResponse({"error": "the crop kind is top or bottom"}, status_code=404)
        try:
            data = await asyncio.to_thread(_crop_bytes, look_id, kind)
        except InvalidLookError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        if data is None:
            return JSONResponse(
                {"error": f"look {look_id} has no {kind} to show: use a crop_uri from MatchOutfit"},
                status_code=404,
            )
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": f"public, max-age={CACHE_SECONDS}"})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model_version": store.live_version()})

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/images/{name}", image),
        Route("/crops/{look_id}/{kind}.jpg", garment_crop),
        *(extra_routes or []),
    ]
    return Starlette(routes=routes)
