"""Checkpoint loading: formats, tokenizers, the HF cache, and every kind of broken folder."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine import CheckpointError, TokenizerError, UnsupportedArchitectureError, load_model
from engine.checkpoints import SUPPORTED
from tests import factories


@pytest.fixture
def gpt_folder(folders, tmp_path):
    dst = tmp_path / "gpt"
    shutil.copytree(folders["gpt2"], dst)
    return dst


def _weights(folder):
    return folder / "model.safetensors"


def test_every_architecture_loads(folders):
    families = {}
    for name, folder in folders.items():
        families[name] = load_model(folder, device="cpu").family
    assert families["gpt2"] == "decoder" and families["roberta"] == "encoder" and families["t5-v1.1"] == "encoder-decoder"
    assert set(SUPPORTED) >= {"gpt2", "bert", "roberta", "t5", "bart", "marian"}


def test_bert_without_head_has_no_logits_and_says_why(folders):
    model = load_model(folders["bert-no-head"], device="cpu")
    tr = model.run("in the beginning")
    assert tr.logits is None and "masked-LM head" in tr.no_logits_reason
    assert tr.attention("encoder", 1).shape[0] == 4


def test_missing_and_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no model called"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty"):
        load_model(tmp_path / "empty")


def test_missing_or_invalid_config(gpt_folder):
    (gpt_folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_model(gpt_folder)
    (gpt_folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(gpt_folder)


def test_unknown_architecture_lists_the_supported_ones(gpt_folder):
    """The native engine (forced) names what it converts; a type it does not convert goes to transformers."""
    cfg = json.loads((gpt_folder / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (gpt_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match="'mamba'.*gpt2, bert, roberta, t5, bart, marian") as info:
        load_model(gpt_folder, backend="native")
    assert ", ".join(SUPPORTED) in str(info.value) and "mixture-of-experts" not in str(info.value)


@pytest.mark.parametrize("content, match", [
    (b"", "empty"),
    (b"\x01\x02", "truncated"),
    (b"<!DOCTYPE html><html><body>404</body></html>", "HTML"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "Git LFS pointer"),
    (struct.pack("<Q", 10**12) + b"{}", "header claiming"),
    (struct.pack("<Q", 5) + b"notjs", "unreadable header"),
])
def test_broken_weight_files(gpt_folder, content, match):
    _weights(gpt_folder).write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as info:
        load_model(gpt_folder)
    assert "model.safetensors" in str(info.value)


def test_truncated_weights(gpt_folder):
    data = _weights(gpt_folder).read_bytes()
    _weights(gpt_folder).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(gpt_folder)


def test_misshaped_missing_and_unexpected_tensors_are_named(gpt_folder):
    sd = load_file(_weights(gpt_folder))
    sd["transformer.h.0.attn.c_attn.weight"] = torch.zeros(32, 48)
    del sd["transformer.h.1.mlp.c_fc.bias"]
    sd["transformer.h.0.extra.weight"] = torch.zeros(3)
    save_file(sd, _weights(gpt_folder))
    with pytest.raises(CheckpointError) as info:
        load_model(gpt_folder)
    msg = str(info.value)
    assert "transformer.h.0.attn.c_attn.weight: found [32, 48], expected [32, 96]" in msg
    assert "missing 1 tensor(s): transformer.h.1.mlp.c_fc.bias" in msg
    assert "unexpected tensor(s): transformer.h.0.extra.weight" in msg


def test_headless_checkpoint_without_prefix_loads(gpt_folder):
    sd = {k.removeprefix("transformer."): v for k, v in load_file(_weights(gpt_folder)).items()}
    save_file(sd, _weights(gpt_folder))
    assert load_model(gpt_folder).run("In the").logits.shape[1] == 300


def test_sharded_checkpoint(folders, tmp_path):
    from transformers import GPT2LMHeadModel

    ref = GPT2LMHeadModel.from_pretrained(folders["gpt2"])
    dst = tmp_path / "sharded"
    ref.save_pretrained(dst, max_shard_size="40KB")
    shutil.copy(folders["gpt2"] / "tokenizer.json", dst)
    assert (dst / "model.safetensors.index.json").exists()
    a = load_model(dst).run("In the beginning").logits
    b = load_model(folders["gpt2"]).run("In the beginning").logits
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)  # same weights; BLAS may round differently
    shard = sorted(dst.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"{shard.name}.*missing"):
        load_model(dst)


def test_pickle_weights_refused_unless_allowed(gpt_folder):
    sd = load_file(_weights(gpt_folder))
    torch.save(sd, gpt_folder / "pytorch_model.bin")
    _weights(gpt_folder).unlink()
    with pytest.raises(CheckpointError, match="pickle.*safetensors"):
        load_model(gpt_folder)
    assert load_model(gpt_folder, allow_pickle=True).run("In").logits is not None


def test_broken_or_missing_tokenizer(gpt_folder):
    (gpt_folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"}}')
    with pytest.raises(TokenizerError, match="tokenizer.json is not a valid"):
        load_model(gpt_folder)
    (gpt_folder / "tokenizer.json").unlink()
    (gpt_folder / "spiece.model").write_bytes(b"x")
    with pytest.raises(TokenizerError, match="no tokenizer.*SentencePiece"):
        load_model(gpt_folder)


def test_tokenizer_with_ids_the_model_lacks(gpt_folder):
    cfg = json.loads((gpt_folder / "config.json").read_text())
    tok = factories.byte_level_tokenizer(400, ["<|endoftext|>"])
    tok.save(str(gpt_folder / "tokenizer.json"))
    with pytest.raises(TokenizerError, match=f"ids up to 399.*{cfg['vocab_size']} rows"):
        load_model(gpt_folder)


def test_gpt2_style_vocab_and_merges(gpt_folder):
    tok = json.loads((gpt_folder / "tokenizer.json").read_text())
    (gpt_folder / "vocab.json").write_text(json.dumps(tok["model"]["vocab"]))
    merges = tok["model"]["merges"]
    lines = [" ".join(m) if isinstance(m, list) else m for m in merges]
    (gpt_folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n")
    (gpt_folder / "tokenizer.json").unlink()
    model = load_model(gpt_folder)
    assert "␣the" in model.tokenizer.token_strings(model.tokenizer.encode("In the beginning"))


def test_bert_style_vocab_txt(folders, tmp_path):
    dst = tmp_path / "bert"
    shutil.copytree(folders["bert"], dst)
    vocab = json.loads((dst / "tokenizer.json").read_text())["model"]["vocab"]
    (dst / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n")
    (dst / "tokenizer.json").unlink()
    model = load_model(dst)
    ids = model.tokenizer.encode("In the [MASK] God")
    assert model.tokenizer.token_strings(ids)[0] == "[CLS]" and model.config.mask_token_id in ids


def test_padding_baked_into_tokenizer_json_is_turned_off(gpt_folder):
    tok = json.loads((gpt_folder / "tokenizer.json").read_text())
    tok["padding"] = {"strategy": {"Fixed": 128}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0,
                      "pad_type_id": 0, "pad_token": "<|endoftext|>"}
    (gpt_folder / "tokenizer.json").write_text(json.dumps(tok))
    assert len(load_model(gpt_folder).tokenizer.encode("In the")) < 10


def test_display_strings_are_readable(folders):
    gpt = load_model(folders["gpt2"])
    assert gpt.tokenizer.token_strings(gpt.tokenizer.encode(" God\n"))[0].startswith("␣")
    bert = load_model(folders["bert"])
    pieces = bert.tokenizer.token_strings(bert.tokenizer.encode("beginningless"))
    assert any(p.startswith("##") for p in pieces)


def test_hf_cache_resolution(folders, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-gpt2"
    snap = repo / "snapshots" / "0123abcd"
    shutil.copytree(folders["gpt2"], snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    model = load_model("someone/tiny-gpt2")
    assert model.name == "someone/tiny-gpt2" and model.folder == snap
    from engine.checkpoints import cached_models

    assert "someone/tiny-gpt2" in cached_models()
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        load_model("someone/absent")


def test_every_architecture_loads_from_a_cache_id(folders, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # the hub cache is then $HF_HOME/hub
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    for name, folder in folders.items():
        snap = tmp_path / "hf" / "hub" / f"models--tests--{name}" / "snapshots" / "abc"
        shutil.copytree(folder, snap)
        from_cache = load_model(f"tests/{name}", device="cpu")
        from_folder = load_model(folder, device="cpu")
        a, b = from_cache.run("In the beginning"), from_folder.run("In the beginning")
        assert from_cache.folder == snap and a.token_ids == b.token_ids
        for n in a.capture_names:
            kind = "cross" if n.endswith("cross_attn") else ("encoder" if n.startswith("encoder") else "self")
            np.testing.assert_array_equal(a.attention(kind, int(n.split(".")[1])), b.attention(kind, int(n.split(".")[1])))


def test_t5_v11_untied_layout_uses_its_own_head(folders, tmp_path):
    """transformers 4 saved T5 v1.1 with tie_word_embeddings=false and a separate lm_head.weight."""
    dst = tmp_path / "t5"
    shutil.copytree(folders["t5-v1.1"], dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    cfg.pop("scale_decoder_outputs", None)
    (dst / "config.json").write_text(json.dumps(cfg))
    sd = load_file(dst / "model.safetensors")
    sd["lm_head.weight"] = torch.randn_like(sd["shared.weight"])
    save_file(sd, dst / "model.safetensors")
    model = load_model(dst)
    assert model.net.lm_head is not None and model.config.lm_head_scale == 1.0
    torch.testing.assert_close(model.net.unembedding_t, sd["lm_head.weight"].t())
