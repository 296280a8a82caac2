"""`attention-inspector serve`: run the engine server on this machine (next to its GPUs).

Its first line on stdout is how to reach it: `connect: HOST:PORT token=…` (with --token-file, the file
that holds the token instead of the token itself). It listens on 127.0.0.1 unless --bind says otherwise:
reach it from a laptop through an SSH tunnel (`ssh -L 5555:127.0.0.1:5555 server`), which also encrypts
what crosses; the messages themselves are only signed.

With --ipc it listens on a unix socket instead, in a private folder made fresh for it (mode 700; other users
cannot reach it): `connect: ipc:///tmp/attention-inspector-…/engine.sock token=…`. A client on the same
machine connects to that address; from a laptop, `ssh -L 5555:/that/path server` forwards a local port to it.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("attention_inspector.serve")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attention-inspector serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0, help="TCP port to listen on (default: a free one, printed)")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on (default 127.0.0.1; anything else is reachable unencrypted unless tunnelled)")
    p.add_argument("--token-file", metavar="PATH", type=Path,
                   help="read the token from PATH, or write a new one there (mode 600) when it does not exist")
    p.add_argument("--models-dir", metavar="FOLDER", type=Path, action="append", default=[],
                   help="a folder whose checkpoint folders clients may open (repeatable); besides these, only the "
                        "bundled models and this machine's Hugging Face cache")
    p.add_argument("--device", default=None, metavar="DEVICE",
                   help="where a model goes when the client names no device: cpu, cuda, cuda:1, or auto (a model too "
                        "big for one GPU is spread over the GPUs in order, then the CPU, by their free memory; "
                        "default: CUDA when present, else the CPU)")
    p.add_argument("--ipc", nargs="?", const="", metavar="PATH",
                   help="listen on a unix socket instead of a TCP port: at PATH, whose folder must not exist yet and is "
                        "made private (mode 700), or without PATH in a fresh private folder under the temp dir")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let clients open checkpoints that bring their own code (auto_map in config.json), which then "
                        "runs on this machine; without it such checkpoints are refused whatever the client asks")
    p.add_argument("--mirror-limit", metavar="MB", type=float, default=None,
                   help="mirror a trace's whole record (queries, keys: a browsable copy if the server dies) to the client "
                        "while it is at most MB megabytes (default 64); past it, patterns stay here and the client asks "
                        "for what it draws. 0: always keep them here")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return p


def read_or_make_token(path: Path | None) -> str:
    if path is not None and path.exists():
        token = path.read_text(encoding="utf-8").strip()
        if len(token) < 16:
            raise SystemExit(f"error: the token in {path} is shorter than 16 characters; delete the file for a new one")
        return token
    token = secrets.token_hex(24)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
    return token


IPC_PATH_MAX = 100  # a unix socket's path must fit sun_path (108 bytes on Linux, 104 on macOS)


def private_socket_path(path: str) -> tuple[Path, Path]:
    """--ipc's socket path and the folder made for it (removed at exit): fresh, mode 700, so no other user can
    reach the socket or have put something there first. SystemExit with what to do when that cannot be."""
    if path:
        if any(c.isspace() for c in path) or ":" in path:
            raise SystemExit(f"error: --ipc {path!r}: name a socket path without spaces or ':' (clients and ssh read it)")
        sock = Path(path).expanduser().absolute()
        folder = sock.parent
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            raise SystemExit(f"error: --ipc makes a fresh private folder for its socket, and {folder} exists already; "
                             "name a socket in a folder that does not exist yet (or give --ipc alone)") from None
        except OSError as exc:
            raise SystemExit(f"error: cannot make the folder for --ipc: {exc}") from None
        os.chmod(folder, 0o700)  # whatever the umask
    else:
        folder = Path(tempfile.mkdtemp(prefix="attention-inspector-"))  # mode 700, a new name
        sock = folder / "engine.sock"
    if len(str(sock).encode()) > IPC_PATH_MAX:
        shutil.rmtree(folder, ignore_errors=True)
        raise SystemExit(f"error: the socket path {sock} is longer than {IPC_PATH_MAX} bytes (a unix socket limit); "
                         "name a shorter one")
    return sock, folder


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for d in args.models_dir:
        if not d.expanduser().is_dir():
            sys.stderr.write(f"error: --models-dir {d} is not a folder\n")
            return 2
    token = read_or_make_token(args.token_file)
    ipc_path, ipc_folder = private_socket_path(args.ipc) if args.ipc is not None else (None, None)
    if args.bind not in LOOPBACK and ipc_path is None:
        log.warning("listening on %s: anyone who can reach it can try to connect, and what crosses is signed but "
                    "NOT encrypted; prefer the default 127.0.0.1 with an SSH tunnel", args.bind)
    from .delta import MIRROR_LIMIT
    from .server import EngineServer

    limit = MIRROR_LIMIT if args.mirror_limit is None else int(args.mirror_limit * 2**20)
    if limit < 0:
        sys.stderr.write("error: --mirror-limit is a size in MB, 0 or more\n")
        return 2
    try:
        server = EngineServer(token, bind=args.bind, port=args.port, models_dirs=tuple(args.models_dir), device=args.device,
                              trust_remote_code=args.trust_remote_code, ipc_path=ipc_path,
                              mirror_limit=limit)
        secret = f"token-file={args.token_file}" if args.token_file else f"token={token}"
        sys.stdout.write(f"connect: {server.endpoint} {secret}\n")
        sys.stdout.flush()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: server.stop())
        log.info("engine server %s on %s (models: bundled, the HF cache%s%s)", server.app_version, server.endpoint,
                 "".join(f", {d}" for d in server.models_dirs),
                 "; runs checkpoint code when a client asks" if args.trust_remote_code else "")
        server.serve_forever()
    finally:
        if ipc_folder is not None:
            shutil.rmtree(ipc_folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
