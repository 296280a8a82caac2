"""A loopback engine server in a subprocess (one per test module), and in-process models to compare with."""

from __future__ import annotations

import subprocess

import pytest

from engine.remote import connect
from engine.remote.launch import spawn_server
from tests.gui.conftest import window  # noqa: F401 - the GUI tests' window fixture, for the GUI-over-loopback tests


class Server:
    """A running `python -m engine.remote.cli` child, its address, token and stderr log."""

    def __init__(self, tmp_path, models_dirs=(), port=0, token_file=None, device=None, extra_args=(), env=None,
                 extra=()) -> None:
        self.log_path = tmp_path / f"server-{port or 'any'}.log"
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in stop()
        self.models_dirs = models_dirs
        self.proc, self.address, self.token = spawn_server(port=port, token_file=token_file, models_dirs=models_dirs,
                                                           stderr=self._log, device=device,
                                                           extra_args=(*extra_args, *extra), env=env)

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture(scope="module")
def modern_dir(tmp_path_factory):
    """A --models-dir holding a random Gemma 2 checkpoint (soft-caps, sliding windows, GQA)."""
    from tests import modern_factories

    root = tmp_path_factory.mktemp("models")
    modern_factories.ARCHITECTURES["gemma2"](root / "gemma2")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, modern_dir):
    s = Server(tmp_path_factory.mktemp("server"), models_dirs=(modern_dir,))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def eng(server):
    e = connect(server.address, token=server.token)
    yield e
    e.close()


def record_gui_thread_calls(conn) -> list[str]:  # noqa: ANN001 - engine.remote.connection.Connection
    """Wrap `conn.call` so every request made from the GUI (main) thread is listed: the window must never wait on
    the network in its own thread. Returns the list it fills."""
    import threading

    in_gui_thread: list[str] = []
    real_call = conn.call

    def call(op, *args, **kw):  # noqa: ANN001, ANN202
        if threading.current_thread() is threading.main_thread():
            in_gui_thread.append(op)
        return real_call(op, *args, **kw)

    conn.call = call
    return in_gui_thread
