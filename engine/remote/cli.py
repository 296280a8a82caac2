"""`attention-inspector serve`: run the engine server on this machine (next to its GPUs).

Its first line on stdout is how to reach it: `connect: HOST:PORT token=…` (with --token-file, the file
that holds the token instead of the token itself). It listens on 127.0.0.1 unless --bind says otherwise:
reach it from a laptop through an SSH tunnel (`ssh -L 5555:127.0.0.1:5555 server`), which also encrypts
what crosses; the messages themselves are only signed.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for d in args.models_dir:
        if not d.expanduser().is_dir():
            sys.stderr.write(f"error: --models-dir {d} is not a folder\n")
            return 2
    token = read_or_make_token(args.token_file)
    if args.bind not in LOOPBACK:
        log.warning("listening on %s: anyone who can reach it can try to connect, and what crosses is signed but "
                    "NOT encrypted; prefer the default 127.0.0.1 with an SSH tunnel", args.bind)
    from .delta import MIRROR_LIMIT
    from .server import EngineServer

    limit = MIRROR_LIMIT if args.mirror_limit is None else int(args.mirror_limit * 2**20)
    if limit < 0:
        sys.stderr.write("error: --mirror-limit is a size in MB, 0 or more\n")
        return 2
    server = EngineServer(token, bind=args.bind, port=args.port, models_dirs=tuple(args.models_dir), mirror_limit=limit)
    secret = f"token-file={args.token_file}" if args.token_file else f"token={token}"
    sys.stdout.write(f"connect: {args.bind}:{server.port} {secret}\n")
    sys.stdout.flush()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.stop())
    log.info("engine server %s on %s:%d (models: bundled, the HF cache%s)", server.app_version, args.bind, server.port,
             "".join(f", {d}" for d in server.models_dirs))
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
