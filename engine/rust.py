"""Calls into Rust libraries (tokenizers, safetensors) can raise pyo3's PanicException, a BaseException."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def is_rust_panic(exc: BaseException) -> bool:
    return type(exc).__name__ == "PanicException"


def guarded(fn: Callable[[], T], error: type[Exception], message: str) -> T:
    """Run fn; turn any ordinary exception or a Rust panic into `error(message: cause)`."""
    try:
        return fn()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - PanicException derives from BaseException
        if isinstance(exc, Exception) or is_rust_panic(exc):
            raise error(f"{message}: {exc}") from exc
        raise
