"""The app's torch thread policy (issue 20): a core stays free for the window's event loop."""

from __future__ import annotations

import pytest
import torch

from engine import share_cpu_with_ui
from engine.device import usable_cores


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_all_cores_but_one(restore_threads, monkeypatch):
    monkeypatch.delenv("ATTENTION_INSPECTOR_THREADS", raising=False)
    n = share_cpu_with_ui(reserve=1)
    assert n == max(1, usable_cores() - 1) == torch.get_num_threads()


def test_never_below_one(restore_threads, monkeypatch):
    monkeypatch.delenv("ATTENTION_INSPECTOR_THREADS", raising=False)
    assert share_cpu_with_ui(reserve=usable_cores() + 5) == 1 == torch.get_num_threads()


def test_the_environment_or_the_caller_decides(restore_threads, monkeypatch):
    monkeypatch.setenv("ATTENTION_INSPECTOR_THREADS", "3")
    assert share_cpu_with_ui() == 3 == torch.get_num_threads()
    assert share_cpu_with_ui(threads=2) == 2 == torch.get_num_threads()


def test_asked_before_torch_is_imported_it_applies_when_the_engine_imports_torch():
    """A window asks at start, before anything imported torch (it is imported with the first model): the count
    waits, and torch has it once the engine imports torch (engine.device, on every load path)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = """
import json, sys
from engine import share_cpu_with_ui
n = share_cpu_with_ui(threads=3)
before = "torch" in sys.modules
from engine import load_model
load_model("tiny-gpt", device="cpu")
import torch
print(json.dumps({"n": n, "before": before, "threads": torch.get_num_threads()}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                          text=True, timeout=300, env={k: v for k, v in os.environ.items()
                                                       if k != "ATTENTION_INSPECTOR_THREADS"})
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == {"n": 3, "before": False, "threads": 3}
