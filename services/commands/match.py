"""`lookbook match PHOTO`: ask the running gateway what the library pairs a top (or bottom) with."""

from __future__ import annotations

import io
import urllib.request
from pathlib import Path

import click
import grpc

from services.commands.common import api_metadata, fail, gateway_channel, settings_or_exit

KINDS = ("auto", "top", "bottom")
PATHS = ("blend", "look-alike", "compatibility")


def contact_sheet(query: bytes, response: object, out: Path, *, thumb_height: int = 320) -> None:
    """Writes the query beside its matches, each look with the paired garment boxed."""
    from PIL import Image, ImageDraw, ImageOps

    def fit(image: Image.Image) -> Image.Image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        scale = thumb_height / image.height
        return image.resize((max(1, round(image.width * scale)), thumb_height))

    tiles = [fit(Image.open(io.BytesIO(query)))]
    labels = ["query"]
    for rank, match in enumerate(response.matches, start=1):  # type: ignore[attr-defined]
        with urllib.request.urlopen(match.image_uri, timeout=10) as reply:
            look = ImageOps.exif_transpose(Image.open(io.BytesIO(reply.read()))).convert("RGB")
        box = match.garment_box
        ImageDraw.Draw(look).rectangle((box.x0, box.y0, box.x1, box.y1), outline=(255, 0, 90), width=5)
        tiles.append(fit(look))
        labels.append(f"#{rank} {match.score:.2f}")
    width = sum(t.width for t in tiles) + 8 * (len(tiles) + 1)
    sheet = Image.new("RGB", (width, thumb_height + 36), "white")
    draw = ImageDraw.Draw(sheet)
    x = 8
    for tile, label in zip(tiles, labels, strict=True):
        sheet.paste(tile, (x, 28))
        draw.text((x, 8), label, fill=(0, 0, 0))
        x += tile.width + 8
    sheet.save(out)


@click.command()
@click.argument("photo", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default="auto",
    show_default=True,
    help="The garment to match; auto lets the vision service decide.",
)
@click.option(
    "--path",
    "ranking",
    type=click.Choice(PATHS),
    default="blend",
    show_default=True,
    help="Ranking path.",
)
@click.option("--limit", type=int, default=0, help="Matches to return (0: the server's default).")
@click.option("--tag", "tags", multiple=True, help="Only looks with this tag (repeatable).")
@click.option("--gateway", default=None, help="host:port of the gateway [default: LOOKBOOK_HOST:GATEWAY_PORT].")
@click.option("--api-key", default=None, help="API key, when the gateway requires one.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Deadline in seconds.")
@click.option(
    "--sheet",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a contact sheet PNG of the query and its matches.",
)
def match(
    photo: Path,
    kind: str,
    ranking: str,
    limit: int,
    tags: tuple[str, ...],
    gateway: str | None,
    api_key: str | None,
    timeout: float,
    sheet: Path | None,
) -> None:
    """Send PHOTO of a top (or a bottom) to the gateway and print the paired garments it returns."""
    settings = settings_or_exit()
    from lookbook.common.v1 import garment_pb2
    from lookbook.outfit.v1 import outfit_pb2, outfit_pb2_grpc

    data = photo.read_bytes()
    request = outfit_pb2.MatchOutfitRequest(
        image=data,
        kind=outfit_pb2.QueryKind.Value(f"QUERY_KIND_{kind.upper()}"),
        limit=limit,
        tags=list(tags),
        path=outfit_pb2.RankingPath.Value(f"RANKING_PATH_{ranking.upper().replace('-', '_')}"),
    )
    with gateway_channel(settings, gateway) as channel:
        try:
            response = outfit_pb2_grpc.OutfitServiceStub(channel).MatchOutfit(
                request, timeout=timeout, metadata=api_metadata(settings, api_key)
            )
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            hint = (
                " (is `lookbook serve` running? start it with `make run`)"
                if code == grpc.StatusCode.UNAVAILABLE
                else ""
            )
            fail(f"{code.name}: {exc.details()}{hint}")  # type: ignore[attr-defined]
    name = garment_pb2.GarmentKind.Name
    q = response.query
    click.echo(
        f"query: {name(q.kind).removeprefix('GARMENT_KIND_').lower()} "
        f"(confidence {q.confidence:.2f}), box ({q.box.x0:.0f}, {q.box.y0:.0f}, {q.box.x1:.0f}, {q.box.y1:.0f})"
        f"  model {response.model_version}"
    )
    if not response.matches:
        click.echo("no matches: the library has no approved look with that garment (try without --tag)")
    click.echo(f"{'#':>3}  {'score':>6}  {'alike':>6}  {'compat':>6}  {'pair':<7} {'look':<36}  tags")
    for rank, m in enumerate(response.matches, start=1):
        click.echo(
            f"{rank:>3}  {m.score:6.3f}  {m.path_scores.look_alike:6.3f}  {m.path_scores.compatibility:6.3f}  "
            f"{name(m.garment_kind).removeprefix('GARMENT_KIND_').lower():<7} {m.look_id:<36}  "
            f"{', '.join(m.tags)}"
        )
        click.echo(f"{'':>3}  {m.crop_uri}")
    if sheet:
        contact_sheet(data, response, sheet)
        click.echo(f"contact sheet written to {sheet}")


def register(main: click.Group) -> None:
    main.add_command(match)
