"""Keeps Python's cyclic garbage collector off the request path of a long-running process.

A served process holds several hundred thousand objects from start-up (torch modules, imports,
protobuf descriptors). Each full collection walks all of them, charged to whichever request
happens to allocate at that moment. `gc.freeze()` moves them to a permanent
generation that collections skip; objects made later are collected as usual.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def settle_heap() -> int:
    """Collects once, then freezes everything alive; call it when start-up (model loading) is done.

    Returns the number of objects frozen. Calling it again freezes what was created since.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("start-up objects frozen out of garbage collection", extra={"objects": frozen})
    return frozen
