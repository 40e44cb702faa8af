"""API keys and per-key rate limits for the public OutfitService.

Keys arrive in `x-api-key` metadata; once LOOKBOOK_API_KEYS is set, a call without a known key is
refused, and each key gets LOOKBOOK_RATE_LIMIT_PER_MINUTE calls per minute (a token bucket).
Health checks and reflection stay open, so probes and tooling work without a key.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Awaitable, Callable

import grpc

OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


class TokenBucket:
    def __init__(self, per_minute: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self._tokens: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Takes one token; returns 0 if granted, else the seconds until one is available."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._tokens.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._tokens[key] = (tokens - 1.0, now)
                return 0.0
            self._tokens[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


def _deny(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def handler(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(handler)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: tuple[str, ...], per_minute: int) -> None:
        self.keys = keys
        self.bucket = TokenBucket(per_minute)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if not self.keys or handler_call_details.method.startswith(OPEN_PREFIXES):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = str(metadata.get("x-api-key", ""))
        if not given or not any(hmac.compare_digest(given, key) for key in self.keys):
            return _deny(
                grpc.StatusCode.UNAUTHENTICATED,
                "a valid API key is required: send it in the `x-api-key` metadata",
            )
        wait = self.bucket.take(given)
        if wait > 0:
            return _deny(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit reached for this API key: retry in {wait:.1f} s",
            )
        return await continuation(handler_call_details)
