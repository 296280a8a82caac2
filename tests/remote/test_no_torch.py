"""A laptop without torch: the client side of the remote engine (engine.remote.connect, RemoteTrace, the records that
cross the wire, errors, sampling settings) and the window's start-up modules import and work with torch made
unimportable, against a loopback server (which has torch). `python main.py --version` stays torch-free too
(tests/test_entry.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from engine import Session, load_model

ROOT = Path(__file__).resolve().parents[2]

# what a client-only install looks like: importing torch (or transformers, which needs it) fails
NO_TORCH = '''
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"No module named {name!r} (hidden by the test: a client-only install)")
sys.meta_path.insert(0, _NoTorch())
'''

CLIENT = NO_TORCH + '''
import json
import os
from engine import Cancelled, SamplingSettings, Trace
from engine.remote import RemoteTrace, connect
eng = connect(sys.argv[1], sys.argv[2])
model = eng.load_model("tiny-gpt")
session = eng.Session(model, "In the beginning")
for _ in range(3):
    session.step()
trace = session.trace
stats = eng.head_statistics(model, trace)
inside = eng.inside_head(model, trace, "self", 1, 0, len(trace) - 1)
from pathlib import Path
from engine.export import save_npz
from engine.session_file import read_session_file, save_session
out = Path(sys.argv[3])
save_npz(trace, out / "trace.npz")
saved = read_session_file(save_session(session, out / "session.json"))
print(json.dumps({"ids": session.ids, "tile": trace.attention_tile("self", 1, 0, 0, 4, 0, 4).tolist(),
                  "mirror": isinstance(trace, RemoteTrace) and isinstance(trace, Trace),
                  "stat": type(stats[0]).__name__, "inside": type(inside).__name__, "weights": inside.pattern.tolist(),
                  "torch": "torch" in sys.modules, "local": eng.where(), "saved_history": saved["history"]}))
eng.close()
'''

WINDOW = NO_TORCH + '''
import json, os, time
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from PySide6.QtWidgets import QApplication
app = QApplication([])
from gui.shell.main_window import MainWindow
win = MainWindow()
local_where = win.client.engine.where()
def until(cond, what):
    deadline = time.monotonic() + 120
    while not cond():
        app.processEvents()
        time.sleep(0.01)
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}: errors {win.errors}")
win.open_model("tiny-gpt", prompt="In the beginning")  # on this computer: says what to do instead
until(lambda: not win.client.busy, "the local load to fail")
refused = list(win.errors)
win.remote_engine.connect_to({"address": sys.argv[1], "token": sys.argv[2]})
until(lambda: win.client.engine.remote and not win.client.busy, "the connection")
win.open_model("tiny-gpt", prompt="In the beginning")
until(lambda: win.state.trace is not None and not win.client.busy and not win._chain, "the remote model")
n = len(win.state.trace)
win.token_strip.step()
until(lambda: len(win.state.trace) == n + 1 and not win.client.busy, "the step")
print(json.dumps({"refused": refused, "errors": win.errors[len(refused):], "n": n, "ids": list(win.state.trace.token_ids),
                  "torch": "torch" in sys.modules, "local_where": local_where}))
win.client.shutdown()
'''


def _run(script: str, server, *more: str) -> dict:  # noqa: ANN001
    done = subprocess.run([sys.executable, "-c", script, server.address, server.token, *more], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_client_without_torch_connects_loads_steps_and_reads_a_tile(server, tmp_path):
    got = _run(CLIENT, server, str(tmp_path))
    assert got["torch"] is False and got["mirror"]
    ref = Session(load_model("tiny-gpt", device="cpu"), "In the beginning")
    for _ in range(3):
        ref.step()
    assert got["ids"] == ref.ids
    np.testing.assert_allclose(np.array(got["tile"]), ref.trace.attention_tile("self", 1, 0, 0, 4, 0, 4), rtol=0, atol=1e-5)
    assert got["stat"] == "HeadStat" and got["inside"] == "InsideHead"
    assert [e[1] for e in got["saved_history"]] == ref.ids[-3:]  # a session file written on the torch-free side
    with np.load(tmp_path / "trace.npz") as npz:  # and an export
        np.testing.assert_allclose(npz["decoder.1.attn"], ref.trace.attention("self", 1), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.array(got["weights"]), ref.trace.attention_row("self", 1, len(ref.ids) - 1)[0],
                               rtol=0, atol=1e-5)


def test_the_window_without_torch_says_what_to_do_here_and_works_against_a_server(server):
    got = _run(WINDOW, server)
    assert got["torch"] is False
    assert "torch is not installed" in got["local_where"]
    assert len(got["refused"]) == 1 and "torch is not installed on this computer" in got["refused"][0]
    assert "Connect to engine" in got["refused"][0]
    assert got["errors"] == []
    ref = Session(load_model("tiny-gpt", device="cpu"), "In the beginning")
    ref.step()
    assert got["ids"] == ref.ids and len(got["ids"]) == got["n"] + 1


def test_every_gui_module_and_the_client_side_of_the_engine_import_without_torch():
    """What must not need torch, by module: all of gui/, and every engine module the client side can reach (those
    left out build or run networks: they are torch by nature)."""
    script = NO_TORCH + '''
import importlib, json, pkgutil
import engine, gui
needs_torch = {"engine.cache", "engine.device", "engine.inference_layout", "engine.model", "engine.modules",
               "engine.network", "engine.rotary", "engine.multi_device"}
names = [m.name for pkg in (gui, engine) for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
names = [n for n in names if n not in needs_torch and not n.startswith(("engine.hf_backend", "engine.checkpoints."))]
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        failed[name] = str(exc)
print(json.dumps({"n": len(names), "failed": failed, "torch": "torch" in sys.modules}))
'''
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["failed"] == {} and got["torch"] is False and got["n"] > 90
