"""The bundled models (resources/models/*): they load by name from anywhere, the claims of their
MODEL_CARD.md hold, and the reference implementation (transformers, eager attention) agrees with us.

Fast on a CPU: no training, a handful of short forward passes per model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import Session, load_model
from engine.checkpoints.resolve import RESOURCES, bundled_models

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from kjv_data import FAMILIAR, FORMULAIC  # noqa: E402  (the verses the card and the recipe use)

BUNDLED = ("tiny-gpt", "tiny-bert", "tiny-seq2seq")
ATTN_TOL, LOGIT_TOL = 1e-5, 1e-4

# where MODEL_CARD.md of tiny-gpt says the structure is (layer, head), and the scores it promises
INDUCTION_HEAD, INDUCTION_MIN = (3, 1), 0.4
PREVIOUS_HEAD, PREVIOUS_MIN = (0, 0), 0.5
REPEAT_LENGTHS = (8, 16, 32)
# tiny-bert's card: (layer, head) of its previous-token and next-token heads
BERT_PREVIOUS_HEAD, BERT_NEXT_HEAD, BERT_HEAD_MIN = (0, 0), (1, 2), 0.6

DATES = [
    ("Tuesday, 3rd March 1987", "1987-03-03"),
    ("the 21st of October, 2015", "2015-10-21"),
    ("JAN 9 1066", "1066-01-09"),
    ("december 31st, 1999", "1999-12-31"),
    ("Sat 29 Feb 2000", "2000-02-29"),
    ("4 July 1776", "1776-07-04"),
]


class _Models(dict):
    """Bundled models loaded on first use, once per test module."""

    def __missing__(self, name: str):
        self[name] = load_model(name, device="cpu")
        return self[name]


@pytest.fixture(scope="module")
def models():
    return _Models()


def test_bundled_models_are_listed():
    assert set(BUNDLED) <= set(bundled_models())
    for name in BUNDLED:
        folder = RESOURCES / name
        for f in ("config.json", "model.safetensors", "tokenizer.json", "MODEL_CARD.md"):
            assert (folder / f).is_file(), f"{name} lacks {f}"


def test_load_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    families = {name: load_model(name, device="cpu").family for name in BUNDLED}
    assert families == {"tiny-gpt": "decoder", "tiny-bert": "encoder", "tiny-seq2seq": "encoder-decoder"}


def test_resources_stay_small():
    total = sum(f.stat().st_size for f in RESOURCES.rglob("*") if f.is_file())
    assert total < 60 * 2**20


# -- tiny-gpt -------------------------------------------------------------------------------------
def _repeat_scores(model, layer: int, head: int) -> tuple[float, float]:
    """(induction, previous-token) score of one head on [EOS] + R + R for random token spans R:
    attention from each token of the second copy to the token after its first occurrence, and to
    the token just before it."""
    rng = np.random.default_rng(0)
    eot = model.config.bos_token_id
    ind, prev = [], []
    for n in REPEAT_LENGTHS:
        span = rng.integers(1, model.config.vocab_size, size=n).tolist()
        pattern = model.run([eot, *span, *span]).attention("self", layer)[head]
        q = np.arange(1 + n, 1 + 2 * n - 1)
        ind.append(pattern[q, q - n + 1].mean())
        prev.append(pattern[q, q - 1].mean())
    return float(np.mean(ind)), float(np.mean(prev))


def test_tiny_gpt_has_an_induction_head(models):
    model = models["tiny-gpt"]
    layer, head = INDUCTION_HEAD
    score, _ = _repeat_scores(model, layer, head)
    assert score >= INDUCTION_MIN, f"induction score of layer {layer} head {head}: {score:.3f}"


def test_tiny_gpt_has_a_previous_token_head(models):
    model = models["tiny-gpt"]
    layer, head = PREVIOUS_HEAD
    ids = model.tokenizer.encode("And God said, Let there be light: and there was light. And God saw the light, that it was good.")
    pattern = model.run(ids).attention("self", layer)[head]
    q = np.arange(2, len(ids))
    score = float(pattern[q, q - 1].mean())
    assert score >= PREVIOUS_MIN, f"previous-token score of layer {layer} head {head}: {score:.3f}"


def test_tiny_gpt_card_names_the_heads():
    card = (RESOURCES / "tiny-gpt" / "MODEL_CARD.md").read_text(encoding="utf-8")
    for layer, head in (INDUCTION_HEAD, PREVIOUS_HEAD):
        assert f"layer {layer}, head {head}" in card


def test_tiny_gpt_writes_kjv_english(models):
    model = models["tiny-gpt"]
    session = Session(model, "And the LORD said unto Moses,")
    for _ in range(24):
        if session.finished:
            break
        session.step()
    text = model.tokenizer.decode(session.ids)
    words = text.split()
    assert len(words) >= 12
    assert {"unto", "the", "of", "and", "shall", "thou", "thee", "thy", "ye", "LORD"} & set(words[6:])


# -- tiny-bert ------------------------------------------------------------------------------------
def _fill(model, text: str) -> str:
    step = Session(model, prompt=text).step()
    return model.tokenizer.decode([step.token_id])


def test_tiny_bert_fills_most_familiar_verses(models):
    """The card's claim: a masked word of a familiar verse is filled right most of the time (8 of 10 measured)."""
    model = models["tiny-bert"]
    fills = [(word, _fill(model, text)) for text, word in FAMILIAR]
    assert sum(word == got for word, got in fills) >= 7, fills


def test_tiny_bert_has_previous_and_next_token_heads(models):
    model = models["tiny-bert"]
    trace = model.run("And he went up from thence unto Bethel: and as he was going up by the way, there came forth "
                      "little children out of the city.")
    q = np.arange(1, len(trace) - 1)  # the verse's tokens, not [CLS] / [SEP]
    for (layer, head), offset in ((BERT_PREVIOUS_HEAD, -1), (BERT_NEXT_HEAD, +1)):
        score = float(trace.attention("encoder", layer)[head][q, q + offset].mean())
        assert score >= BERT_HEAD_MIN, f"layer {layer} head {head}, offset {offset}: {score:.3f}"
    card = (RESOURCES / "tiny-bert" / "MODEL_CARD.md").read_text(encoding="utf-8")
    for layer, head in (BERT_PREVIOUS_HEAD, BERT_NEXT_HEAD):
        assert f"layer {layer}, head {head}" in card


# formulaic KJV phrases that MODEL_CARD.md says tiny-bert fills (its top-1 prediction)
@pytest.mark.parametrize("text, word", FORMULAIC)
def test_tiny_bert_fills_a_masked_word(models, text, word):
    assert _fill(models["tiny-bert"], text) == word


# -- tiny-seq2seq ---------------------------------------------------------------------------------
@pytest.mark.parametrize("source, iso", DATES)
def test_tiny_seq2seq_normalises_dates(models, source, iso):
    model = models["tiny-seq2seq"]
    session = Session(model, source=source)
    for _ in range(16):
        if session.finished:
            break
        session.step()
    assert session.finished
    assert model.tokenizer.decode(session.ids) == iso


def test_tiny_seq2seq_cross_attention_reads_the_year(models):
    """Teacher-forced: the decoder's cross-attention (averaged over layers and heads) puts more weight on
    the source's year digits while writing the year than anywhere else does on average."""
    model = models["tiny-seq2seq"]
    source, iso = "Friday, 13th August 1824", "1824-08-13"
    src = model.tokenizer.encode(source)
    dec = [model.config.decoder_start_token_id, *model.tokenizer.encode(iso, special_tokens=False)]
    trace = model.run(dec, source=src)
    cross = np.mean([trace.attention("cross", i).mean(0) for i in range(model.n_layers)], axis=0)  # (T, S)
    year = source.index("1824")
    on_year = cross[:4, year:year + 4].sum(-1)  # queries that write the four year digits
    assert on_year.mean() > 4 * 4 / len(src)


# -- parity with the reference implementation -----------------------------------------------------
REFERENCE = {"tiny-gpt": "GPT2LMHeadModel", "tiny-bert": "BertForMaskedLM", "tiny-seq2seq": "MarianMTModel"}


def _close(ours: np.ndarray, theirs: torch.Tensor, tol: float, what: str) -> None:
    theirs = theirs.detach().float().numpy()
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != reference {theirs.shape}"
    err = float(np.abs(ours - theirs).max())
    assert err <= tol, f"{what}: max abs difference {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("name", BUNDLED)
def test_reference_implementation_agrees(models, name):
    transformers = pytest.importorskip("transformers")
    folder = Path(RESOURCES / name)
    ref = getattr(transformers, REFERENCE[name]).from_pretrained(folder, attn_implementation="eager").eval()
    model = models[name]
    tok = model.tokenizer
    with torch.no_grad():
        if name == "tiny-gpt":
            ids = tok.encode("In the beginning God created the heaven and the earth.")
            out = ref(torch.tensor([ids]), output_attentions=True)
            trace = model.run(ids)
            pairs = [("self", out.attentions)]
        elif name == "tiny-bert":
            ids = tok.encode("And God said, Let there be [MASK]: and there was light.")
            out = ref(torch.tensor([ids]), output_attentions=True)
            trace = model.run(ids)
            pairs = [("encoder", out.attentions)]
        else:
            src = tok.encode("Wed, the 4th of July 1804")
            dec = [model.config.decoder_start_token_id, *tok.encode("1804-07-04", special_tokens=False)]
            out = ref(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec]), output_attentions=True)
            trace = model.run(dec, source=src)
            pairs = [("encoder", out.encoder_attentions), ("self", out.decoder_attentions),
                     ("cross", out.cross_attentions)]
        for kind, atts in pairs:
            assert len(atts) >= 1
            for i, a in enumerate(atts):
                _close(trace.attention(kind, i), a[0], ATTN_TOL, f"{name} {kind} layer {i}")
        _close(trace.logits, out.logits[0], LOGIT_TOL, f"{name} logits")
