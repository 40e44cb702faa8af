"""`lookbook serve`: the all-in-one process (embedded default) or one named service."""

from __future__ import annotations

import asyncio

import click

from services.commands.common import fail, settings_or_exit
from services.runtime import SERVICES


@click.command()
@click.option(
    "--service",
    type=click.Choice(SERVICES),
    default="all",
    show_default=True,
    help="Run every service in one process, or only this one.",
)
def serve(service: str) -> None:
    """Serve Lookbook over gRPC (and HTTP for images and the console) until SIGTERM or Ctrl-C.

    The first start imports the bundled demo library into an empty store.
    """
    settings = settings_or_exit()
    from services.runtime import serve_forever
    from shared.models.backbone import WeightsError
    from shared.store import StoreError

    try:
        asyncio.run(serve_forever(settings, service))
    except (WeightsError, StoreError, OSError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass


def register(main: click.Group) -> None:
    main.add_command(serve)
