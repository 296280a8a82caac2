"""model_type (config.json) -> converter. Adding an architecture means adding one entry here."""

from __future__ import annotations

from . import bart, bert, decoders, gpt2, t5
from .mapping import Converter

CONVERTERS: dict[str, Converter] = {
    "gpt2": gpt2.CONVERTER,
    "bert": bert.BERT,
    "roberta": bert.ROBERTA,
    "t5": t5.CONVERTER,
    "bart": bart.BART,
    "marian": bart.MARIAN,
    **decoders.CONVERTERS,
}

SUPPORTED = tuple(CONVERTERS)
