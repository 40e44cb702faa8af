"""What the CLI commands share: settings loading with friendly errors, and gRPC channels to the gateway."""

from __future__ import annotations

import sys
from typing import NoReturn

import click
import grpc

from shared.logs import configure_logging
from shared.settings import Settings, SettingsError, load_settings


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def settings_or_exit(**overrides: object) -> Settings:
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        fail(str(exc))
    configure_logging(settings.log_level)
    return settings


def gateway_channel(settings: Settings, address: str | None) -> grpc.Channel:
    from shared.grpc_runtime import channel_options

    target = address or f"{settings.host}:{settings.gateway_port}"
    options = channel_options(settings)
    if settings.tls_cert:
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(settings.tls_cert.read_bytes()), options)
    return grpc.insecure_channel(target, options)


def api_metadata(settings: Settings, api_key: str | None) -> tuple[tuple[str, str], ...]:
    key = api_key or (settings.api_keys[0] if settings.api_keys else "")
    return (("x-api-key", key),) if key else ()
