"""Mask rules on the transformers backend: transformers' own plain causal and bidirectional rules are known by
identity (no probe, no per-step check); every other rule (a sliding-window closure, a padded batch, a lookalike
function) is still probed and checked."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")


def _rule(fn, padding=None):
    from engine.hf_backend.masks import MaskRule

    return MaskRule(fn, 1, 1, 9, q_offset=8, kv_offset=0, padding=padding)


def test_transformers_plain_rules_are_known_without_probing(monkeypatch):
    from transformers import masking_utils

    from engine.hf_backend.masks import MaskRule

    monkeypatch.setattr(MaskRule, "_rule_at", lambda *_a: pytest.fail("a known rule was probed"))
    assert _rule(masking_utils.causal_mask_function).describe() == (True, None, None, None)
    assert _rule(masking_utils.bidirectional_mask_function).describe() == (False, None, None, None)


def test_other_rules_are_probed_and_their_rows_checked():
    from transformers import masking_utils

    from engine import CaptureError

    lookalike = _rule(lambda b, h, q, kv: kv <= q)  # causal too, but not transformers' function: probed
    assert lookalike.known is None and lookalike.describe() == (True, None, None, None)
    window = _rule(masking_utils.sliding_window_causal_mask_function(4))
    assert window.known is None and window.describe() == (True, 4, None, None)
    padded = _rule(masking_utils.causal_mask_function, padding=torch.tensor([[False] + [True] * 8]))
    assert padded.known is None
    with pytest.raises(CaptureError, match="padding"):
        padded.check_chunk(padded.allowed(0, 1, torch.device("cpu")), 0, "decoder.0.attn", (True, None, None, None))
