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
