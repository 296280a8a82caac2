"""The command line's cheap paths: `--version` answers without importing torch (importing it takes seconds),
`python -m attention_inspector` is main.py's command line, and `--version --verbose` adds the engine's device."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_version_does_not_import_torch_or_the_engine():
    probe = ("import sys, main; main.main(['--version']); "
             "print(sorted(m for m in ('torch', 'engine', 'gui', 'numpy', 'PySide6') if m in sys.modules))")
    done = _run("-c", probe)
    assert done.returncode == 0, done.stderr
    first, second, imported = done.stdout.splitlines()
    assert first.startswith("attention-inspector ") and first.split()[1][0].isdigit()
    assert second.startswith("torch ") and ", Python " in second
    assert imported == "[]"


def test_python_dash_m_is_the_same_command_line():
    as_script = _run("main.py", "--version")
    as_module = _run("-m", "attention_inspector", "--version")
    assert as_script.returncode == as_module.returncode == 0, as_module.stderr
    assert as_module.stdout == as_script.stdout
    helped = _run("-m", "attention_inspector", "--help")
    assert helped.returncode == 0 and "usage: attention-inspector" in helped.stdout and "export" in helped.stdout


def test_version_matches_the_engine_and_verbose_adds_the_device():
    from attention_inspector.version import app_version, installed_version
    from engine.about import engine_versions

    assert installed_version("torch") == engine_versions()["torch"]  # metadata agrees with torch.__version__
    verbose = _run("main.py", "--version", "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    assert verbose.stdout.splitlines()[0] == f"attention-inspector {app_version()}"
    assert "default device " in verbose.stdout
    assert installed_version("no-such-distribution-here") == "not installed"
