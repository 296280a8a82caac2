"""Attention Inspector: step through transformer generation and inspect every layer's and head's attention.

    python main.py                                  open the app on the bundled tiny-gpt
    attention-inspector FOLDER                      open a checkpoint folder (what the desktop entry passes; = --model)
    python main.py --model FOLDER --prompt "…"      open a checkpoint folder with a prompt
    python main.py --prompt-file document.txt       a long prompt read from a text file
    python main.py --screenshot out.png --steps 5   render the window after 5 steps, save it, exit
    python main.py export --model M --prompt P --steps N --out trace.npz   headless export
    attention-inspector --install-desktop-entry     add the app to the desktop's menus (and --version)
    attention-inspector serve [--port N]            run the engine here for a window elsewhere (docs/remote-engine.md)
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("attention_inspector")

DEFAULT_MODEL = "tiny-gpt"


def _common(p: argparse.ArgumentParser, sub: bool = False) -> None:
    """The options every command takes. On a subcommand they default to SUPPRESS, so an option given
    before the subcommand's name is not overwritten by the subcommand's default."""
    d = (lambda value: argparse.SUPPRESS) if sub else (lambda value: value)
    p.add_argument("--model", default=d(DEFAULT_MODEL),
                   help="bundled model name (tiny-gpt, tiny-bert, tiny-seq2seq), checkpoint folder, or HF cache id "
                        f"(default: {DEFAULT_MODEL})")
    p.add_argument("--prompt", default=d(None), help="prompt text (decoder prefix for encoder-decoder models)")
    p.add_argument("--prompt-file", default=d(None), metavar="FILE.txt",
                   help="read the prompt from a UTF-8 text file (a long document), instead of --prompt")
    p.add_argument("--source", default=d(None), help="source text for the encoder of an encoder-decoder model")
    p.add_argument("--steps", type=int, default=d(0), help="generation steps to take after the prompt (default: 0)")
    p.add_argument("--device", default=d(None), help="cpu, cuda, cuda:1 …, or auto: a model too big for one GPU "
                   "spread over the GPUs, then the CPU (default: CUDA when present, else CPU)")
    p.add_argument("--dtype", default=d(None), choices=["float32", "float16", "bfloat16"], help="weights dtype (default float32)")
    p.add_argument("--allow-pickle", action="store_true", default=d(False), help="allow pytorch_model.bin (weights_only) checkpoints")
    p.add_argument("--backend", default=d("auto"), choices=["auto", "native", "transformers"],
                   help="auto: the native engine for the architectures it converts, transformers' own model classes "
                        "for every other one it knows; or force one (default: auto)")
    p.add_argument("--trust-remote-code", action="store_true", default=d(False),
                   help="allow a checkpoint's own code (auto_map in config.json): its .py files run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attention-inspector", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(parser)
    parser.add_argument("--screenshot", metavar="FILE.png", help="render the window after the steps, save it and exit")
    parser.add_argument("--size", metavar="WxH", help="window size, e.g. 1366x768 (default: the last one used; "
                        "1400x900 for --screenshot)")
    parser.add_argument("--dock", metavar="NAME", help="bring a dock to the front: inside, attribution, embeddings "
                        "(the \"Inside this head\" tabs), lens, stats, experts")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="store_true",
                        help="print the version (and torch's, without importing it; with -v also the default device) and exit")
    parser.add_argument("--install-desktop-entry", action="store_true",
                        help="put the app's menu entry and icon in $XDG_DATA_HOME (default ~/.local/share) and exit")
    parser.add_argument("--uninstall-desktop-entry", action="store_true", help="remove them again and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    exp = sub.add_parser("export", help="run headless and write tokens, every attention pattern and the logits to .npz")
    _common(exp, sub=True)
    exp.add_argument("--out", required=True, metavar="FILE.npz", help="output file")
    heads = sub.add_parser("heads", help="print head statistics (entropy, previous-token, induction, sink)")
    _common(heads, sub=True)
    heads.add_argument("--json", action="store_true", help="print a JSON list of objects")
    return parser


def _session(args: argparse.Namespace):
    from engine import Session, load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle,
                       backend=args.backend, trust_remote_code=args.trust_remote_code)
    if model.family == "encoder-decoder":
        source = args.source if args.source is not None else (args.prompt or "")
        prompt = args.prompt if args.source is not None else None
        session = Session(model, prompt, source=source)
    else:
        session = Session(model, args.prompt if args.prompt is not None else "")
    for _ in range(args.steps):
        if session.finished:
            break
        session.step()
    return model, session


def cmd_export(args: argparse.Namespace) -> int:
    from engine.export import save_npz

    _, session = _session(args)
    path = save_npz(session.trace, args.out)
    log.info("wrote %s", path)
    return 0


def cmd_heads(args: argparse.Namespace) -> int:
    import json

    from engine.analysis import head_statistics

    model, session = _session(args)
    stats = head_statistics(model, session.trace)
    if args.json:
        sys.stdout.write(json.dumps([s.as_dict() for s in stats], indent=1) + "\n")
    else:
        cols = ("kind", "layer", "head", "entropy", "prev_token", "induction", "sink", "distance")
        sys.stdout.write(" ".join(f"{c:>10}" for c in cols) + "\n")
        for s in stats:
            d = s.as_dict()
            sys.stdout.write(" ".join(f"{d[c]:>10.3f}" if isinstance(d[c], float) else f"{d[c]:>10}" for c in cols) + "\n")
    return 0


COMMANDS = ("export", "heads")


def _folder_first(argv: list[str]) -> list[str]:
    """`attention-inspector FOLDER [options]` (a file manager's "Open with") means `--model FOLDER`: a first
    argument that is neither an option nor a command names the model."""
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        return ["--model", argv[0], *argv[1:]]
    return argv


def _desktop(args: argparse.Namespace) -> int:
    from gui.shell.desktop import install_desktop_entry, uninstall_desktop_entry

    if args.uninstall_desktop_entry:
        removed = uninstall_desktop_entry()
        sys.stdout.write("".join(f"removed {p}\n" for p in removed) or "nothing to remove\n")
        return 0
    for path in install_desktop_entry():
        sys.stdout.write(f"installed {path}\n")
    return 0


def read_prompt_file(args: argparse.Namespace) -> str | None:
    """--prompt-file into args.prompt; returns what went wrong, or None."""
    from pathlib import Path

    path = getattr(args, "prompt_file", None)
    if not path:
        return None
    if getattr(args, "prompt", None) is not None:
        return "give either --prompt or --prompt-file, not both"
    try:
        args.prompt = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"cannot read the prompt file {path}: {exc}"
    log.info("prompt from %s: %d characters", path, len(args.prompt))
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # the engine server (engine/remote/cli.py): its own options, no window
        from engine.remote.cli import main as serve

        return serve(argv[1:])
    args = build_parser().parse_args(_folder_first(argv))
    if args.version:  # without torch (seconds to import) unless --verbose asks for the device too
        if args.verbose:
            from engine.about import version_text
        else:
            from attention_inspector.version import version_text

        sys.stdout.write(version_text())
        return 0
    if args.install_desktop_entry or args.uninstall_desktop_entry:
        return _desktop(args)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    problem = read_prompt_file(args)
    if problem:
        sys.stderr.write(f"error: {problem}\n")
        return 2
    if args.command in ("export", "heads"):
        from engine import EngineError

        try:
            return cmd_export(args) if args.command == "export" else cmd_heads(args)
        except (EngineError, OSError) as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 2
    from gui.shell.cpu_share import share_blas_with_ui

    share_blas_with_ui()  # before anything imports numpy: its BLAS must leave the window a core
    from gui.shell.app import run_app

    return run_app(args)


if __name__ == "__main__":
    sys.exit(main())
