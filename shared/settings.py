"""Typed Lookbook settings, read once from `LOOKBOOK_*` environment variables into a frozen object.

A bad or unknown variable fails at start with a message that names it and says what to set instead.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PREFIX = "LOOKBOOK_"
REPO_ROOT = Path(__file__).resolve().parents[1]


class Mode(StrEnum):
    """How the library tasks run: in the serving process, or on Celery workers over Redis."""

    EMBEDDED = "embedded"
    SCALE_OUT = "scale-out"


class SettingsError(ValueError):
    """A setting is missing, malformed or inconsistent; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="forbid", case_sensitive=False)

    # --- where things live
    data_dir: Path = Field(REPO_ROOT / "var", description="Library store, look images, jobs, editors.")
    models_dir: Path = Field(
        REPO_ROOT / "shared" / "models" / "artifacts", description="Trained heads with their manifests."
    )
    demo_dir: Path = Field(REPO_ROOT / "demo", description="The bundled demo library (looks.json + images).")
    mode: Mode = Field(Mode.EMBEDDED, description="embedded: one process; scale-out: Celery on Redis.")

    # --- network
    host: str = Field("127.0.0.1", description="Interface every server binds.")
    gateway_port: int = Field(50051, ge=0, le=65535, description="Public OutfitService gRPC port.")
    vision_port: int = Field(50052, ge=0, le=65535, description="Internal VisionService gRPC port.")
    curation_port: int = Field(50053, ge=0, le=65535, description="CurationService gRPC port.")
    http_port: int = Field(8080, ge=0, le=65535, description="Look images, crops and the editor console.")
    public_url: str = Field("", description="Base URL the app fetches images from; default http://HOST:HTTP_PORT.")
    vision_addr: str = Field("", description="host:port of a remote vision service; empty runs it in-process.")
    grpc_max_message_bytes: int = Field(32 * 2**20, ge=2**20, description="Hard gRPC transport limit.")
    grpc_workers: int = Field(8, ge=1, le=256, description="Concurrent RPCs handled per server.")
    shutdown_grace_s: float = Field(10.0, ge=0, le=300, description="SIGTERM drain time for in-flight RPCs.")
    vision_timeout_s: float = Field(10.0, gt=0, le=300, description="Deadline of a gateway->vision call.")
    tls_cert: Path | None = Field(None, description="PEM certificate; with TLS_KEY, gRPC runs over TLS.")
    tls_key: Path | None = Field(None, description="PEM private key of LOOKBOOK_TLS_CERT.")
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Comma-separated keys accepted in `x-api-key` metadata; empty disables the check."
    )
    rate_limit_per_minute: int = Field(600, ge=1, description="Requests per minute per API key.")

    # --- images
    max_image_bytes: int = Field(10 * 2**20, ge=1024, description="Largest accepted image file.")
    max_image_pixels: int = Field(40_000_000, ge=10_000, description="Largest accepted width x height.")
    min_image_side: int = Field(32, ge=1, description="Smallest accepted width or height in pixels.")

    # --- matching
    default_limit: int = Field(10, ge=1, le=1000, description="Matches returned when a request asks for 0.")
    max_limit: int = Field(50, ge=1, le=1000, description="Most matches one request may ask for.")
    min_quality: float = Field(0.0, ge=0.0, le=1.0, description="Looks below this quality are never matched.")
    candidate_pool: int = Field(100, ge=1, le=10_000, description="Candidates per path before fusion/diversity.")
    featured_boost: float = Field(0.05, ge=0.0, le=1.0, description="Added to the blended score of featured looks.")
    fusion: str = Field(
        "weighted",
        pattern="^(weighted|rrf)$",
        description="How BLEND fuses the two paths: weighted (normalised scores) or rrf (Qdrant prefetch + RRF).",
    )
    # Both chosen by `lookbook eval blend` (README, Measured figures).
    compat_weight: float = Field(0.3, ge=0.0, le=1.0, description="Weight of the compatibility path in BLEND.")
    diversity: float = Field(
        0.3, ge=0.0, le=1.0, description="MMR diversity of the returned garments; 0 keeps the plain ranking."
    )
    detect_min_confidence: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="A look photo keeps each detected garment (top, bottom, full body) at or above this presence.",
    )
    detect_hint_confidence: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="A TOP or BOTTOM query uses that garment's detected box down to this presence, "
        "else its most present garment.",
    )

    # --- vector store
    qdrant_url: str = Field("", description="Qdrant server URL; empty uses the embedded Qdrant Edge shard.")
    qdrant_api_key: str = Field("", description="API key of the Qdrant server.")
    qdrant_timeout_s: float = Field(10.0, gt=0, description="Timeout of one Qdrant server call.")
    collection: str = Field("looks", description="Alias the versioned look collections are reached through.")
    shard_number: int = Field(1, ge=1, le=1024, description="Shards of a new collection on a Qdrant cluster.")
    replication_factor: int = Field(1, ge=1, le=16, description="Copies of each shard on a Qdrant cluster.")
    write_consistency_factor: int = Field(
        1, ge=1, le=16, description="Replicas that must confirm a write on a Qdrant cluster."
    )
    read_consistency: str = Field("1", description="Qdrant read consistency: a number, 'majority', 'quorum' or 'all'.")
    hnsw_m: int = Field(16, ge=4, le=128, description="HNSW graph degree of the look vectors.")
    hnsw_ef_construct: int = Field(128, ge=8, le=2048, description="HNSW build-time beam width.")
    # 64 by `lookbook bench store --n 1000000 --sweep-ef 64`: recall@10 0.9998 filtered (deploy/README.md).
    hnsw_ef: int = Field(64, ge=8, le=4096, description="Search-time HNSW beam width.")

    # --- queues
    redis_url: str = Field("", description="Celery broker and result backend; required in scale-out mode.")
    refresh_sources: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Comma-separated directories or manifests the beat schedule refreshes."
    )
    refresh_interval_s: float = Field(
        3600.0, ge=10, description="Seconds between scheduled refreshes of LOOKBOOK_REFRESH_SOURCES."
    )
    auto_approve_quality: float = Field(
        0.9, ge=0.0, le=1.0, description="Imports scoring at least this are approved; 1.0 keeps all pending."
    )
    worker_concurrency: int = Field(1, ge=1, le=64, description="Worker processes per `python -m services.workers`.")
    task_time_limit_s: float = Field(900.0, ge=10, le=86400, description="Hard time limit of one library task.")
    visibility_timeout_s: float = Field(
        3600.0,
        ge=20,
        le=7 * 86400,
        description="Redis redelivers an unacknowledged task after this; must exceed LOOKBOOK_TASK_TIME_LIMIT_S.",
    )
    worker_max_memory_per_child_kb: int = Field(
        3_000_000,
        ge=100_000,
        description="A worker process is replaced after a task leaves it above this RSS.",
    )
    ingest_chunk_size: int = Field(
        16,
        ge=1,
        le=1000,
        description="Most looks per ingestion task of a refresh; chunks shrink towards its end. Larger: fewer "
        "tasks and store writes; smaller: finer progress, less work redone after a crash.",
    )
    task_max_retries: int = Field(6, ge=0, le=100, description="Retries of a task after a transient fault.")
    retry_backoff_max_s: float = Field(60.0, ge=1, le=3600, description="Longest wait between retries.")

    # --- editors (curation)
    editor_session_ttl_s: float = Field(
        8 * 3600.0,
        ge=60,
        le=30 * 86400,
        description="Lifetime of an editor's console session or Login token.",
    )
    editor_token_ttl_s: float = Field(
        30 * 86400.0,
        ge=60,
        le=365 * 86400,
        description="Lifetime of a token made by `lookbook editors token`.",
    )

    # --- process
    torch_threads: int = Field(0, ge=0, le=256, description="Threads per model; 0 uses every core.")
    log_level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$", description="DEBUG, INFO, WARNING or ERROR.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics port of this process; 0 disables.")
    otel_endpoint: str = Field(
        "",
        description="OTLP gRPC endpoint for traces (needs the opentelemetry packages); empty disables tracing.",
    )

    @field_validator("api_keys", "refresh_sources", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    @field_validator("qdrant_url", "vision_addr", "redis_url", "public_url")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.default_limit > self.max_limit:
            raise ValueError("LOOKBOOK_DEFAULT_LIMIT must not exceed LOOKBOOK_MAX_LIMIT")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both LOOKBOOK_TLS_CERT and LOOKBOOK_TLS_KEY, or neither")
        if self.mode is Mode.SCALE_OUT and not self.redis_url:
            raise ValueError(
                "LOOKBOOK_REDIS_URL is required when LOOKBOOK_MODE=scale-out "
                "(or set LOOKBOOK_MODE=embedded to run library tasks in-process)"
            )
        if self.visibility_timeout_s <= self.task_time_limit_s:
            raise ValueError(
                "LOOKBOOK_VISIBILITY_TIMEOUT_S must exceed LOOKBOOK_TASK_TIME_LIMIT_S, or Redis redelivers "
                "tasks that are still running"
            )
        return self

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.http_port}").rstrip("/")

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        name = PREFIX + loc[0].upper() if loc else "a LOOKBOOK_* variable"
        value = os.environ.get(name)
        shown = f" (got {value!r})" if value is not None else ""
        if not loc:
            lines.append(f"invalid settings: {item['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{name}{shown}: {item['msg']}; fix or unset it (see the README's configuration table)")
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Reads the environment once; raises SettingsError naming the first bad variable."""
    known = {PREFIX + name.upper() for name in Settings.model_fields}
    unknown = sorted(k for k in os.environ if k.upper().startswith(PREFIX) and k.upper() not in known)
    if unknown:
        raise SettingsError(
            f"unknown setting {', '.join(unknown)}: check the spelling against the README's configuration table"
        )
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
