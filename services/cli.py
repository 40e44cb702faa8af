"""The `lookbook` command line: serve, library, match, train, eval, bench and editor tools.

Each command group lives in its own module under services/commands and registers itself here.
Heavy imports (torch, qdrant) happen inside the commands, so `--help` stays fast.
"""

from __future__ import annotations

import importlib

import click

from shared.openmp import tune_openmp

tune_openmp()  # before any command imports torch

# Modules that add commands: each defines `register(main: click.Group) -> None`.
COMMAND_MODULES: list[str] = [
    "services.commands.bench_store",
    "services.commands.serve",
    "services.commands.library",
    "services.commands.match",
    "services.commands.match_eval",
    "services.commands.blend_eval",
    "services.commands.bench",
    "services.commands.compat",
    "services.commands.curation",
    "services.commands.quality",
    "services.commands.refresh",
    "services.commands.bench_ingest",
    "services.commands.vision_models",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="lookbook")
def main() -> None:
    """Lookbook: photograph a top (or a bottom), get what curated looks pair it with."""


@main.group()
def library() -> None:
    """Fill and inspect the look library."""


@main.group()
def train() -> None:
    """Train a model head on a data directory laid out like ../shared/data."""


@main.group(name="eval")
def evaluate() -> None:
    """Measure a model or the service on a data directory laid out like ../shared/data."""


@main.group()
def bench() -> None:
    """Benchmarks: speed and memory, run on demand (never in tests)."""


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(main)


if __name__ == "__main__":
    main()
