"""A checkpoint's own code (auto_map) runs on the server only when the server was started with
--trust-remote-code: without it a client's trust_remote_code is refused (and the code never runs); with it, the
client's consent is still needed, and then the code does run there."""

from __future__ import annotations

import json

import pytest

from engine import CheckpointError, EngineError
from engine.remote import connect

from .conftest import Server


@pytest.fixture(scope="module")
def code_dir(tmp_path_factory, modern_dir):
    """--models-dir with a copy of the Gemma 2 checkpoint whose config names its own code, which leaves a mark."""
    root = tmp_path_factory.mktemp("code-models")
    out = root / "with-code"
    out.mkdir()
    for p in (modern_dir / "gemma2").iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    cfg = json.loads((out / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_mine.MyConfig", "AutoModelForCausalLM": "modeling_mine.MyModel"}
    (out / "config.json").write_text(json.dumps(cfg))
    marker = root / "code-ran"
    for name in ("configuration_mine.py", "modeling_mine.py"):
        (out / name).write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
                                "raise ImportError('a test checkpoint: its code ran, and stops here')\n")
    return root


def _start(tmp_path_factory, code_dir, *extra):  # noqa: ANN001, ANN202
    modules = tmp_path_factory.mktemp("hf-modules")  # where transformers copies a checkpoint's code before running it
    return Server(tmp_path_factory.mktemp("server"), models_dirs=(code_dir,), extra_args=extra,
                  env={"HF_MODULES_CACHE": str(modules)})


def test_without_the_servers_consent_a_clients_trust_remote_code_is_refused(tmp_path_factory, code_dir):
    server = _start(tmp_path_factory, code_dir)
    try:
        eng = connect(server.address, token=server.token)
        try:
            assert eng.info["trust_remote_code"] is False
            for backend in ("auto", "transformers"):
                with pytest.raises(CheckpointError, match="the server does not run checkpoint code; start it with "
                                                          "--trust-remote-code.*configuration_mine.py, modeling_mine.py"):
                    eng.load_model(str(code_dir / "with-code"), trust_remote_code=True, backend=backend)
            with pytest.raises(EngineError, match="trust_remote_code=True"):  # transformers refuses it without consent
                eng.load_model(str(code_dir / "with-code"), backend="transformers")
            assert not (code_dir / "code-ran").exists()
            assert eng.load_model("tiny-gpt", trust_remote_code=True).n_layers > 0  # no code of its own: opens
        finally:
            eng.close()
    finally:
        server.stop()


def test_with_the_servers_consent_the_client_still_decides(tmp_path_factory, code_dir):
    server = _start(tmp_path_factory, code_dir, "--trust-remote-code")
    try:
        eng = connect(server.address, token=server.token)
        try:
            assert eng.info["trust_remote_code"] is True
            with pytest.raises(EngineError, match="trust_remote_code=True"):  # the loader's own refusal
                eng.load_model(str(code_dir / "with-code"), backend="transformers")
            assert not (code_dir / "code-ran").exists()
            with pytest.raises(EngineError):
                eng.load_model(str(code_dir / "with-code"), trust_remote_code=True, backend="transformers")
            assert (code_dir / "code-ran").read_text() == "ran"  # it ran, on the server
        finally:
            eng.close()
    finally:
        server.stop()
