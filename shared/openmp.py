"""OpenMP tuning, applied by every entry point before torch loads.

torch's CPU kernels run on GNU OpenMP (libgomp). After each parallel region its idle threads spin
for GOMP_SPINCOUNT iterations (300,000 by default) before they sleep. A served
request does a torch forward and then Python work (ranking, the store's search threads); with two
cores, a spinning OpenMP thread took one of them for most of that work. 10,000 iterations still
covers the gap between two layers of one forward, so the forward itself is as fast (measured with
and without: the same within this machine's noise), and the threads sleep soon after it.

An operator's own GOMP_SPINCOUNT (or OMP_WAIT_POLICY) wins: this only sets a default.
"""

from __future__ import annotations

import os

SPIN_COUNT = "10000"


def tune_openmp() -> None:
    """Sets the spin default; call it before anything imports torch."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
