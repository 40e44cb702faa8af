"""Library refresh as plain functions: plan a refresh of a source, ingest chunks of looks, re-embed.

They wrap the lead's per-look functions in shared/library.py (read_source, ingest_look,
reembed_library) with what workers need: job progress, a quarantine for poison images, the
transient/permanent split of faults, and store access that works with several processes. Celery
tasks (tasks.py) and the embedded runner (embedded.py) both call these.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.workers.jobs import JobBoard, QuarantinedImage
from shared.settings import Settings

log = logging.getLogger(__name__)

# A process that spools a write or asks for the store wakes the lease holder through a FIFO beside
# the lock (store-wake.fifo), so the holder's watcher sleeps until there is work. This is how often
# it looks anyway, in case a wake-up was lost (the FIFO could not be made, or was full). It used to
# poll every 20 ms, waking 50 times a second beside a busy Analyze, and a handed-over write
# waited for the next poll.
LEASE_POLL_S = 0.25
# How often a process that handed its points to the holder looks whether they are written.
SPOOL_WAIT_POLL_S = 0.005
# How long a write handed to the lease holder may wait before it is a transient fault (retried).
HANDOFF_TIMEOUT_S = 120.0


class TransientError(RuntimeError):
    """A fault that goes away by itself (vision or the store briefly unreachable): retry later."""


class PermanentError(ValueError):
    """Retrying cannot help (a bad source, a model version these workers do not run)."""


# ------------------------------------------------------------------------------------ items as JSON
def item_to_json(item: Any) -> dict[str, Any]:
    """A shared.library.LookItem as task arguments (Celery sends JSON only)."""
    return {
        "path": str(item.path),
        "tags": list(item.tags),
        "source": item.source,
        "attribution": item.attribution,
        "known": [[k.kind, list(k.box)] for k in item.known],
        "status": item.status,
        "extra": dict(item.extra),
    }


def item_from_json(data: dict[str, Any]) -> Any:
    from shared.library import LookItem
    from shared.models.pipeline import KnownGarment

    return LookItem(
        path=Path(data["path"]),
        tags=tuple(data.get("tags") or ()),
        source=str(data.get("source") or ""),
        attribution=str(data.get("attribution") or ""),
        known=tuple(KnownGarment(kind=k, box=tuple(b)) for k, b in data.get("known") or ()),
        status=data.get("status"),
        extra=dict(data.get("extra") or {}),
    )


def chunks(items: Sequence[Any], size: int, workers: int = 1) -> Iterator[list[Any]]:
    """Consecutive chunks of at most `size` that shrink towards the end (guided self-scheduling).

    A chunk takes at most 1/(2 x workers) of what is left, so the last tasks of a refresh are one or
    two looks each: the worker processes finish within about one look of each other, instead of one
    idling while another works through a whole last chunk (half a chunk per process on average).
    With `workers` 1 every chunk but the tail's is `size` long.
    """
    size, workers = max(1, size), max(1, workers)
    start = 0
    while start < len(items):
        left = len(items) - start
        step = min(size, -(-left // (2 * workers)))
        yield list(items[start : start + step])
        start += step


# ------------------------------------------------------------------------------------ vision
class QualityCheckedAnalyzer:
    """Adds the quality score when the analyzer did not give one (a pipeline without the filter wired)."""

    def __init__(self, inner: Any, quality: Any, limits: Any) -> None:
        self.inner = inner
        self.quality = quality
        self.limits = limits

    @property
    def model_version(self) -> str:
        return str(self.inner.model_version)

    def analyze_sync(self, data: bytes, **kwargs: Any) -> Any:
        analysis = self.inner.analyze_sync(data, **kwargs)
        if kwargs.get("want_quality") and analysis.quality_score is None and self.quality is not None:
            from shared.images import decode_image

            verdict = self.quality.score(decode_image(data, self.limits))
            analysis.quality_score, analysis.quality_reasons = verdict.score, list(verdict.reasons)
        return analysis

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def limits_of(settings: Settings) -> Any:
    from shared.images import ImageLimits

    return ImageLimits(
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        min_side=settings.min_image_side,
    )


def local_analyzer(settings: Settings) -> Any:
    """The vision pipeline in this process (LocalVision: decode, validate, analyze)."""
    from services.vision.server import LocalVision
    from shared.models.pipeline import pipeline_for

    return LocalVision(pipeline_for(settings, torch_threads=settings.torch_threads or 1), settings)


def remote_analyzer(settings: Settings) -> Any:
    """VisionService over gRPC (LOOKBOOK_VISION_ADDR), with LocalVision's interface."""
    from services.vision.client import RemoteVision

    return RemoteVision(settings)


def analyzer_dims(analyzer: Any) -> tuple[int, int] | None:
    pipeline = getattr(getattr(analyzer, "inner", analyzer), "pipeline", None)
    if pipeline is None:
        return None
    return int(pipeline.embedding_dim), int(getattr(pipeline, "compat_dim", 0) or 0)


# ------------------------------------------------------------------------------------ store
class StoreAccess:
    """Opens the look store for a unit of work (a session).

    With a Qdrant server (LOOKBOOK_QDRANT_URL) each process keeps one client, and the all-in-one
    process passes its own open store (held). Qdrant Edge allows one process per directory and
    opening plus closing a shard costs most of a second, so worker processes on one host share it by
    lease: a process takes a host-wide lock and keeps the shard open across sessions until another
    process asks for it (a want-file beside the lock) or it has been idle for `idle_release_s`
    outside any unit of work (`working`: an ingestion task, whose store writes come one chunk of
    Analyze apart); the store is never locked while vision works, only while a session reads or
    writes.

    Writes do not move the lease (`hand_over`): a process that has points to write while another
    holds the store puts them in a spool file beside the lock and wakes the holder (a byte down the
    FIFO store-wake.fifo, which only the holder's lease watcher reads; the watcher also looks every
    LEASE_POLL_S). The holder writes them and deletes the file; the writer returns once the file
    is gone. A process asking for the lease wakes the holder the same way. A hand-over of the
    lease costs closing and reopening the shard (65-335 ms with two busy workers); a spooled write
    costs the holder's write and a few ms of polling by its writer. If the holder goes away first
    (the lock is free), the writer takes the lease and writes the spool itself; the writes are
    idempotent (ids come from the image bytes), so a spool file written twice stores nothing twice.
    """

    def __init__(
        self, settings: Settings, *, store: Any | None = None, held: bool | None = None, idle_release_s: float = 2.0
    ) -> None:
        self.settings = settings
        self._store = store
        self._held = held if held is not None else bool(settings.qdrant_url) or store is not None
        self._lock = threading.Lock()
        self.idle_release_s = idle_release_s
        self._lease: tuple[Any, Any] | None = None  # (lock file handle, open store)
        self._last_used = 0.0
        self._watcher: threading.Thread | None = None
        self._wants = settings.data_dir / "store-wants"
        self._own_want = self._wants / f"{os.getpid()}-{id(self)}.want"
        self._spool = settings.data_dir / "store-spool"
        self._wake = settings.data_dir / "store-wake.fifo"
        self._leased = threading.Event()  # set while this object holds the lease: the watcher's cue
        self._working = 0  # units of work in progress (`working`): no release for idleness meanwhile

    def _open(self) -> Any:
        from shared.store import open_store

        return open_store(self.settings)

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        from shared.store import StoreUnavailableError

        try:
            if self._held:
                with self._lock:
                    if self._store is None:
                        self._store = self._open()
                yield self._store
                return
            with self._lock:
                if self._lease is None:
                    self._acquire()
                assert self._lease is not None
                try:
                    yield self._lease[1]
                finally:
                    self._last_used = time.monotonic()
                    self._drain_spool()
                    if self._others_waiting():
                        self._release()
        except StoreUnavailableError as exc:
            raise TransientError(str(exc)) from None

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """A unit of work (an ingestion task) that writes now and then: the lease is kept through it
        however long its Analyze takes between writes, and released for idleness only
        `idle_release_s` after it ends. A process that asks for the store still gets it at once."""
        self._working += 1
        try:
            yield
        finally:
            self._working -= 1
            self._last_used = time.monotonic()

    def _idle(self) -> bool:
        return not self._working and time.monotonic() - self._last_used > self.idle_release_s

    def hand_over(self, write: _Upsert) -> bool:
        """Has the process holding the store run `write(store)`: true once it has, false when this
        process should write itself (it holds the lease, or nobody does). See the class docstring."""

        from shared.store import StoreUnavailableError

        if self._held:
            return False
        try:
            return self._hand_over(write)
        except StoreUnavailableError as exc:
            raise TransientError(str(exc)) from None

    def _hand_over(self, write: _Upsert) -> bool:
        import pickle

        with self._lock:
            if self._lease is not None or self._acquire(wait=False):
                return False
        self._spool.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{id(self)}-{time.monotonic_ns()}"
        staged, spooled = self._spool / f"{name}.tmp", self._spool / f"{name}.points"
        with staged.open("wb") as out:
            pickle.dump(write, out, protocol=pickle.HIGHEST_PROTOCOL)
            out.flush()
            os.fsync(out.fileno())
        os.replace(staged, spooled)
        self._wake_holder()
        failed = spooled.with_suffix(".failed")
        deadline = time.monotonic() + HANDOFF_TIMEOUT_S
        while spooled.exists():
            if failed.exists():
                break
            with self._lock:
                if self._lease is not None or self._acquire(wait=False):
                    self._drain_spool()  # the holder went away: write it (and any other) ourselves
                    continue
            if time.monotonic() > deadline:
                raise TransientError(
                    f"the process holding the look store did not take {len(write.points)} looks within "
                    f"{HANDOFF_TIMEOUT_S:.0f} s; they stay in {spooled} and are written by the next holder"
                )
            time.sleep(SPOOL_WAIT_POLL_S)
        if failed.exists():
            failed.unlink(missing_ok=True)
            raise TransientError(
                f"the process holding the look store could not write {len(write.points)} looks (its log says "
                "why, under 'a spooled write failed'); the task is retried"
            )
        return True

    def _drain_spool(self) -> None:
        """Writes what other processes spooled (call with the lease held and self._lock taken). A
        write that fails is renamed *.failed, which tells its writer to retry; the rest go on."""
        import pickle

        if self._lease is None or not self._spool.is_dir():
            return
        for spooled in sorted(self._spool.glob("*.points")):
            try:
                with spooled.open("rb") as data:
                    write = pickle.load(data)  # written by this host's workers, beside the lock
                write(self._lease[1])
            except FileNotFoundError:
                continue
            except Exception:
                log.exception("a spooled write failed", extra={"spool_file": str(spooled)})
                with contextlib.suppress(OSError):
                    os.replace(spooled, spooled.with_suffix(".failed"))
                continue
            spooled.unlink(missing_ok=True)
            self._last_used = time.monotonic()

    def _acquire(self, *, wait: bool = True) -> bool:
        """Takes the lease: waits for it (asking the holder with a want-file), or with `wait` false
        takes it only if no other process holds it. True once held."""
        if wait:
            self._wants.mkdir(parents=True, exist_ok=True)
            self._own_want.touch()
            self._wake_holder()
        handle = open(self.settings.data_dir / "store-writer.lock", "a+")  # noqa: SIM115 - held by the lease
        asked = time.monotonic()
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                return False
            locked = time.monotonic()
            store = self._open()
        except BaseException:
            handle.close()
            raise
        finally:
            if wait:
                self._own_want.unlink(missing_ok=True)
        log.info(
            "store lease taken",
            extra={"waited_s": round(locked - asked, 4), "open_s": round(time.monotonic() - locked, 4)},
        )
        self._lease = (handle, store)
        self._last_used = time.monotonic()
        self._leased.set()
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="store-lease", daemon=True)
            self._watcher.start()
            atexit.register(self.close)
        return True

    def _release(self) -> None:
        if self._lease is None:
            return
        self._drain_spool()
        handle, store = self._lease
        self._lease = None
        self._leased.clear()
        try:
            store.close()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def _others_waiting(self) -> bool:
        for want in self._wants.glob("*.want"):
            if want.name == self._own_want.name:
                continue
            pid = int(want.name.split("-", 1)[0]) if want.name.split("-", 1)[0].isdigit() else 0
            try:
                os.kill(pid, 0)  # a want-file left by a killed process asks for nothing
            except (ProcessLookupError, ValueError):
                want.unlink(missing_ok=True)
                continue
            except PermissionError:
                pass
            return True
        return False

    def _wake_holder(self) -> None:
        """Wakes the lease holder's watcher, if a process holds the store; never blocks."""
        try:
            fd = os.open(self._wake, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no holder is listening; ENOENT: no FIFO yet. The watcher still polls.
            return
        try:
            os.write(fd, b"!")
        except OSError:  # EAGAIN: the FIFO is full of wake-ups already
            pass
        finally:
            os.close(fd)

    def _open_wake(self) -> tuple[int, int] | None:
        """The wake FIFO opened for reading, with a writer end of our own so that it never reads as
        closed; None where it cannot be made (then the watcher polls)."""
        try:
            os.mkfifo(self._wake)
        except FileExistsError:
            pass
        except OSError as exc:
            log.warning(
                "no store wake-up FIFO; the lease holder polls every LEASE_POLL_S",
                extra={"path": str(self._wake), "error": str(exc)},
            )
            return None
        reader = -1
        try:
            reader = os.open(self._wake, os.O_RDONLY | os.O_NONBLOCK)
            return reader, os.open(self._wake, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if reader >= 0:
                os.close(reader)
            log.warning(
                "could not open the store wake-up FIFO; the lease holder polls every LEASE_POLL_S",
                extra={"path": str(self._wake), "error": str(exc)},
            )
            return None

    def _watch(self) -> None:
        # Hands the store over when another process asks, or when this one has gone idle, and
        # writes what others spooled. Sleeps while this process does not hold the lease, and while
        # it does, until woken through the FIFO (or LEASE_POLL_S, or the idle deadline, passes).
        import select

        while True:
            self._leased.wait()
            wake = self._open_wake()
            try:
                while self._lease is not None:
                    idle_in = self.idle_release_s - (time.monotonic() - self._last_used)
                    timeout = LEASE_POLL_S if self._working else min(LEASE_POLL_S, max(0.01, idle_in))
                    if wake is None:
                        time.sleep(timeout)
                    else:
                        try:
                            if select.select([wake[0]], [], [], timeout)[0]:
                                with contextlib.suppress(BlockingIOError):
                                    os.read(wake[0], 4096)
                        except OSError:  # the FIFO went bad (removed with the data dir?): poll instead
                            log.exception("store wake-up FIFO failed; the lease holder polls every LEASE_POLL_S")
                            for fd in wake:
                                with contextlib.suppress(OSError):
                                    os.close(fd)
                            wake = None
                    if not self._lock.acquire(blocking=False):
                        continue  # a session is on: its end writes the spool and looks who waits
                    try:
                        self._drain_spool()
                        if self._lease is not None and (self._idle() or self._others_waiting()):
                            self._release()
                    except Exception:  # the store itself failed (closing it): the next session reopens it
                        log.exception("store lease watcher failed; the next session reopens the store")
                    finally:
                        self._lock.release()
            finally:
                if wake is not None:
                    for fd in wake:
                        os.close(fd)

    def close(self) -> None:
        with self._lock:
            self._release()
            if self._store is not None and self._held:
                self._store.close()
                self._store = None


class SessionStore:
    """The few LookStore calls shared.library.ingest_look makes, each in its own short store session,
    so the store lock is never held while vision works. Creates the live collection on first write."""

    def __init__(
        self,
        access: StoreAccess,
        dims: Callable[[], tuple[int, int] | None],
        model_version: Callable[[], str],
    ):
        self.access = access
        self._dims = dims
        self._model_version = model_version

    def get(self, look_id: str) -> Any:
        with self.access.session() as store:
            return store.get(look_id) if store.live_version() is not None else None

    def existing_ids(self, look_ids: Sequence[str]) -> set[str]:
        with self.access.session() as store:
            return store.existing_ids(list(look_ids)) if store.live_version() is not None and look_ids else set()

    def upsert(self, points: Sequence[Any], **kwargs: Any) -> int:
        from shared.store import BOTTOM_COMPAT, TOP, TOP_COMPAT

        if not points:
            return 0
        dims = self._dims()
        if dims is None:  # a remote analyzer: read the dims off the vectors
            vectors = points[0].vectors
            compat = vectors.get(TOP_COMPAT, vectors.get(BOTTOM_COMPAT, ()))
            dims = (len(next(iter(v for k, v in vectors.items() if k in (TOP, "bottom")))), len(compat))
        write = _Upsert(list(points), self._model_version() or points[0].record.model_version, dims, kwargs)
        if self.access.hand_over(write):
            return len(points)
        with self.access.session() as store:
            return write(store)


@dataclass(frozen=True)
class _Upsert:
    """One store write, picklable, so that the process holding the store can run it (StoreAccess.hand_over)."""

    points: list[Any]
    model_version: str
    dims: tuple[int, int]
    kwargs: dict[str, Any]

    def __call__(self, store: Any) -> int:
        from shared.library import vector_dims

        if store.live_version() is None:
            store.ensure(self.model_version, vector_dims(self.dims))
        return int(store.upsert(self.points, **self.kwargs))


# ------------------------------------------------------------------------------------ runtime
@dataclass
class LibraryRuntime:
    """What the refresh functions need, built once per process (after a worker's fork)."""

    settings: Settings
    jobs: JobBoard
    store: StoreAccess
    analyzer_factory: Callable[[], Any] | None = None
    _analyzer: Any = field(default=None, init=False)

    @property
    def analyzer(self) -> Any:
        if self._analyzer is None:
            from shared.models.quality import load_quality

            inner = (
                self.analyzer_factory()
                if self.analyzer_factory is not None
                else remote_analyzer(self.settings)
                if self.settings.vision_addr
                else local_analyzer(self.settings)
            )
            self._analyzer = QualityCheckedAnalyzer(
                inner, load_quality(self.settings.models_dir), limits_of(self.settings)
            )
        return self._analyzer

    @property
    def looks(self) -> SessionStore:
        return SessionStore(self.store, lambda: analyzer_dims(self.analyzer), lambda: self.analyzer.model_version)


# ------------------------------------------------------------------------------------ refresh
@dataclass(frozen=True)
class RefreshPlan:
    new: list[Any]  # shared.library.LookItem
    skipped: int
    quarantined: int


def quarantine(rt: LibraryRuntime, job_id: str, path: str, reason: str, look_id: str = "") -> None:
    log.warning("look quarantined", extra={"job_id": job_id, "path": path, "reason": reason})
    rt.jobs.quarantine(QuarantinedImage(path=path, reason=reason, job_id=job_id, look_id=look_id))
    rt.jobs.mark(job_id, path, "quarantined")


def plan_refresh(rt: LibraryRuntime, source: str, job_id: str) -> RefreshPlan:
    """Reads the source, finds the looks not yet in the library (by content id) and records the plan."""
    from shared.library import SourceError, read_source
    from shared.store import look_id_for_sha256

    try:
        items = read_source(source)
    except SourceError as exc:
        rt.jobs.fail(job_id, str(exc))
        raise PermanentError(str(exc)) from None
    rt.jobs.start(job_id)
    by_id: dict[str, Any] = {}
    unreadable: list[tuple[Any, str]] = []
    for item in items:
        try:
            data = Path(item.path).read_bytes()
        except OSError as exc:
            unreadable.append((item, f"unreadable: {exc.strerror or exc}"))
            continue
        by_id.setdefault(look_id_for_sha256(hashlib.sha256(data).hexdigest()), item)  # same image twice: once
    existing = rt.looks.existing_ids(list(by_id))
    new = [item for look_id, item in by_id.items() if look_id not in existing]
    rt.jobs.plan(job_id, [str(i.path) for i in new] + [str(i.path) for i, _ in unreadable], skipped=len(existing))
    for item, reason in unreadable:
        quarantine(rt, job_id, str(item.path), reason)
    log.info(
        "refresh planned",
        extra={
            "job_id": job_id,
            "source": source,
            "entries": len(items),
            "new": len(new),
            "skipped": len(existing),
            "unreadable": len(unreadable),
        },
    )
    return RefreshPlan(new=new, skipped=len(existing), quarantined=len(unreadable))


@dataclass(frozen=True)
class IngestResult:
    path: str
    outcome: str  # ingested, exists, quarantined
    look_id: str = ""
    status: str = ""


class ChunkBuffer:
    """The LookStore calls shared.library.ingest_look makes, answered without the store: the chunk's
    looks are written together, in one store session, once vision has analysed all of them."""

    def __init__(self) -> None:
        self.points: list[Any] = []

    def get(self, look_id: str) -> Any:
        return None  # the refresh's plan already left out looks in the library

    def upsert(self, points: Sequence[Any], **_: Any) -> int:
        self.points.extend(points)
        return len(points)


def ingest_looks(rt: LibraryRuntime, items: Sequence[Any], job_id: str) -> list[IngestResult]:
    """Ingests a chunk of looks with shared.library.ingest_look, then writes them in one store session.

    Idempotent: the ids come from the image bytes and the store merges a re-import, and looks this
    job already stored are skipped, so a retried or redelivered chunk writes nothing twice. A bad
    image is quarantined with its reason and never retried. A transient fault (TransientError)
    stores what was analysed, then propagates for a retry.
    """
    with rt.store.working():  # one chunk of Analyze between two writes: keep the store's lease
        return _ingest_chunk(rt, items, job_id)


def _ingest_chunk(rt: LibraryRuntime, items: Sequence[Any], job_id: str) -> list[IngestResult]:
    from services.vision.client import VisionUnavailableError
    from shared.images import ImageRejected
    from shared.library import ingest_look

    results: list[IngestResult] = []
    buffer = ChunkBuffer()
    analysed: list[tuple[str, Any]] = []
    started = time.perf_counter()
    ingest_s = write_s = 0.0
    try:
        for item in items:
            path = str(item.path)
            if rt.jobs.outcome_of(job_id, path) == "done":
                results.append(IngestResult(path, "exists"))
                continue
            began = time.perf_counter()
            try:
                # Every fault of the file itself (unreadable, not an image, corrupt, over a limit)
                # comes out of the analyzer as ImageRejected: permanent, quarantined.
                outcome = ingest_look(
                    item,
                    analyzer=rt.analyzer,
                    store=buffer,  # type: ignore[arg-type]
                    images_dir=rt.settings.images_dir,
                    auto_approve_quality=rt.settings.auto_approve_quality,
                    max_image_bytes=rt.settings.max_image_bytes,
                    skip_existing=False,
                )
            except ImageRejected as exc:
                quarantine(rt, job_id, path, str(exc))
                results.append(IngestResult(path, "quarantined"))
                continue
            except (VisionUnavailableError, TimeoutError) as exc:
                # Vision down or overloaded: the same look will go through later.
                raise TransientError(str(exc)) from exc
            finally:
                ingest_s += time.perf_counter() - began
            analysed.append((path, outcome))
    finally:
        began = time.perf_counter()
        if buffer.points:
            rt.looks.upsert(buffer.points)
        write_s = time.perf_counter() - began
        for path, outcome in analysed:
            rt.jobs.mark(job_id, path, "done")
            results.append(IngestResult(path, "ingested", outcome.look_id, outcome.status))
            log.info(
                "look ingested",
                extra={
                    "job_id": job_id,
                    "look_id": outcome.look_id,
                    "status": outcome.status,
                    "quality": outcome.quality_score,
                },
            )
        # What the task's time went on: `lookbook bench ingest` adds these up per worker process.
        log.info(
            "chunk ingested",
            extra={
                "job_id": job_id,
                "looks": len(analysed),
                "ingest_s": round(ingest_s, 4),
                "write_s": round(write_s, 4),
                "task_s": round(time.perf_counter() - started, 4),
                "pid": os.getpid(),
            },
        )
    return results


def reembed(rt: LibraryRuntime, model_version: str) -> int:
    """Re-embeds the library into the collection of `model_version` and moves the alias when complete.

    Readers keep the live collection during the build. Resumable: a retried or redelivered task skips
    the looks already rebuilt.
    """
    from shared.library import reembed_library, vector_dims

    analyzer = rt.analyzer
    if analyzer.model_version and analyzer.model_version != model_version:
        raise PermanentError(
            f"these workers run model version {analyzer.model_version}, not {model_version}: "
            "deploy workers with that model, or ask for the version they run"
        )
    dims = analyzer_dims(analyzer)
    with rt.store.session() as store:
        if store.live_version() == model_version:
            return 0
        if dims is None:
            raise PermanentError("re-embedding needs the vision models in the worker: unset LOOKBOOK_VISION_ADDR")
        return reembed_library(store, analyzer=analyzer, images_dir=rt.settings.images_dir, dims=vector_dims(dims))
