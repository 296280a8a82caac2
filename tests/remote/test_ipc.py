"""`serve --ipc`: a unix socket in a fresh private folder (mode 700), its `connect: ipc:///…` line, a client on the
same machine through it, and a laptop's ssh forwarding a local port to it (`ssh -L PORT:/path/engine.sock`)."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import Session, load_model
from engine.remote import connect
from engine.remote.launch import open_remote, parse_connect_line, ssh_serve_command, ssh_tunnel_command

from .conftest import Server

FAKE_SSH = [sys.executable, str(Path(__file__).with_name("fake_ssh.py"))]


def _same_as_in_process(eng) -> None:  # noqa: ANN001
    model = eng.load_model("tiny-gpt")
    session = eng.Session(model, "In the beginning")
    for _ in range(3):
        session.step()
    ref = Session(load_model("tiny-gpt", device="cpu"), "In the beginning")
    for _ in range(3):
        ref.step()
    assert session.ids == ref.ids
    np.testing.assert_allclose(session.trace.attention("self", 1), ref.trace.attention("self", 1), rtol=0, atol=1e-5)
    np.testing.assert_allclose(session.trace.attention_tile("self", 1, 0, 0, 4, 0, 4),
                               ref.trace.attention_tile("self", 1, 0, 0, 4, 0, 4),
                               rtol=0, atol=1e-5)


def test_serve_ipc_listens_in_a_fresh_private_folder_and_answers(tmp_path):
    server = Server(tmp_path, extra_args=["--ipc"])
    try:
        assert server.address.startswith("ipc:///")
        sock = Path(server.address.removeprefix("ipc://"))
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        eng = connect(server.address, token=server.token)
        try:
            _same_as_in_process(eng)
        finally:
            eng.close()
    finally:
        server.stop()
    assert not sock.parent.exists()  # removed with the server


def test_serve_ipc_path_makes_its_folder_and_refuses_one_that_exists(tmp_path):
    path = tmp_path / "fresh" / "engine.sock"
    server = Server(tmp_path, extra_args=["--ipc", str(path)])
    try:
        assert server.address == f"ipc://{path}"
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        eng = connect(server.address, token=server.token)
        assert eng.load_model("tiny-gpt").n_layers > 0
        eng.close()
    finally:
        server.stop()
    taken = tmp_path / "taken"
    taken.mkdir()
    done = subprocess.run([sys.executable, "-m", "engine.remote.cli", "--ipc", str(taken / "engine.sock")],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode != 0 and "exists already" in done.stderr and "connect:" not in done.stdout


def test_ssh_forwards_a_local_port_to_the_socket():
    cmd = ssh_tunnel_command("gpu", 5555, None, remote_socket="/tmp/ai-x/engine.sock")
    assert cmd[cmd.index("-L") + 1] == "5555:/tmp/ai-x/engine.sock"
    serve = ssh_serve_command("gpu", 6000, local_port=5555, remote_socket="/tmp/ai-x/engine.sock")
    assert serve[serve.index("--") + 1:] == ["gpu", "attention-inspector", "serve", "--ipc", "/tmp/ai-x/engine.sock"]
    with pytest.raises(Exception, match="socket path"):
        ssh_tunnel_command("gpu", 1, None, remote_socket="relative/engine.sock")
    with pytest.raises(Exception, match="did not print its connect line"):
        parse_connect_line("connect: ipc:///tmp/a b/engine.sock token=abc")  # serve --ipc refuses such a path
    assert parse_connect_line("connect: ipc:///tmp/ai-x/engine.sock token=abc") == ("ipc:///tmp/ai-x/engine.sock", "abc",
                                                                                     None)


def test_open_remote_starts_an_ipc_server_through_ssh_and_reaches_it(tmp_path):
    """The whole path a laptop takes with "start the server there" and a unix socket, with a stand-in for ssh that
    does what OpenSSH does with these options (see fake_ssh.py)."""
    fake = tmp_path / "ssh"
    fake.write_text(f"#!/bin/sh\nexec {FAKE_SSH[0]} {FAKE_SSH[1]} \"$@\"\n")
    fake.chmod(0o755)
    eng = open_remote(ssh_host="gpu-box", start_server=True, remote_socket=True, ssh=str(fake))
    try:
        forward = eng.tunnel.cmd[eng.tunnel.cmd.index("-L") + 1]
        local, path = forward.split(":", 1)
        assert eng.address == f"127.0.0.1:{local}" and path.startswith("/tmp/attention-inspector-")
        assert eng.tunnel.cmd[-2:] == ["--ipc", path]
        _same_as_in_process(eng)
    finally:
        eng.close()
    assert not Path(path).parent.exists()  # the server went with the ssh, and its folder with it


def test_the_connect_dialog_takes_a_pasted_ipc_line(qtbot):
    from gui.shell.connect_dialog import ConnectDialog

    dialog = ConnectDialog(None, "this computer", {})
    qtbot.addWidget(dialog)
    dialog.address.setText("connect: ipc:///tmp/attention-inspector-k2x9/engine.sock token=6f1cabc")
    assert dialog.target() == {"address": "ipc:///tmp/attention-inspector-k2x9/engine.sock", "token": "6f1cabc"}


def test_the_connect_dialog_asks_for_a_unix_socket_when_it_starts_the_server(qtbot):
    from gui.shell.connect_dialog import ConnectDialog

    dialog = ConnectDialog(None, "this computer", {"ssh_host": "gpu-box", "start_server": True})
    qtbot.addWidget(dialog)
    assert dialog.tabs.currentIndex() == 1 and dialog.unix_socket.isEnabled()
    dialog.unix_socket.setChecked(True)
    assert dialog.target()["remote_socket"] is True and dialog.target()["start_server"] is True
    assert not dialog.port.isEnabled()  # a socket has no port
    dialog.start_server.setChecked(False)  # a server already running: its port, as typed
    assert not dialog.unix_socket.isEnabled() and dialog.target()["remote_socket"] is False and dialog.port.isEnabled()
