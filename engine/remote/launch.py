"""Starting a server: as a child process on this machine (tests, benchmarks, "run the engine beside the
window"), or on another machine through the system `ssh`, with the tunnel that reaches it.

The ssh commands are built here as argument lists (never a shell string), so a host name cannot inject
anything; `ssh -L` forwards a local port to the server's 127.0.0.1, with ServerAliveInterval so a dead
link is noticed, and ExitOnForwardFailure so a port already in use is an error, not a silent tunnel to
nowhere.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import select
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .protocol import RemoteEngineError

log = logging.getLogger(__name__)

CONNECT_LINE = re.compile(r"^connect: (?P<address>ipc://\S+|\S+:\d+) (?:token=(?P<token>\S+)|token-file=(?P<file>.+))$")
SERVER_START_S = 60.0  # importing torch on a cold disk takes a while
ALIVE_INTERVAL_S = 15
DEFAULT_PORT = 5555


def parse_connect_line(line: str) -> tuple[str, str | None, str | None]:
    """"connect: HOST:PORT token=…" (or "connect: ipc:///path token=…") -> (address, token, token file);
    RemoteEngineError for anything else."""
    m = CONNECT_LINE.match(line.strip())
    if m is None:
        raise RemoteEngineError(f"the server did not print its connect line (it printed {line.strip()[:200]!r})")
    return m["address"], m["token"], m["file"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_server(port: int = 0, token_file: Path | None = None, models_dirs: Sequence[Path] = (),
                 python: str = sys.executable, stderr: object = None, env: dict | None = None,
                 timeout: float = SERVER_START_S, device: str | None = None,
                 extra_args: Sequence[str] = ()) -> tuple[subprocess.Popen, str, str]:
    """Start `python -m engine.remote.cli` here and wait for its connect line -> (process, address, token).
    `device`: its --device (where a load that names none goes; "auto": spread over the GPUs, then the CPU);
    `extra_args`: more `serve` options (--trust-remote-code, --ipc, --mirror-limit MB)."""
    cmd = [python, "-m", "engine.remote.cli", "--port", str(port), *extra_args]
    if device is not None:
        cmd += ["--device", device]
    if token_file is not None:
        cmd += ["--token-file", str(token_file)]
    for d in models_dirs:
        cmd += ["--models-dir", str(d)]
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=root,
                            env={**os.environ, **(env or {})})
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        raise RemoteEngineError(f"the engine server did not start within {timeout:.0f} s")
    line = proc.stdout.readline()
    if not line:
        proc.wait(5)
        raise RemoteEngineError(f"the engine server exited at start (status {proc.returncode})")
    address, token, file = parse_connect_line(line)
    if token is None:
        token = Path(file).read_text(encoding="utf-8").strip()
    return proc, address, token


def ssh_tunnel_command(host: str, local_port: int, remote_port: int | None, jump: str | None = None,
                       ssh: str = "ssh", remote_socket: str | None = None) -> list[str]:
    """`ssh -N -L local:127.0.0.1:remote host`: the laptop's local_port reaches the server's loopback port; with
    `remote_socket`, `-L local:/path/engine.sock`: it reaches the unix socket of a server started with --ipc."""
    _check_host(host)
    target = f"127.0.0.1:{int(remote_port)}" if remote_socket is None else _check_socket(remote_socket)
    cmd = [ssh, "-N", "-o", f"ServerAliveInterval={ALIVE_INTERVAL_S}", "-o", "ServerAliveCountMax=3",
           "-o", "ExitOnForwardFailure=yes", "-L", f"{int(local_port)}:{target}"]
    if jump:
        _check_host(jump)
        cmd += ["-J", jump]
    return [*cmd, "--", host]


def ssh_serve_command(host: str, remote_port: int, jump: str | None = None, ssh: str = "ssh",
                      local_port: int | None = None, remote_socket: str | None = None) -> list[str]:
    """Start `attention-inspector serve` on `host` (installed there) and forward its port in the same ssh, so
    closing the ssh stops both. The server's connect line (with the token) comes back on ssh's stdout: the
    token never appears on a command line. With `remote_socket` (a path whose folder does not exist yet) the
    server listens there (`serve --ipc PATH`: no TCP port at all on the server) and ssh forwards to it."""
    cmd = ssh_tunnel_command(host, local_port or remote_port, remote_port, jump, ssh, remote_socket)
    cmd.remove("-N")
    listen = ["--port", str(int(remote_port))] if remote_socket is None else ["--ipc", remote_socket]
    return [*cmd, "attention-inspector", "serve", *listen]


def fresh_remote_socket() -> str:
    """A socket path for `serve --ipc` on another machine: a new folder name under /tmp (the server makes it, mode
    700, and refuses if it exists: nobody can have put one there first)."""
    return f"/tmp/attention-inspector-{secrets.token_hex(8)}/engine.sock"


def open_remote(address: str | None = None, token: str | None = None, ssh_host: str | None = None,
                jump: str | None = None, remote_port: int = DEFAULT_PORT, start_server: bool = False,
                ssh: str = "ssh", remote_socket: str | bool | None = None) -> Any:
    """A RemoteEngine reached either at `address` with `token` (a port already forwarded, or an ipc:// address),
    or through an ssh tunnel to `ssh_host` (optionally via `jump`) to its 127.0.0.1:`remote_port` (or to the
    unix socket `remote_socket` of a server started with --ipc; True with `start_server`: a fresh one), starting
    the server there first when `start_server`. The tunnel closes with the engine."""
    from .client import connect

    tunnel = None
    if ssh_host:
        local = free_port()
        if remote_socket is True:
            if not start_server:
                raise RemoteEngineError("name the server's socket path (its `connect: ipc://…` line), or start the server")
            remote_socket = fresh_remote_socket()
        socket_path = remote_socket or None
        cmd = (ssh_serve_command(ssh_host, remote_port, jump, ssh, local_port=local, remote_socket=socket_path)
               if start_server else ssh_tunnel_command(ssh_host, local, remote_port, jump, ssh, socket_path))
        tunnel = Tunnel(cmd, local)
        try:
            if start_server:
                token = tunnel.read_token()
            tunnel.wait_ready()
        except BaseException:
            tunnel.stop()
            raise
        address = f"127.0.0.1:{local}"
    if not address or not token:
        raise RemoteEngineError("give the server's address and token (its `connect:` line), or an SSH host")
    try:
        eng = connect(address.strip(), token.strip())
    except BaseException:
        if tunnel is not None:
            tunnel.stop()
        raise
    eng.tunnel = tunnel
    return eng


def _check_socket(path: str) -> str:
    path = path.removeprefix("ipc://")
    if not path.startswith("/") or ":" in path or any(c.isspace() for c in path):
        raise RemoteEngineError(f"{path!r} is not a socket path ssh can forward to (absolute, without ':' or spaces)")
    return path


def _check_host(host: str) -> None:
    if not host or host.startswith("-") or any(c.isspace() for c in host):
        raise RemoteEngineError(f"{host!r} is not an ssh host name (user@host, or a Host from ~/.ssh/config)")


class Tunnel:
    """A running `ssh -L` (or ssh that also starts the server): wait until the local port answers, stop it."""

    def __init__(self, cmd: list[str], local_port: int) -> None:
        self.cmd, self.local_port = cmd, local_port
        log.info("starting %s", " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() or "").strip()
                raise RemoteEngineError(f"ssh exited (status {self.proc.returncode}): {err[-500:] or 'no message'}")
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", self.local_port)) == 0:
                    return
            time.sleep(0.2)
        self.stop()
        raise RemoteEngineError(f"the ssh tunnel did not open port {self.local_port} within {timeout:.0f} s")

    def read_token(self, timeout: float = SERVER_START_S) -> str:
        """The token from the connect line a server started through this ssh printed."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.stop()
            raise RemoteEngineError("the server did not start on the remote host (is attention-inspector installed "
                                    f"there, on the PATH of a non-interactive shell?) {err.strip()[-300:]}")
        _, token, _ = parse_connect_line(line)
        if token is None:
            raise RemoteEngineError("the remote server printed a token file, not a token")
        return token

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
