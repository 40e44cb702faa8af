"""shared/malloc.py: torch forwards stop page-faulting their activations, and an operator's setting wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Page faults per forward of a small conv net whose activations (6.4 MB each) are above glibc's
# default mmap threshold, after three warm-up forwards.
_FAULTS = """
import resource, sys
if sys.argv[1] == "tune":
    from shared.malloc import tune_malloc
    print("tuned", tune_malloc())
import torch
torch.set_num_threads(1)
net = torch.nn.Sequential(*[m for _ in range(4) for m in (torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU())])
x = torch.randn(4, 32, 112, 112)
with torch.inference_mode():
    for _ in range(3):
        net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        net(x)
print("faults", (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def _clean_env() -> dict[str, str]:
    """This environment without any MALLOC_* variable (a parent process may have set them)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}


def _run(mode: str, **env: str) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], cwd=REPO, env={**_clean_env(), **env},
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def test_tuned_forwards_reuse_their_memory_instead_of_faulting_it_in() -> None:
    plain, tuned = _run("plain"), _run("tune")
    assert tuned["tuned"] == "True"
    assert float(plain["faults"]) > 1000  # each forward maps its activations afresh
    assert float(tuned["faults"]) < float(plain["faults"]) / 20


def test_an_operator_setting_wins() -> None:
    assert _run("tune", MALLOC_TRIM_THRESHOLD_="1048576")["tuned"] == "False"


def test_children_inherit_the_setting() -> None:
    script = ("import os, subprocess, sys; from shared.malloc import tune_malloc; tune_malloc(); "
              "child = 'import os; print(os.environ[\"MALLOC_MMAP_THRESHOLD_\"])'; "
              "sys.exit(subprocess.run([sys.executable, '-c', child]).returncode)")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_clean_env(), capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert int(out) == 32 * 2**20
