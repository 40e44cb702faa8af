"""Progress of library refresh jobs (total, done, failed, quarantined) and the quarantine list of bad images.

Two boards with one interface: Redis (scale-out: every worker and the CLI see the same job) and
memory (the embedded default: the refresh runs in the serving process). Counts are sets of source
paths, not counters, so a redelivered or retried task never counts a look twice.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

JOB_TTL_S = 7 * 24 * 3600
PREFIX = "lookbook"


@dataclass(frozen=True)
class JobProgress:
    """One refresh job as seen by the CLI, the console and the tests."""

    job_id: str
    source: str = ""
    state: str = "queued"  # queued, running, succeeded, failed
    total: int = 0  # looks of the source not in the library when the job was planned
    done: int = 0
    failed: int = 0  # transient faults that outlived every retry
    quarantined: int = 0
    skipped: int = 0  # already in the library
    retries: int = 0
    error: str = ""
    requested_by: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed")

    @property
    def handled(self) -> int:
        return self.done + self.failed + self.quarantined

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "finished": self.finished}


@dataclass(frozen=True)
class QuarantinedImage:
    """A poison image kept out of the library, with the reason and the job that found it."""

    path: str
    reason: str
    job_id: str = ""
    look_id: str = ""
    at: float = field(default_factory=time.time)


def derive_state(raw_state: str, planned: bool, total: int, handled: int) -> str:
    if raw_state == "failed":
        return "failed"
    if planned and handled >= total:
        return "succeeded"
    return raw_state or "queued"


class JobBoard(Protocol):
    def create(self, source: str, *, requested_by: str = "", job_id: str | None = None) -> str: ...
    def start(self, job_id: str) -> None: ...
    def plan(self, job_id: str, paths: list[str], *, skipped: int) -> None: ...
    def mark(self, job_id: str, path: str, outcome: str) -> None: ...
    def outcome_of(self, job_id: str, path: str) -> str | None: ...
    def retried(self, job_id: str) -> None: ...
    def fail(self, job_id: str, error: str) -> None: ...
    def progress(self, job_id: str) -> JobProgress | None: ...
    def recent(self, limit: int = 20) -> list[JobProgress]: ...
    def quarantine(self, item: QuarantinedImage) -> None: ...
    def quarantined(self) -> list[QuarantinedImage]: ...


OUTCOMES = ("done", "failed", "quarantined")


class RedisJobBoard:
    """Jobs in Redis: a hash per job plus one set per outcome; the quarantine list is one hash."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    @classmethod
    def from_url(cls, url: str) -> RedisJobBoard:
        import redis

        return cls(redis.Redis.from_url(url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5))

    def _key(self, job_id: str, part: str = "") -> str:
        return f"{PREFIX}:job:{job_id}" + (f":{part}" if part else "")

    def _touch(self, pipe: Any, job_id: str) -> None:
        pipe.hset(self._key(job_id), "updated_at", time.time())
        for part in ("", "planned", *OUTCOMES):
            pipe.expire(self._key(job_id, part), JOB_TTL_S)

    def create(self, source: str, *, requested_by: str = "", job_id: str | None = None) -> str:
        job_id = job_id or uuid.uuid4().hex
        now = time.time()
        pipe = self.redis.pipeline()
        pipe.hsetnx(self._key(job_id), "source", source)
        pipe.hsetnx(self._key(job_id), "state", "queued")
        pipe.hsetnx(self._key(job_id), "requested_by", requested_by)
        pipe.hsetnx(self._key(job_id), "created_at", now)
        pipe.zadd(f"{PREFIX}:jobs", {job_id: now}, nx=True)
        self._touch(pipe, job_id)
        pipe.execute()
        return job_id

    def start(self, job_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.hset(self._key(job_id), "state", "running")
        self._touch(pipe, job_id)
        pipe.execute()

    def plan(self, job_id: str, paths: list[str], *, skipped: int) -> None:
        pipe = self.redis.pipeline()
        if paths:
            pipe.sadd(self._key(job_id, "planned"), *paths)
        # A redelivered refresh sees fewer new looks (some were ingested meanwhile): keep the first count.
        pipe.hsetnx(self._key(job_id), "skipped", skipped)
        pipe.hset(self._key(job_id), "planned", 1)
        self._touch(pipe, job_id)
        pipe.execute()

    def mark(self, job_id: str, path: str, outcome: str) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        pipe = self.redis.pipeline()
        # An outcome replaces an earlier one (a look that failed, then succeeded on redelivery).
        for other in OUTCOMES:
            if other != outcome:
                pipe.srem(self._key(job_id, other), path)
        pipe.sadd(self._key(job_id, outcome), path)
        self._touch(pipe, job_id)
        pipe.execute()

    def outcome_of(self, job_id: str, path: str) -> str | None:
        pipe = self.redis.pipeline()
        for outcome in OUTCOMES:
            pipe.sismember(self._key(job_id, outcome), path)
        return next((o for o, hit in zip(OUTCOMES, pipe.execute(), strict=True) if hit), None)

    def retried(self, job_id: str) -> None:
        self.redis.hincrby(self._key(job_id), "retries", 1)

    def fail(self, job_id: str, error: str) -> None:
        self.redis.hset(self._key(job_id), mapping={"state": "failed", "error": error, "updated_at": time.time()})

    def progress(self, job_id: str) -> JobProgress | None:
        pipe = self.redis.pipeline()
        pipe.hgetall(self._key(job_id))
        for part in ("planned", *OUTCOMES):
            pipe.scard(self._key(job_id, part))
        raw, total, done, failed, quarantined = pipe.execute()
        if not raw:
            return None
        handled = done + failed + quarantined
        return JobProgress(
            job_id=job_id,
            source=raw.get("source", ""),
            state=derive_state(raw.get("state", ""), raw.get("planned") == "1", total, handled),
            total=total,
            done=done,
            failed=failed,
            quarantined=quarantined,
            skipped=int(raw.get("skipped", 0)),
            retries=int(raw.get("retries", 0)),
            error=raw.get("error", ""),
            requested_by=raw.get("requested_by", ""),
            created_at=float(raw.get("created_at", 0)),
            updated_at=float(raw.get("updated_at", 0)),
        )

    def recent(self, limit: int = 20) -> list[JobProgress]:
        ids = self.redis.zrevrange(f"{PREFIX}:jobs", 0, max(0, limit - 1))
        return [p for p in (self.progress(i) for i in ids) if p is not None]

    def quarantine(self, item: QuarantinedImage) -> None:
        pipe = self.redis.pipeline()
        pipe.hset(f"{PREFIX}:quarantine", item.path, json.dumps(asdict(item)))
        if item.job_id:
            pipe.sadd(self._key(item.job_id, "reasons"), json.dumps([item.path, item.reason]))
            pipe.expire(self._key(item.job_id, "reasons"), JOB_TTL_S)
        pipe.execute()

    def quarantined(self) -> list[QuarantinedImage]:
        raw = self.redis.hgetall(f"{PREFIX}:quarantine")
        return sorted((QuarantinedImage(**json.loads(v)) for v in raw.values()), key=lambda q: q.path)


class MemoryJobBoard:
    """Jobs of the embedded mode, in this process; the quarantine list persists to a JSON file."""

    def __init__(self, quarantine_file: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._quarantine_file = quarantine_file
        self._quarantine: dict[str, QuarantinedImage] = {}
        if quarantine_file is not None and quarantine_file.is_file():
            for rec in json.loads(quarantine_file.read_text()):
                self._quarantine[rec["path"]] = QuarantinedImage(**rec)

    def create(self, source: str, *, requested_by: str = "", job_id: str | None = None) -> str:
        job_id = job_id or uuid.uuid4().hex
        with self._lock:
            self._jobs.setdefault(
                job_id,
                {
                    "source": source,
                    "state": "queued",
                    "requested_by": requested_by,
                    "created_at": time.time(),
                    "updated_at": time.time(),
                    "planned": False,
                    "skipped": 0,
                    "retries": 0,
                    "error": "",
                    "sets": {k: set() for k in ("planned", *OUTCOMES)},
                },
            )
        return job_id

    def _job(self, job_id: str) -> dict[str, Any]:
        job = self._jobs[job_id]
        job["updated_at"] = time.time()
        return job

    def start(self, job_id: str) -> None:
        with self._lock:
            self._job(job_id)["state"] = "running"

    def plan(self, job_id: str, paths: list[str], *, skipped: int) -> None:
        with self._lock:
            job = self._job(job_id)
            job["sets"]["planned"].update(paths)
            if not job["planned"]:
                job["skipped"] = skipped
            job["planned"] = True

    def mark(self, job_id: str, path: str, outcome: str) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        with self._lock:
            sets = self._job(job_id)["sets"]
            for other in OUTCOMES:
                sets[other].discard(path)
            sets[outcome].add(path)

    def outcome_of(self, job_id: str, path: str) -> str | None:
        with self._lock:
            sets = self._jobs[job_id]["sets"] if job_id in self._jobs else {}
            return next((o for o in OUTCOMES if path in sets.get(o, ())), None)

    def retried(self, job_id: str) -> None:
        with self._lock:
            self._job(job_id)["retries"] += 1

    def fail(self, job_id: str, error: str) -> None:
        with self._lock:
            job = self._job(job_id)
            job["state"], job["error"] = "failed", error

    def progress(self, job_id: str) -> JobProgress | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            sets = job["sets"]
            total = len(sets["planned"])
            handled = sum(len(sets[k]) for k in OUTCOMES)
            return JobProgress(
                job_id=job_id,
                source=job["source"],
                state=derive_state(job["state"], job["planned"], total, handled),
                total=total,
                done=len(sets["done"]),
                failed=len(sets["failed"]),
                quarantined=len(sets["quarantined"]),
                skipped=job["skipped"],
                retries=job["retries"],
                error=job["error"],
                requested_by=job["requested_by"],
                created_at=job["created_at"],
                updated_at=job["updated_at"],
            )

    def recent(self, limit: int = 20) -> list[JobProgress]:
        with self._lock:
            ids = sorted(self._jobs, key=lambda i: -self._jobs[i]["created_at"])[:limit]
        return [p for p in (self.progress(i) for i in ids) if p is not None]

    def quarantine(self, item: QuarantinedImage) -> None:
        with self._lock:
            self._quarantine[item.path] = item
            if self._quarantine_file is not None:
                self._quarantine_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = self._quarantine_file.with_suffix(".tmp")
                tmp.write_text(json.dumps([asdict(q) for q in self._quarantine.values()], indent=1))
                tmp.replace(self._quarantine_file)

    def quarantined(self) -> list[QuarantinedImage]:
        with self._lock:
            return sorted(self._quarantine.values(), key=lambda q: q.path)
