"""Devices the CUDA tests run on. `pytest -m cuda tests/cuda` runs the GPU tests; without a GPU they are skipped,
never failed, and the normal suite runs only the CPU parametrisations that add coverage of their own."""

from __future__ import annotations

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU here (torch.cuda.is_available() is False)")
CUDA_MARKS = [pytest.mark.cuda, needs_cuda]
