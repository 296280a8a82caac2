"""The Hugging Face cache as huggingface_hub lays it out (blobs, symlinked snapshots, refs) and the listing
behind File → Open from cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from engine import CheckpointError, load_model
from engine.checkpoints import CachedModel, cached_model_infos, cached_models


def _put(cache, repo_id, files: dict[str, bytes], revision="a" * 40, main=True, kind="models"):
    """One snapshot as the hub writes it: content in blobs/<hash>, snapshots/<rev>/<name> -> ../../blobs/<hash>."""
    repo = cache / f"{kind}--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    if main:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return snap


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    for var in ("HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # this machine's own cache stays out of the listing
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    return hub


def _with_config(folder, **changes) -> dict[str, bytes]:
    files = _files(folder)
    cfg = json.loads(files["config.json"])
    cfg.update(changes)
    files["config.json"] = json.dumps(cfg).encode()
    return files


def test_a_hub_layout_resolves_through_refs_main(folders, cache):
    old = _put(cache, "org/tiny", _files(folders["gpt2"]), revision="1" * 40, main=False)
    snap = _put(cache, "org/tiny", _files(folders["gpt2"]), revision="2" * 40)
    model = load_model("org/tiny", device="cpu")
    assert model.folder == snap and model.name == "org/tiny" and old != snap
    assert model.run("In the").logits is not None
    assert "org/tiny" in cached_models()


def test_main_pointing_at_an_older_revision_wins(folders, cache):
    older = _put(cache, "org/pinned", _files(folders["gpt2"]), revision="1" * 40)
    _put(cache, "org/pinned", _files(folders["bert"]), revision="2" * 40, main=False)
    assert load_model("org/pinned").folder == older


def test_cache_listing_says_what_opens_and_why_not(folders, cache):
    gpt = _files(folders["gpt2"])
    _put(cache, "org/gpt", gpt)
    _put(cache, "org/moe", _with_config(folders["gpt2"], model_type="mixtral", num_local_experts=8))
    _put(cache, "org/gptq", _with_config(folders["gpt2"], quantization_config={"quant_method": "gptq", "bits": 4}))
    pickled = {k: v for k, v in gpt.items() if k != "model.safetensors"} | {"pytorch_model.bin": b"x" * 10}
    _put(cache, "org/pickled", pickled)
    _put(cache, "org/no-config", {"README.md": b"hi"})
    _put(cache, "org/data", {"train.csv": b"a,b\n"}, kind="datasets")
    (cache / "stray-file.txt").write_text("not a repo")
    infos = {m.repo_id: m for m in cached_model_infos()}
    assert set(infos) == {"org/gpt", "org/moe", "org/gptq", "org/pickled", "org/no-config"}
    ok = infos["org/gpt"]
    assert isinstance(ok, CachedModel) and ok.supported and ok.reason == "" and ok.model_type == "gpt2"
    assert ok.size_bytes == sum(len(v) for v in gpt.values()) and (ok.path / "config.json").is_file()
    assert load_model(ok.repo_id).folder == ok.path
    assert infos["org/moe"].supported and infos["org/moe"].reason == ""  # opens through transformers
    assert not infos["org/gptq"].supported and "gptq" in infos["org/gptq"].reason
    assert not infos["org/pickled"].supported and "pickle" in infos["org/pickled"].reason
    assert infos["org/no-config"].path is None and "no config.json" in infos["org/no-config"].reason


def test_listing_an_absent_cache_is_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "absent"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "absent-home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "absent-xdg"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "absent-default"))
    assert cached_model_infos() == [] and cached_models() == []


def test_a_broken_symlink_or_odd_id_is_not_found_cleanly(folders, cache):
    snap = _put(cache, "org/broken", _files(folders["gpt2"]))
    blob = (snap / "model.safetensors").resolve()
    blob.unlink()
    with pytest.raises(CheckpointError):
        load_model("org/broken")
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        load_model("not a valid id!")
    shutil.rmtree(cache)
