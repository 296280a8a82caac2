"""Small random checkpoints of each family, built once per test session."""

from __future__ import annotations

import pytest

from engine import load_model
from tests import factories


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {name: fn(root / name) for name, fn in factories.ARCHITECTURES.items()}


@pytest.fixture(scope="session")
def gpt(folders):
    return load_model(folders["gpt2"], device="cpu")


@pytest.fixture(scope="session")
def bert(folders):
    return load_model(folders["bert"], device="cpu")


@pytest.fixture(scope="session")
def marian(folders):
    return load_model(folders["marian"], device="cpu")


@pytest.fixture(scope="session")
def t5(folders):
    return load_model(folders["t5-v1.0"], device="cpu")


@pytest.fixture(params=["gpt", "bert", "marian", "t5"])
def any_model(request):
    return request.getfixturevalue(request.param)
