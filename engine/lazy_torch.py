"""`torch`, imported on first use: modules whose records and helpers a torch-free client needs (a window
reaching a remote engine decodes HeadStat, InsideHead, PatchResult … from them) name torch only inside
functions, through this stand-in, so importing them does not import torch.

    from .lazy_torch import torch      # instead of `import torch`; annotations stay under TYPE_CHECKING
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule(ModuleType):
    """A module object that imports the real one when an attribute is first read, then holds its attributes (so
    later reads cost what a plain module's do)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        return getattr(module, attr)


torch: Any = LazyModule("torch")
