"""bfloat16 runs against the float32 result of transformers on the CPU, with the bounds stated (and justified)
in tests/cuda/cases.py: every architecture on CUDA (`pytest -m cuda`), and a few on the CPU in the normal suite
(the CPU picks bfloat16 itself when float32 would not fit in RAM, and no other test computes in it)."""

from __future__ import annotations

import pytest
import torch

from engine import load_model
from tests.cuda import cases
from tests.cuda.devices import CUDA_MARKS

pytest.importorskip("transformers")

ON_CPU = ("gpt2", "bert", "t5-v1.1", "llama", "gemma2")  # one per family, plus the soft-capped Gemma
PARAMS = [pytest.param(name, "cuda", marks=CUDA_MARKS, id=f"{name}-cuda") for name in cases.BUILDERS]
PARAMS += [pytest.param(name, "cpu", id=f"{name}-cpu") for name in ON_CPU]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    made: dict[str, cases.Case] = {}

    def get(name: str) -> cases.Case:
        if name not in made:
            made[name] = cases.build(name, tmp_path_factory.mktemp(name))
        return made[name]
    return get


@pytest.mark.parametrize(("name", "device"), PARAMS)
def test_bfloat16_agrees_with_the_float32_reference(built, name, device):
    case = built(name)
    model = load_model(case.folder, device=device, dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and model.device.type == device
    cases.check_bfloat16(cases.run(model, case), case)
