"""`lookbook eval match`: does a garment cut from a library look find its own look's pair at rank 1?

It imports the looks of DIR (a looks.json in the ../shared/data or demo layout, with top and
bottom boxes) into a fresh store, starts the real all-in-one services on free ports, and sends
each look's top (and bottom) crop through the public MatchOutfit API.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click

from services.commands.common import fail, settings_or_exit


@click.command(name="match")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, path_type=Path),
    required=True,
    help="A looks.json, or a directory holding one (e.g. demo/ or ../shared/data/looks).",
)
@click.option("--limit", type=int, default=0, help="Evaluate only the first N looks with both boxes (0: all).")
@click.option(
    "--path",
    "ranking_path",
    type=click.Choice(["look-alike", "blend", "compatibility"]),
    default="look-alike",
    show_default=True,
    help="Ranking path asked for (blend is what the app gets by default).",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the figures as JSON here.",
)
def match_eval(data_dir: Path, limit: int, ranking_path: str, json_out: Path | None) -> None:
    """Self-retrieval: each look's top crop should return that look's bottom at rank 1 (and vice versa)."""
    from tqdm import tqdm

    from shared.library import SourceError, read_source

    try:
        items = [i for i in read_source(data_dir) if {k.kind for k in i.known} >= {"top", "bottom"}]
    except SourceError as exc:
        fail(str(exc))
    if limit:
        items = items[:limit]
    if not items:
        fail(f"{data_dir} has no looks with both a top and a bottom box")
    with tempfile.TemporaryDirectory(prefix="lookbook-eval-") as tmp:
        settings = settings_or_exit(data_dir=Path(tmp), auto_approve_quality=0.0, min_quality=0.0)
        figures = _run(settings, items, tqdm, ranking_path)
    click.echo(f"looks evaluated      {figures['looks']}   path {figures['path']}")
    click.echo(f"{'query':<22}{'rank-1 own pair':>16}{'in top 10':>12}")
    for name in ("top_auto", "top_given", "bottom_auto", "bottom_given"):
        f = figures[name]
        click.echo(f"{name:<22}{f['rank1']:>16.3f}{f['top10']:>12.3f}")
    click.echo(f"model version        {figures['model_version']}")
    if json_out:
        json_out.write_text(json.dumps(figures, indent=2))


def _run(settings, items, tqdm, ranking_path: str = "look-alike"):  # type: ignore[no-untyped-def]
    import asyncio
    from dataclasses import replace

    import grpc
    from lookbook.outfit.v1 import outfit_pb2, outfit_pb2_grpc

    from services.runtime import local_vision, start
    from shared.images import crop_jpeg
    from shared.library import import_looks
    from shared.store import look_id_for

    path = outfit_pb2.RankingPath.Value("RANKING_PATH_" + ranking_path.upper().replace("-", "_"))

    async def main() -> dict:
        running = await start(settings, "gateway", import_demo=False, random_ports=True)
        store = running.store
        assert store is not None
        try:
            vision = local_vision(settings)
            approved = [replace(i, status="approved") for i in items]
            with tqdm(approved, desc="importing looks", unit="look", file=sys.stderr) as bar:
                await asyncio.to_thread(
                    import_looks,
                    approved,
                    analyzer=vision,
                    store=store,
                    images_dir=settings.images_dir,
                    auto_approve_quality=0.0,
                    max_image_bytes=settings.max_image_bytes,
                    progress=lambda _: bar.update(),
                )
            hits = {name: [0, 0] for name in ("top_auto", "top_given", "bottom_auto", "bottom_given")}
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.ports['gateway']}") as channel:
                stub = outfit_pb2_grpc.OutfitServiceStub(channel)
                for item in tqdm(items, desc="querying", unit="look", file=sys.stderr):
                    own = look_id_for(item.path.read_bytes())
                    for known in item.known:
                        data = crop_jpeg(item.path, known.box)
                        for mode, kind in (("auto", "AUTO"), ("given", known.kind.upper())):
                            reply = await stub.MatchOutfit(
                                outfit_pb2.MatchOutfitRequest(
                                    image=data,
                                    kind=outfit_pb2.QueryKind.Value(f"QUERY_KIND_{kind}"),
                                    limit=10,
                                    path=path,
                                ),
                                timeout=60,
                            )
                            ids = [m.look_id for m in reply.matches]
                            tally = hits[f"{known.kind}_{mode}"]
                            tally[0] += bool(ids) and ids[0] == own
                            tally[1] += own in ids
            n = len(items)
            return {
                "looks": n,
                "path": ranking_path,
                "model_version": store.live_version(),
                **{k: {"rank1": v[0] / n, "top10": v[1] / n} for k, v in hits.items()},
            }
        finally:
            await running.stop(grace=0)

    return asyncio.run(main())


def register(main: click.Group) -> None:
    group = main.commands["eval"]
    assert isinstance(group, click.Group)
    group.add_command(match_eval)
