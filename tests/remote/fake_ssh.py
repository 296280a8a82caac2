"""A stand-in for `ssh` on this one machine (no sshd here): what OpenSSH does with the options launch.py gives it.

`-L PORT:HOST:PORT` or `-L PORT:/unix/socket` listens on 127.0.0.1:PORT and forwards each connection there (as
ssh forwards to the remote side); a command after the host runs here, its stdout passed through (as ssh runs
it on the remote side), `attention-inspector` meaning this checkout's main.py. Options it does not act on
(-o, -J, -N) are accepted and ignored. Stops when terminated, ending the command too.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pipe(a: socket.socket, b: socket.socket) -> None:
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def forward(listener: socket.socket, target: str) -> None:
    while True:
        client, _ = listener.accept()
        if target.startswith("/"):
            remote = socket.socket(socket.AF_UNIX)
            where: object = target
        else:
            host, port = target.rsplit(":", 1)
            remote, where = socket.socket(), (host, int(port))
        try:
            remote.connect(where)  # as ssh: a connection to nothing is closed at once
        except OSError:
            client.close()
            continue
        for a, b in ((client, remote), (remote, client)):
            threading.Thread(target=pipe, args=(a, b), daemon=True).start()


def main(argv: list[str]) -> int:
    forwards, i = [], 0
    while i < len(argv) and argv[i] != "--":
        if argv[i] == "-L":
            port, target = argv[i + 1].split(":", 1)
            forwards.append((int(port), target))
            i += 2
        elif argv[i] in ("-o", "-J"):
            i += 2
        else:
            i += 1
    command = argv[i + 2:]  # after "--" and the host
    for port, target in forwards:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        threading.Thread(target=forward, args=(listener, target), daemon=True).start()
    child = None
    if command:
        if command[0] == "attention-inspector":
            command = [sys.executable, str(ROOT / "main.py"), *command[1:]]
        child = subprocess.Popen(command, cwd=ROOT)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.2):
        if child is not None and child.poll() is not None:
            return child.returncode
    if child is not None:
        child.terminate()
        child.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
