"""Installed like an app (issue 17): the wheel carries the bundled models, icons and desktop entry; installed
into a fresh venv (not the checkout) `attention-inspector` opens tiny-gpt, prints its version and installs its
desktop entry; the entry validates; a folder given as the first argument is the model.

The wheel test builds with the test venv's setuptools (no build isolation, nothing downloaded) and installs
with --no-deps into a new venv whose only link to .venv is a .pth line naming .venv's site-packages (for torch,
PySide6, …): .pth lines there are not executed, so .venv's editable install of this checkout stays invisible,
and the test checks that `engine` and the models come from the new venv. About 30-60 s on a shared CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import main
from gui.shell import desktop

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("tiny-gpt", "tiny-bert", "tiny-seq2seq")
SOURCES = ("pyproject.toml", "README.md", "main.py", "attention_inspector", "engine", "gui", "resources")


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_package_is_listed_in_pyproject():
    from setuptools import find_packages

    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = set(find_packages(str(ROOT), include=["attention_inspector*", "engine*", "gui*"]))
    assert found - listed == set(), "add these packages to [tool.setuptools] packages in pyproject.toml"
    assert "attention_inspector_resources" in listed


def test_a_first_argument_that_is_no_command_is_the_model():
    args = main.build_parser().parse_args(main._folder_first(["/data/my checkpoint", "--steps", "2"]))
    assert (args.model, args.steps, args.command) == ("/data/my checkpoint", 2, None)
    assert main.build_parser().parse_args(main._folder_first([])).model == main.DEFAULT_MODEL
    exp = main.build_parser().parse_args(main._folder_first(["export", "--model", "tiny-bert", "--out", "x.npz"]))
    assert (exp.command, exp.model) == ("export", "tiny-bert")


def test_desktop_entry_installs_under_xdg_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    command = ["/opt/my apps/bin/attention-inspector"]
    written = desktop.install_desktop_entry(command=command)
    entry = tmp_path / "data" / "applications" / "attention-inspector.desktop"
    assert entry in written
    text = entry.read_text(encoding="utf-8")
    assert 'Exec="/opt/my apps/bin/attention-inspector" %f' in text
    assert "TryExec=/opt/my apps/bin/attention-inspector" in text
    assert "Icon=attention-inspector" in text and "MimeType=inode/directory;" in text
    icons = tmp_path / "data" / "icons" / "hicolor"
    assert (icons / "scalable" / "apps" / "attention-inspector.svg").is_file()
    for n in (16, 32, 48, 64, 128, 256, 512):
        png = icons / f"{n}x{n}" / "apps" / "attention-inspector.png"
        assert _png_size(png) == (n, n)
    validate = shutil.which("desktop-file-validate")
    if validate:  # Debian's desktop-file-utils
        done = subprocess.run([validate, str(entry)], capture_output=True, text=True)
        assert done.returncode == 0 and "error" not in done.stdout, done.stdout
    removed = desktop.uninstall_desktop_entry()
    assert set(removed) == set(written) and not entry.exists()


def test_relative_xdg_data_home_is_ignored(monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", "relative/share")
    assert desktop.data_home() == Path.home() / ".local" / "share"


def test_exec_arguments_are_quoted_as_the_spec_asks():
    assert desktop._exec_argument("/usr/bin/attention-inspector") == "/usr/bin/attention-inspector"
    assert desktop._exec_argument('/a b/"x"$') == '"/a b/\\"x\\"\\$"'
    assert desktop._exec_argument("/100%/ai") == "/100%%/ai"


def test_window_icon_has_every_size(qapp):
    sizes = {s.width() for s in desktop.app_icon().availableSizes()}
    assert {16, 32, 48, 256, 512} <= sizes


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def _build_wheel(tmp: Path) -> Path:
    """A wheel built from a copy of the sources (a build in place would leave build/ in the checkout)."""
    try:
        import setuptools  # noqa: F401 - the backend, used without build isolation
    except ImportError:
        pytest.skip("setuptools is not installed in the test venv: cannot build a wheel offline")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    out = tmp / "wheel"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(out)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "No module named pip" in done.stderr:
        pytest.skip("pip is not installed in the test venv")
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = out.glob("attention_inspector-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A new venv with the wheel installed (--no-deps) and the test venv's packages visible through a .pth."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "test-venv-deps.pth").write_text(sysconfig.get_path("purelib") + "\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                           "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


@pytest.mark.packaging
def test_wheel_installs_and_opens_tiny_gpt_outside_the_checkout(tmp_path):
    if sys.platform != "linux":
        pytest.skip("the venv layout and offscreen Qt checked here are Linux's")
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in MODELS:
        for f in ("config.json", "model.safetensors", "tokenizer.json"):
            assert f"attention_inspector_resources/models/{model}/{f}" in names
    assert "attention_inspector_resources/attention-inspector.desktop" in names
    assert {"attention_inspector/__main__.py", "attention_inspector/version.py", "main.py"} <= names
    assert "attention_inspector_resources/icons/hicolor/256x256/apps/attention-inspector.png" in names
    assert not any(n.startswith(("tests/", "tools/")) for n in names)

    venv = _fresh_venv(tmp_path, wheel)
    user = tmp_path / "elsewhere"  # a person's folder: not the checkout, no resources/ beside it
    user.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DISPLAY", "WAYLAND_DISPLAY")}
    env.update(QT_QPA_PLATFORM="offscreen", HOME=str(user), XDG_DATA_HOME=str(user / "share"),
               XDG_CONFIG_HOME=str(user / "config"), HF_HUB_OFFLINE="1")
    app = venv / "bin" / "attention-inspector"

    where = subprocess.run(  # found, not imported (importing engine takes torch's seconds)
        [str(venv / "bin" / "python"), "-c", "import json, importlib.util as u; print(json.dumps("
         "[u.find_spec(m).origin for m in ('main', 'engine', 'gui', 'attention_inspector_resources')]))"],
        cwd=user, env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr[-3000:]
    for path in json.loads(where.stdout):
        assert Path(path).is_relative_to(venv), f"{path} is not from the installed wheel"

    version = subprocess.run([str(app), "--version"], cwd=user, env=env, capture_output=True, text=True, timeout=120)
    assert version.returncode == 0, version.stderr[-3000:]
    assert version.stdout.splitlines()[0] == f"attention-inspector {_pyproject()['project']['version']}"
    assert "torch " in version.stdout
    as_module = subprocess.run([str(venv / "bin" / "python"), "-m", "attention_inspector", "--version"], cwd=user, env=env,
                               capture_output=True, text=True, timeout=120)
    assert as_module.returncode == 0 and as_module.stdout == version.stdout, as_module.stderr[-3000:]

    shot = subprocess.run([str(app), "--screenshot", "out.png", "--steps", "2", "--prompt", "In the beginning"],
                          cwd=user, env=env, capture_output=True, text=True, timeout=180)
    assert shot.returncode == 0, shot.stderr[-3000:]  # 0: saved, and the window shows no error
    assert "loaded tiny-gpt (gpt2" in shot.stderr, shot.stderr[-3000:]
    png = user / "out.png"
    assert _png_size(png) == (1400, 900) and png.stat().st_size > 30_000  # a blank window compresses to a few KB

    installed = subprocess.run([str(app), "--install-desktop-entry"], cwd=user, env=env, capture_output=True,
                               text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr[-3000:]
    entry = (user / "share" / "applications" / "attention-inspector.desktop").read_text(encoding="utf-8")
    assert f"Exec={app} %f" in entry
    assert (user / "share" / "icons" / "hicolor" / "48x48" / "apps" / "attention-inspector.png").is_file()


def test_about_shows_the_version_and_the_engine(qapp, monkeypatch):
    from engine.about import app_version, engine_versions
    from gui.shell import main_window

    shown = []
    monkeypatch.setattr(main_window.QMessageBox, "about", lambda parent, title, text: shown.append(text))
    from types import SimpleNamespace

    from engine.local import LocalEngine

    window = SimpleNamespace(client=SimpleNamespace(engine=LocalEngine()), state=SimpleNamespace(model=None))
    main_window.MainWindow.show_about(window)
    versions = engine_versions()
    assert app_version() in shown[0] and f"torch {versions['torch']}" in shown[0] and versions["device"] in shown[0]
    assert "Models run on: this computer" in shown[0]  # a remote engine says its host instead (issue 27)
    # an open model: where its layers are (over several devices: which on each)
    window.state.model = SimpleNamespace(name="big", placement="cuda:0 layers 0–1 · cpu layers 2–3")
    main_window.MainWindow.show_about(window)
    assert "big: cuda:0 layers 0–1 · cpu layers 2–3" in shown[1]
