"""The transformers backend: every architecture transformers implements, through its own model classes with our
attention function registered in its AttentionInterface, filling the same Trace as the native engine.

Nothing here is imported at app start-up: engine.checkpoints.load_model imports it when a checkpoint needs it.
"""

from .load import load_transformers_model
from .model import HFModel

__all__ = ["HFModel", "load_transformers_model"]
