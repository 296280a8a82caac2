"""What the transformers backend refuses, with the reason and what to do: a checkpoint's own code without consent,
a model_type the installed transformers does not know, quantised weights that cannot run here, a truncated shard.
And what it must not do: import transformers when the app starts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine import CheckpointError, UnsupportedArchitectureError, load_model
from tests import hf_factories

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def olmo3(tmp_path_factory):
    return hf_factories.ARCHITECTURES["olmo3"](tmp_path_factory.mktemp("olmo3") / "ckpt")


def _copy_with(folder, tmp_path, **changes):
    out = tmp_path / "ckpt"
    out.mkdir()
    for p in folder.iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(changes)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def test_remote_code_is_refused_naming_the_files_it_would_run(olmo3, tmp_path):
    folder = _copy_with(olmo3, tmp_path, auto_map={"AutoConfig": "configuration_mine.MyConfig",
                                                   "AutoModelForCausalLM": "modeling_mine.MyModel"})
    (folder / "modeling_mine.py").write_text("raise SystemExit('must not run')\n")
    with pytest.raises(UnsupportedArchitectureError, match="auto_map.*configuration_mine.py, modeling_mine.py.*"
                                                          "trust_remote_code=True"):
        load_model(folder, device="cpu")


def test_an_unknown_model_type_is_refused_naming_it_and_the_version(olmo3, tmp_path):
    folder = _copy_with(olmo3, tmp_path, model_type="olmo99")
    with pytest.raises(UnsupportedArchitectureError, match=f"'olmo99'.*transformers {transformers.__version__} does not know"):
        load_model(folder, device="cpu")


@pytest.mark.parametrize("quant, named", [({"quant_method": "gptq", "bits": 4}, "gptq"),
                                          ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes 4-bit"),
                                          ({"quant_method": "awq", "bits": 4}, "awq")])
def test_quantisation_that_cannot_run_here_is_refused_with_the_reason(olmo3, tmp_path, quant, named):
    folder = _copy_with(olmo3, tmp_path, quantization_config=quant)
    with pytest.raises(UnsupportedArchitectureError, match=f"\\({named}\\).*not supported on this machine \\(.*CUDA.*"
                                                          "open the original"):
        load_model(folder, device="cpu")


def test_a_truncated_shard_is_refused_before_loading(olmo3, tmp_path):
    folder = _copy_with(olmo3, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    with pytest.raises(CheckpointError, match="missing or truncated"):
        load_model(folder, device="cpu")


def test_backend_must_be_one_of_three(olmo3):
    with pytest.raises(ValueError, match="'auto', 'native' or 'transformers'"):
        load_model(olmo3, device="cpu", backend="fast")


def test_importing_the_engine_does_not_import_transformers():
    code = "import sys, engine, engine.checkpoints; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_the_command_line_opens_through_either_backend(olmo3, tmp_path):
    """export --backend transformers on a native-looking folder, and an auto-routed MoE-free olmo3."""
    import numpy as np

    import main
    from tests.modern_factories import llama

    folder = llama(tmp_path / "llama")
    outs = {}
    for backend in ("native", "transformers"):
        out = outs[backend] = tmp_path / f"{backend}.npz"
        assert main.main(["export", "--model", str(folder), "--prompt", "In the beginning", "--steps", "3",
                          "--backend", backend, "--out", str(out)]) == 0
    with np.load(outs["native"]) as a, np.load(outs["transformers"]) as b:
        assert np.abs(a["decoder.1.attn"] - b["decoder.1.attn"]).max() <= 1e-5
    out = tmp_path / "olmo3.npz"
    assert main.main(["export", "--model", str(olmo3), "--prompt", "In the", "--steps", "2", "--out", str(out)]) == 0
    with np.load(out) as data:
        assert "decoder.1.attn" in data.files


def test_a_model_that_would_not_fit_says_so_before_loading(olmo3, monkeypatch):
    from engine import OutOfMemoryError
    from engine.hf_backend import load

    monkeypatch.setattr(load, "available_memory", lambda: 1000)
    with pytest.raises(OutOfMemoryError, match=r"needs .* but only 0.00 GB of RAM is free"):
        load_model(olmo3, device="cpu", dtype="float32")
