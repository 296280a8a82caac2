"""Attention Inspector's transformer engine: pure torch + tokenizers + safetensors, no Qt.

    from engine import load_model, Session
    model = load_model("tiny-gpt")
    session = Session(model, "In the beginning")
    step = session.step(); session.back(); session.branch(step.token_id)
    session.trace.attention("self", 0)   # [heads, queries, keys]
    session.trace.attention_overview("self", 0, rows=512, cols=512)   # pooled, for long contexts
"""

from typing import TYPE_CHECKING

from .errors import (
    Cancelled,
    CaptureError,
    ChatTemplateError,
    CheckpointError,
    DeviceError,
    EngineError,
    LoadCancelled,
    OutOfMemoryError,
    PromptError,
    SamplingError,
    SessionError,
    TokenizerError,
    UnsupportedArchitectureError,
)
from .sampling import SamplingSettings, distribution
from .trace import KINDS, PENDING, PatternBlock, StepInfo, Trace, capture_name, parse_capture_name

if TYPE_CHECKING:
    from .config import ModelConfig
    from .cpu_threads import share_cpu_with_ui
    from .model import Model
    from .session import Session, Step

# What needs torch is imported when first asked for (PEP 562), so `import engine` — the errors, the Trace, the
# sampling settings, everything a window reaching a remote engine uses — works on a machine without torch.
_LAZY = {"Model": ".model", "ModelConfig": ".config", "Session": ".session", "Step": ".session",
         "share_cpu_with_ui": ".cpu_threads"}


def __getattr__(name: str):  # noqa: ANN202
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "KINDS", "PENDING", "Cancelled", "CaptureError", "ChatTemplateError", "CheckpointError", "DeviceError", "EngineError",
    "LoadCancelled", "Model", "ModelConfig",
    "OutOfMemoryError", "PatternBlock", "PromptError", "SamplingError", "SamplingSettings", "Session", "SessionError",
    "Step", "StepInfo", "TokenizerError", "Trace", "UnsupportedArchitectureError", "capture_name", "distribution",
    "load_model", "parse_capture_name", "share_cpu_with_ui",
]


def load_model(source, device=None, dtype=None, allow_pickle: bool = False, progress=None, cancel=None,  # noqa: ANN001
               backend: str = "auto", trust_remote_code: bool = False):
    """A bundled model name, a checkpoint folder, or a Hugging Face cache id -> Model. `progress(fraction,
    message)` is called as the weights are read; `cancel` (threading.Event or callable) raises LoadCancelled.
    backend: "auto" (native engine for its 16 model_types, transformers for every other), "native" or
    "transformers"; trust_remote_code: allow a checkpoint's own code (auto_map)."""
    from .checkpoints import load_model as _load

    return _load(source, device=device, dtype=dtype, allow_pickle=allow_pickle, progress=progress, cancel=cancel,
                 backend=backend, trust_remote_code=trust_remote_code)
