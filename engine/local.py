"""The engine in this process, behind the interface the GUI talks to (engine.remote.RemoteEngine is the
other implementation: the same methods, answered by a server next to the GPU).

Everything that asks about the machine the model runs on goes through one of these objects: which
models it can open, its devices, loading, sessions, and the explanations and analyses that need the
model's weights. What only computes on a Trace's numbers (patterns, tiles, distributions, exports) is
done on the Trace itself, wherever it is.
"""

from __future__ import annotations

import importlib.util
import logging
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import EngineError
from .session import Session, stop_token_ids

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
log = logging.getLogger(__name__)


def weights_size(folder: Path) -> int:
    """Bytes of the weight files in a checkpoint folder (symlinks of a hub snapshot followed); 0 when unknown."""
    total = 0
    try:
        for path in Path(folder).iterdir():
            if path.name.endswith(WEIGHT_SUFFIXES) and path.is_file():
                total += path.stat().st_size
    except OSError as exc:
        log.debug("cannot size %s: %s", folder, exc)
    return total


def torch_installed() -> bool:
    """Whether torch can be imported here (without importing it): a laptop that only reaches a remote engine may
    have installed the app without it."""
    if "torch" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def require_torch() -> None:
    """EngineError saying what to do when this computer cannot run a model (torch is not installed)."""
    if not torch_installed():
        raise EngineError("torch is not installed on this computer, so models cannot run here: connect to an engine "
                          "server (File → Connect to engine…), or install torch (pip install torch) to run them here")


class LocalEngine:
    """In-process engine: the model lives in this process, on this computer's devices."""

    remote = False
    gone: str | None = None  # an engine in this process never goes away
    Session = Session  # eng.Session(model, prompt, ...) as engine.Session

    @property
    def address(self) -> str:
        return "this computer"

    def where(self) -> str:
        """Where models run, for the status bar: "this computer (cpu)"; before torch is imported (a window
        starts without it, and the first model load imports it in the worker) only "this computer"."""
        if "torch" not in sys.modules and torch_installed():
            return "this computer"
        from .about import engine_versions

        return f"this computer ({engine_versions()['device']})"

    def describe(self) -> dict:
        from .about import app_version, engine_versions

        return {"host": platform.node(), "address": self.address, "app_version": app_version(), **engine_versions()}

    def load_model(self, source: str, device: str | None = None, dtype: str | None = None, allow_pickle: bool = False,
                   progress: Callable[[float, str], None] | None = None, cancel: Any = None, backend: str = "auto",
                   trust_remote_code: bool = False) -> Any:
        require_torch()
        from . import load_model

        return load_model(source, device=device, dtype=dtype, allow_pickle=allow_pickle, progress=progress, cancel=cancel,
                          backend=backend, trust_remote_code=trust_remote_code)

    def describe_source(self, source: str) -> tuple[str, int]:
        """(display name, bytes of its weight files) of what `source` names, without loading it; EngineError
        when it names nothing this engine can open."""
        from .checkpoints import resolve

        folder, name = resolve(source)
        return name, weights_size(folder)

    def bundled_models(self) -> list[str]:
        from .checkpoints.resolve import bundled_models

        return bundled_models()

    def cached_models(self) -> list[str]:
        from .checkpoints.resolve import cached_models

        return cached_models()

    def cached_model_infos(self) -> list:
        from .checkpoints import cached_model_infos

        return cached_model_infos()

    def devices_known_now(self) -> list[str]:
        """The devices, without importing torch for them: every device once torch is imported, else ["cpu"]
        (a window asks at start; available_devices() after the first model load adds the GPUs)."""
        return self.available_devices() if "torch" in sys.modules else ["cpu"]

    def available_devices(self) -> list[str]:
        if not torch_installed():
            return ["cpu"]  # nothing runs here without torch; a remote engine lists its own
        from .device import available_devices

        return available_devices()

    def stop_token_ids(self, model: Any) -> tuple[int, ...]:
        return stop_token_ids(model)

    # -- what needs the model's weights --------------------------------------------------------
    def logit_lens(self, model: Any, trace: Any, position: int, top: int = 10) -> dict:
        from .analysis import logit_lens

        return logit_lens(model, trace, position, top=top)

    def head_statistics(self, model: Any, trace: Any, induction: Any = None) -> list:
        from .analysis import head_statistics

        return head_statistics(model, trace, induction=induction)

    def induction_scores(self, model: Any) -> Any:
        from .analysis import induction_scores

        return induction_scores(model)

    def inside_head(self, model: Any, trace: Any, kind: str, layer: int, head: int, query: int) -> Any:
        from .explain import inside_head

        return inside_head(model, trace, kind, layer, head, query)

    def attribute(self, model: Any, trace: Any, position: int, token_id: int | None = None) -> Any:
        from .explain import attribute

        return attribute(model, trace, position, token_id)

    def nearest_tokens(self, model: Any, token_id: int, k: int = 10, metric: str = "cosine") -> list:
        from .explain import nearest_tokens

        return nearest_tokens(model, token_id, k, metric)

    def positions_view(self, model: Any) -> dict:
        from .explain import positions_view

        return positions_view(model)

    def mlp_neurons(self, model: Any, trace: Any, layer: int, position: int, token_id: int | None = None, k: int = 20,
                    rank_by: str = "write", stack: str | None = None, include: Any = ()) -> Any:
        from .explain import mlp_neurons

        return mlp_neurons(model, trace, layer, position, token_id, k, rank_by, stack=stack, include=tuple(include))

    def expert_neurons(self, model: Any, trace: Any, layer: int, position: int, k: int = 20,
                       token_id: int | None = None) -> Any:
        from .explain import expert_neurons

        return expert_neurons(model, trace, layer, position, k, token_id)

    def residual_stream(self, model: Any, trace: Any, position: int, token_id: int | None = None) -> Any:
        from .explain import residual_stream

        return residual_stream(model, trace, position, token_id)

    def patch(self, model: Any, clean: Any, corrupt: Any, component: Any, positions: Any = None, align: str = "end",
              position: int | None = None, capture: bool = True, split: int | None = None) -> Any:
        from .patching import patch

        return patch(model, clean, corrupt, component, positions=positions, align=align, position=position,
                     capture=capture, split=split)

    def patch_sweep(self, model: Any, clean: Any, corrupt: Any, token_a: int, token_b: int | None = None,
                    kind: str = "self", align: str = "end", position: int | None = None, positions: Any = None,
                    progress: Callable[[int, int], None] | None = None, cancel: Any = None,
                    batch: int | None = None) -> Any:
        from .patching import patch_sweep

        return patch_sweep(model, clean, corrupt, token_a, token_b, kind=kind, align=align, position=position,
                           positions=positions, progress=progress, cancel=cancel, batch=batch)

    def restore_session(self, state: dict, model: Any) -> Any:
        from .session_file import restore_session

        return restore_session(state, model)

    def model_folders(self) -> list[str]:
        """Folders the engine offers besides bundled and cached models: none in-process (any folder opens)."""
        return []

    def list_folders(self, path: str | None = None) -> list[dict] | None:
        """None: in-process any folder opens, so the window uses this computer's own folder dialog (a remote
        engine lists the folders it may open instead)."""
        return None

    def reconnect(self, **_: Any) -> None:
        """Nothing to reconnect to in-process."""

    def close(self) -> None:
        """Nothing to let go of in-process."""
