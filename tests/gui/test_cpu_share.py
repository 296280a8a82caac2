"""The window's process leaves a core to the event loop: numpy's BLAS threads are all cores but one, set
before numpy is imported (issue 20: a two-thread tile product took both cores of a 2-core machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import ctypes, glob, json, os, sys
sys.path.insert(0, {root!r})
from gui.shell.cpu_share import share_blas_with_ui, usable_cores
{before}
n = share_blas_with_ui()
import numpy as np
threads = None
for lib in glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "*openblas*")):
    for name in ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads", "openblas_get_num_threads"):
        fn = getattr(ctypes.CDLL(lib), name, None)
        if fn is not None:
            threads = fn()
            break
print(json.dumps({{"set": n, "env": os.environ.get("OPENBLAS_NUM_THREADS"), "cores": usable_cores(), "blas": threads}}))
"""


def _probe(env: dict[str, str], before: str = "") -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "ATTENTION_INSPECTOR_THREADS")}
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT), before=before)], env={**clean, **env},
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_blas_threads_are_all_cores_but_one():
    got = _probe({})
    want = max(1, got["cores"] - 1)
    assert got["set"] == want and got["env"] == str(want)
    if got["blas"] is None:
        pytest.skip("numpy's BLAS does not say its thread count here")
    assert got["blas"] == want  # OpenBLAS took it


def test_what_the_person_set_wins():
    assert _probe({"OPENBLAS_NUM_THREADS": "3"})["env"] == "3"
    assert _probe({"ATTENTION_INSPECTOR_THREADS": "2"})["env"] == "2"
    bad = _probe({"ATTENTION_INSPECTOR_THREADS": "many"})
    assert bad["env"] == str(max(1, bad["cores"] - 1))


def test_too_late_once_numpy_is_imported():
    got = _probe({}, before="import numpy")
    assert got["set"] is None and got["env"] is None
