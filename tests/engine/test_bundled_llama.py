"""The bundled tiny-llama (resources/models/tiny-llama): a standard Hugging Face llama folder stored in
bfloat16 that loads by name, agrees with transformers (LlamaForCausalLM, eager, float32), and has what
its MODEL_CARD.md says it learned. The numbers come from tools/card_tiny_llama.py; the card's heads and
passages are the ones checked here.

Fast on a CPU: no training, a handful of short forward passes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import load_model
from engine.checkpoints.resolve import RESOURCES, bundled_models

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import card_tiny_llama as card  # noqa: E402  (the passages and measures the card uses)

NAME = "tiny-llama"
FOLDER = RESOURCES / NAME
ATTN_TOL, LOGIT_TOL = 1e-5, 1e-4

# what MODEL_CARD.md states (layer, head) and measures; the tests keep a small margin below it
INDUCTION_HEAD, INDUCTION_MIN = (3, 1), 0.8
PREVIOUS_HEAD, PREVIOUS_MIN = (2, 6), 0.6
SAMPLE_BPC = 1.195  # bits/char on card.SAMPLE (Genesis 8:1-5, held out), as the card states
HELD_OUT_BPC = 1.151  # the card's held-out bits per character (60 chapters; measured by the card script)
RELATIVE_HEAD, RELATIVE_MAX_CHANGE = PREVIOUS_HEAD, 0.08


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Loaded once, by name, from a directory that is not the repository's."""
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("elsewhere"))
    try:
        return load_model(NAME, device="cpu")
    finally:
        os.chdir(here)


@pytest.fixture(scope="module")
def card_text() -> str:
    return (FOLDER / "MODEL_CARD.md").read_text(encoding="utf-8")


def test_folder_is_a_bfloat16_llama_checkpoint():
    assert NAME in bundled_models()
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "MODEL_CARD.md"):
        assert (FOLDER / f).is_file(), f"{NAME} lacks {f}"
    cfg = json.loads((FOLDER / "config.json").read_text(encoding="utf-8"))
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (8, 2, 32)
    assert cfg["max_position_embeddings"] >= 1024
    raw = (FOLDER / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    tok_cfg = json.loads((FOLDER / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tok_cfg["bos_token"] == tok_cfg["eos_token"] == "<|endoftext|>"
    # the same tokenizer as tiny-gpt, so the two read identical ids
    assert (FOLDER / "tokenizer.json").read_bytes() == (RESOURCES / "tiny-gpt" / "tokenizer.json").read_bytes()


def test_loads_by_name_from_any_directory(model):
    m = model
    assert (m.family, m.config.model_type, m.n_layers, m.n_heads, m.config.n_kv_heads) == ("decoder", "llama", 4, 8, 2)
    assert m.max_positions >= 1024
    assert 4e6 <= m.n_params <= 6e6
    assert m.tokenizer.encode("In the beginning")[0] == m.config.bos_token_id  # <|endoftext|> in front, as in training


def _max_err(ours: np.ndarray, theirs: torch.Tensor) -> float:
    theirs = theirs.detach().float().numpy()
    assert ours.shape == theirs.shape, f"shape {ours.shape} != reference {theirs.shape}"
    return float(np.abs(ours - theirs).max())


def test_reference_implementation_agrees(model):
    transformers = pytest.importorskip("transformers")
    ref = transformers.LlamaForCausalLM.from_pretrained(FOLDER, attn_implementation="eager", dtype=torch.float32).eval()
    ids = model.tokenizer.encode(card.SAMPLE)
    with torch.no_grad():
        out = ref(torch.tensor([ids]), output_attentions=True)
    trace = model.run(ids)
    assert len(out.attentions) == model.n_layers
    for i, a in enumerate(out.attentions):
        err = _max_err(trace.attention("self", i), a[0])
        assert err <= ATTN_TOL, f"layer {i}: patterns differ by {err:.2e}"
    err = _max_err(trace.logits, out.logits[0])
    assert err <= LOGIT_TOL, f"logits differ by {err:.2e}"


def test_bits_per_char_on_a_held_out_sample(model):
    bpc = card.bits_per_char(model, card.SAMPLE)
    assert bpc <= SAMPLE_BPC + 0.005, f"{bpc:.4f} bits/char on Genesis 8:1-5 (card: {SAMPLE_BPC})"


def test_no_worse_than_tiny_gpt_on_held_out_text(model):
    """The issue's bar: bits per character no worse than tiny-gpt's, on the same held-out passage with the
    same tokenizer and measure (the card's 60-chapter figure needs the corpus, which the repository lacks)."""
    ours = card.bits_per_char(model, card.SAMPLE)
    theirs = card.bits_per_char(load_model("tiny-gpt", device="cpu"), card.SAMPLE)
    assert ours <= theirs, f"Genesis 8:1-5: tiny-llama {ours:.4f} bits/char, tiny-gpt {theirs:.4f}"


def test_the_starter_prompt_shows_induction_at_work(model):
    """The app's starter prompt for tiny-llama (what the card says of it): at the last token a layer-3 head
    looks at the token that followed the same two tokens the first time, and that token is the top candidate."""
    from gui.panels.prompt import BUNDLED_EXAMPLES  # the text the app opens with (no widget is made)

    ids = model.tokenizer.encode(BUNDLED_EXAMPLES[NAME][0])
    q = len(ids) - 1
    first = next(k for k in range(1, q) if ids[k - 1 : k + 1] == ids[q - 1 : q + 1])  # "Lamech begat", first time
    trace = model.run(ids)
    weights = trace.attention("self", INDUCTION_HEAD[0])[:, q, first + 1]
    assert weights.max() >= 0.5, f"layer {INDUCTION_HEAD[0]} heads on the induction target: {np.round(weights, 2)}"
    assert int(np.argmax(trace.logits[q])) == ids[first + 1]


def test_induction_head(model):
    layer, head = INDUCTION_HEAD
    scores = [float(card.induction_score(model, n, layer, seed=n)[head]) for n in card.REPEAT_LENGTHS]
    assert min(scores) >= INDUCTION_MIN, f"layer {layer} head {head} on repeats of {card.REPEAT_LENGTHS}: {scores}"


def test_previous_token_head(model):
    layer, head = PREVIOUS_HEAD
    ids = model.tokenizer.encode(card.PREVIOUS_TEXT)
    score = float(card.previous_score(model.run(ids).attention("self", layer), np.arange(2, len(ids)))[head])
    assert score >= PREVIOUS_MIN, f"previous-token score of layer {layer} head {head}: {score:.3f}"


def test_relative_offset_head_keeps_its_band_wherever_the_text_starts(model):
    """Rotary positions: the same passage after 0 or 150 other tokens (inside the trained window of 256)
    gets the same weights on the keys 0..4 back (the card's relative-offset head)."""
    layer, head = RELATIVE_HEAD
    filler = model.tokenizer.encode(card.PREVIOUS_TEXT, special_tokens=False) * 40
    passage = model.tokenizer.encode(card.SAMPLE, special_tokens=False)[:60]
    profiles = []
    for start in (0, 150):
        seq = [model.config.bos_token_id, *filler[:start], *passage]
        pattern = model.run(seq).attention("self", layer)
        profiles.append(card.offset_profile(pattern, np.arange(1 + start + 4, len(seq)))[head])
    change = float(np.abs(profiles[0] - profiles[1]).max())
    assert change <= RELATIVE_MAX_CHANGE, f"offset weights {profiles[0]} vs {profiles[1]}"


def test_heads_command_finds_the_cards_heads(capsys):
    import main

    assert main.main(["heads", "--model", NAME, "--prompt", card.PREVIOUS_TEXT, "--json"]) == 0
    stats = [s for s in json.loads(capsys.readouterr().out) if s["kind"] == "self"]
    best_induction = max(stats, key=lambda s: s["induction"])
    best_previous = max(stats, key=lambda s: s["prev_token"])
    layer, head = INDUCTION_HEAD
    ours = next(s for s in stats if (s["layer"], s["head"]) == (layer, head))
    assert ours["induction"] >= INDUCTION_MIN and best_induction["induction"] - ours["induction"] < 0.1
    assert (best_previous["layer"], best_previous["head"]) == PREVIOUS_HEAD


def test_card_states_what_the_tests_check(card_text):
    for layer, head in (INDUCTION_HEAD, PREVIOUS_HEAD, RELATIVE_HEAD):
        assert f"layer {layer}, head {head}" in card_text
    assert f"{SAMPLE_BPC:.3f}" in card_text and f"{HELD_OUT_BPC:.3f}" in card_text
