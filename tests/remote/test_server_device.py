"""`serve --device auto`: loads that name no device are placed by the server (over its GPUs, then its CPU; here,
without CUDA, the CPU), the client's engine says so, and each model says its placement and devices."""

from __future__ import annotations

import pytest

from engine.remote import connect
from tests.remote.conftest import Server


@pytest.fixture(scope="module")
def auto_eng(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("auto"), device="auto")
    eng = connect(server.address, token=server.token)
    yield eng
    eng.close()
    server.stop()


def test_the_server_places_what_the_client_does_not(auto_eng):
    assert auto_eng.info["load_device"] == "auto"
    assert "models spread over its GPUs, then the CPU" in auto_eng.where()
    model = auto_eng.load_model("tiny-llama")
    from engine import load_model

    local = load_model("tiny-llama", device="auto")
    assert model.placement == local.placement and model.devices == local.devices
    session = auto_eng.Session(model, "In the beginning")
    assert session.step().token_id == local_step(local)


def local_step(model) -> int:  # noqa: ANN001
    from engine import Session

    return Session(model, "In the beginning").step().token_id
