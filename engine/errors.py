"""The engine's exceptions. Each message says what went wrong and what to do about it."""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class CheckpointError(EngineError):
    """A model folder, file or weight set cannot be used (missing, corrupt, wrong shapes)."""


class UnsupportedArchitectureError(CheckpointError):
    """config.json names a model_type the engine has no converter for."""


class TokenizerError(CheckpointError):
    """The tokenizer is missing, broken, or does not fit the model."""


class DeviceError(EngineError):
    """The requested device (or dtype on it) does not exist on this machine."""


class PromptError(EngineError):
    """A prompt or token sequence the model cannot take (empty, too long, bad ids)."""


class SessionError(EngineError):
    """A stepping operation that is not possible in the session's current state."""


class SamplingError(EngineError):
    """Sampling settings out of range (temperature, top-k, top-p)."""


class CaptureError(EngineError):
    """A request for an attention pattern that was not recorded (unknown kind or layer)."""


class OutOfMemoryError(EngineError):
    """The device ran out of memory; the session is left as it was before the request."""


class ChatTemplateError(PromptError):
    """A chat template that cannot render these messages (invalid Jinja, or the template refuses them,
    e.g. a system message for a template without a system role)."""


class LoadCancelled(EngineError):
    """load_model was cancelled (its `cancel` event was set); what it had allocated is freed."""


class Cancelled(EngineError):
    """A forward (a long prefill) was cancelled through its `cancel` flag; the session is as it was before."""
