"""glibc malloc tuning for the library workers (`python -m services.workers`), set before they fork.

A torch forward on the CPU allocates its activations (up to a few MB each) and frees them when it
ends. glibc serves an allocation above its mmap threshold with a fresh mmap() and gives it back
with munmap() when freed, and its dynamic threshold never rose above those sizes here, so every
forward faulted all its activation pages in again, zero-filled by the kernel
(tests/unit/test_malloc.py shows it on a small conv net). Measured on this machine with one-off
scripts (2 cores, `perf stat`): two processes analysing the same 96 looks took 2.7 million page
faults and 7.2 s of kernel time for 35 s of user time. With the thresholds below, freed
activations stay in the heap and the next forward reuses them: 0.34 million faults and 1.5 s.
One process's Analyze of a look photo (vision and quality) took 111-132 ms instead of 147-162 ms
in three alternating pairs of runs.

What it costs: a process's heap keeps what its largest forward needed (tens of MB with the
batches Lookbook runs) instead of returning it. A worker process runs torch on one thread, so that
is one heap. The servers (`lookbook serve`) do not set it: they run forwards on a pool of request
threads, each with its own glibc arena that would keep its own peak, and `lookbook bench match`
against a tuned server gave a p50 within 4% of an untuned one (121.8 against 126.7 ms, one run
each, the tuning switched by hand) while the bare forward it is compared with got 17% faster.

An operator's own MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ wins: this only sets defaults.
The variables are also set for child processes, which read them when their own malloc starts;
Celery's forked worker processes inherit the running process's settings.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

# Allocations at or above this size still get their own mmap (glibc's ceiling for the setting on
# 64-bit: 32 MiB). A forward's largest activation here is about 6.4 MB (a batch of 4 at 224 px).
MMAP_THRESHOLD = 32 * 2**20
# Free memory at the top of the heap above this is returned to the system.
TRIM_THRESHOLD = 256 * 2**20

MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"
TRIM_ENV = "MALLOC_TRIM_THRESHOLD_"
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3


def tune_malloc() -> bool:
    """Sets the defaults for this process (mallopt) and its children (environment).

    Returns True when this call set them; False when the operator set either variable, or the C
    library is not glibc (nothing to tune, nothing changed).
    """
    if MMAP_ENV in os.environ or TRIM_ENV in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        log.warning("glibc refused the malloc thresholds; torch forwards will page-fault their activations")
        return False
    os.environ[MMAP_ENV] = str(MMAP_THRESHOLD)
    os.environ[TRIM_ENV] = str(TRIM_THRESHOLD)
    return True
