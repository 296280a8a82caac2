"""Every architecture's tiny random checkpoint (tests/factories.py, tests/modern_factories.py) with the float32
reference result of transformers (eager attention, on the CPU) that the CUDA tests compare against."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.tokenizer import Tokenizer
from tests import factories, modern_factories

# the same references and inputs as tests/parity/test_parity.py and tests/parity/test_modern.py
CLASSIC_REFERENCE = {
    "gpt2": "GPT2LMHeadModel", "bert": "BertForMaskedLM", "bert-no-head": "BertModel", "roberta": "RobertaForMaskedLM",
    "roberta-gelu-new": "RobertaForMaskedLM",
    "t5-v1.0": "T5ForConditionalGeneration", "t5-v1.1": "T5ForConditionalGeneration",
    "bart": "BartForConditionalGeneration", "marian": "MarianMTModel", "transformer": "MarianMTModel",
}
BUILDERS = {**factories.ARCHITECTURES, **modern_factories.ARCHITECTURES}
REFERENCE = {**CLASSIC_REFERENCE, **modern_factories.REFERENCE}
SOURCE = "And God said, Let there be light: and there was light."
PROMPT = "In the beginning God"
MODERN_PROMPT = list(range(5, 25))  # 20 tokens: longer than every sliding window (5)
STEP_IDS = list(range(5, 25))  # the KV-cache test feeds these as ids (every vocabulary here has > 25 tokens)


@dataclass
class Case:
    name: str
    folder: Path
    family: str
    ref: torch.nn.Module  # transformers, float32, CPU
    ids: list[int]  # the main sequence (decoder, or encoder for encoder-only)
    source: list[int] | None  # encoder-decoder: encoder ids
    patterns: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # (kind, layer) -> [heads, T, S]
    logits: np.ndarray | None = None


def build(name: str, root: Path) -> Case:
    import transformers

    folder = BUILDERS[name](root / "ckpt")
    ref = getattr(transformers, REFERENCE[name]).from_pretrained(folder, attn_implementation="eager").eval()
    tok = Tokenizer.from_folder(folder)
    config = ref.config
    if config.is_encoder_decoder:
        family = "encoder-decoder"
        source = tok.encode(SOURCE)
        ids = [config.decoder_start_token_id] + tok.encode(PROMPT, special_tokens=False)
    elif name in modern_factories.ARCHITECTURES:
        family, source, ids = "decoder", None, list(MODERN_PROMPT)
    elif name == "gpt2":
        family, source, ids = "decoder", None, tok.encode(PROMPT)
    else:
        family, source, ids = "encoder", None, tok.encode(SOURCE)
    case = Case(name, folder, family, ref, ids, source)
    with torch.no_grad():
        if family == "encoder-decoder":
            out = ref(input_ids=torch.tensor([source]), decoder_input_ids=torch.tensor([ids]), output_attentions=True)
            groups = (("encoder", out.encoder_attentions), ("self", out.decoder_attentions), ("cross", out.cross_attentions))
        else:
            out = ref(torch.tensor([ids]), output_attentions=True)
            groups = (("encoder" if family == "encoder" else "self", out.attentions),)
    for kind, atts in groups:
        for i, a in enumerate(atts):
            case.patterns[kind, i] = a[0].float().numpy()
    case.logits = out.logits[0].float().numpy() if getattr(out, "logits", None) is not None else None
    return case


def run(model, case: Case):  # noqa: ANN001, ANN201 - engine.Model -> engine.Trace
    return model.run(case.ids, source=case.source) if case.source is not None else model.run(case.ids)


def max_errors(trace, case: Case) -> tuple[float, float | None]:  # noqa: ANN001 - engine.Trace
    """-> (largest absolute difference of any pattern weight, of any logit) against the reference."""
    pattern_err = 0.0
    for (kind, i), ref in case.patterns.items():
        ours = trace.attention(kind, i)
        assert ours.shape == ref.shape, f"{case.name} {kind} layer {i}: shape {ours.shape} != reference {ref.shape}"
        pattern_err = max(pattern_err, float(np.abs(ours - ref).max()))
    if case.logits is None:
        assert trace.logits is None
        return pattern_err, None
    assert trace.logits.shape == case.logits.shape
    return pattern_err, float(np.abs(trace.logits - case.logits).max())


def greedy_reference(case: Case, n: int) -> list[int]:
    """transformers' greedy continuation (float32, CPU) as test_parity.py computes it."""
    ref, cfg = case.ref, case.ref.config
    kw = dict(max_new_tokens=n, do_sample=False, num_beams=1, pad_token_id=cfg.pad_token_id or 0)
    with torch.no_grad():
        if case.family == "decoder":
            out = ref.generate(torch.tensor([case.ids]), attention_mask=torch.ones(1, len(case.ids), dtype=torch.long), **kw)
            return out[0, len(case.ids):].tolist()
        out = ref.generate(torch.tensor([case.source]), decoder_start_token_id=cfg.decoder_start_token_id, **kw)
        return out[0, 1:].tolist()


# bfloat16 against the float32 reference. bfloat16 keeps 8 significant bits (unit roundoff 2^-9 ~ 0.2%), the
# weights themselves are rounded when loaded, and these checkpoints are re-initialised with std 0.2 so that
# patterns have structure: scores reach tens, where a 0.4% change moves a score by ~0.1 and a sharp softmax row
# by as much. Measured with bfloat16 on the CPU over all 22 checkpoints: mean per-row total-variation distance
# <= 0.020 (T5 v1.1, no score scaling), largest single weight off by 0.14, logits off by <= 6.0% (relative L2).
# The bounds below are about twice that; the greedy choice must agree wherever float32's top-1 leads its
# runner-up by more than 5% of the largest logit (mismatches were seen only at margins under 1.2%).
BF16_MEAN_TV, BF16_MAX_WEIGHT, BF16_LOGITS_REL_L2, BF16_CLEAR_MARGIN = 0.05, 0.30, 0.12, 0.05


def bfloat16_report(trace, case: Case) -> dict:  # noqa: ANN001 - engine.Trace
    """How far a bfloat16 run is from the float32 reference, in the terms of the bounds above."""
    tv, worst = [], 0.0
    for (kind, i), ref in case.patterns.items():
        ours = trace.attention(kind, i)
        assert ours.shape == ref.shape
        assert np.isfinite(ours).all(), f"{case.name} {kind} layer {i}: non-finite pattern weights"
        diff = np.abs(ours - ref)
        tv.append(0.5 * diff.sum(-1).mean())
        worst = max(worst, float(diff.max()))
    out = {"mean_tv": float(np.mean(tv)), "max_weight": worst}
    if case.logits is not None:
        ours, ref = trace.logits, case.logits
        assert np.isfinite(ours).all(), f"{case.name}: non-finite logits"
        out["logits_rel_l2"] = float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
        top2 = np.sort(ref, axis=-1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > BF16_CLEAR_MARGIN * float(np.abs(ref).max())
        out["clear_positions"] = int(clear.sum())
        out["clear_argmax_disagreements"] = int((ours.argmax(-1) != ref.argmax(-1))[clear].sum())
    return out


def check_bfloat16(trace, case: Case) -> dict:  # noqa: ANN001 - engine.Trace
    r = bfloat16_report(trace, case)
    assert r["mean_tv"] <= BF16_MEAN_TV, f"{case.name}: patterns' mean row distance {r['mean_tv']:.4f} > {BF16_MEAN_TV}"
    assert r["max_weight"] <= BF16_MAX_WEIGHT, f"{case.name}: a pattern weight off by {r['max_weight']:.3f} > {BF16_MAX_WEIGHT}"
    if "logits_rel_l2" in r:
        assert r["logits_rel_l2"] <= BF16_LOGITS_REL_L2, f"{case.name}: logits off by {r['logits_rel_l2']:.4f} (rel L2)"
        assert r["clear_argmax_disagreements"] == 0, f"{case.name}: bfloat16 picks another top token where float32 is clear: {r}"
    return r
