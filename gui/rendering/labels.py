"""Display names shared by the views (attention kinds as a person reads them)."""

from __future__ import annotations

KIND_NAMES = {"encoder": "encoder self-attention", "self": "decoder self-attention", "cross": "cross-attention"}
ENCODER_ONLY_NAME = "self-attention"


def kind_name(kind: str, family: str | None) -> str:
    return ENCODER_ONLY_NAME if (kind == "encoder" and family == "encoder") else KIND_NAMES[kind]
