"""The app on a desktop: its icon (for the window) and the freedesktop entry that puts it in the menus.

`attention-inspector --install-desktop-entry` copies the entry shipped in the resources package into
$XDG_DATA_HOME/applications (default ~/.local/share/applications) with Exec pointing at the command that ran
(a pipx or venv install need not be on the desktop session's PATH), and the icon (SVG and PNG sizes) into
$XDG_DATA_HOME/icons/hicolor. The entry takes a folder (%f), so a file manager can open a checkpoint folder
with it. Nothing here needs a QApplication except app_icon().
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from engine.checkpoints.resolve import resources_dir

log = logging.getLogger(__name__)

APP_ID = "attention-inspector"  # the desktop file's name, the icon's theme name, Wayland's app id
DESKTOP_FILE = f"{APP_ID}.desktop"
_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")  # characters that make an Exec argument need quotes


def icons_dir() -> Path:
    return resources_dir() / "icons"


def icon_files() -> dict[str, Path]:
    """{"scalable": the SVG, "16x16": its PNG, …}: what ships with the app."""
    found = {"scalable": icons_dir() / f"{APP_ID}.svg"}
    for png in sorted(icons_dir().glob(f"hicolor/*/apps/{APP_ID}.png"), key=lambda p: int(p.parts[-3].split("x")[0])):
        found[png.parts[-3]] = png
    return {k: p for k, p in found.items() if p.is_file()}


def app_icon():  # noqa: ANN201 - QIcon
    """The window icon: every PNG size (16..512), so each place Qt draws it gets a crisp one; the SVG only
    when no PNG is there (an SVG added first makes the icon scalable-only and hides the PNG sizes)."""
    from PySide6.QtGui import QIcon

    files = icon_files()
    icon = QIcon()
    for path in [p for size, p in files.items() if size != "scalable"] or list(files.values()):
        icon.addFile(str(path))
    return icon


def data_home() -> Path:
    """$XDG_DATA_HOME when set to an absolute path (the spec ignores a relative one), else ~/.local/share."""
    value = os.environ.get("XDG_DATA_HOME", "")
    return Path(value) if value and os.path.isabs(value) else Path.home() / ".local" / "share"


def launch_command() -> list[str]:
    """The command that started this process, for the entry's Exec: the `attention-inspector` script it ran
    (not resolved through symlinks, so a pipx upgrade keeps working), else the one on PATH, else python main.py."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == APP_ID and argv0.is_file():
        return [os.path.abspath(argv0)]
    on_path = shutil.which(APP_ID)
    if on_path:
        return [os.path.abspath(on_path)]
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file and Path(main_file).name == "main.py":
        return [sys.executable, os.path.abspath(main_file)]
    return [APP_ID]


def _exec_argument(arg: str) -> str:
    """One Exec argument, quoted as the Desktop Entry spec asks; the string escape (\\\\) comes later."""
    if not any(c in _RESERVED for c in arg):
        return arg.replace("%", "%%")
    return '"' + re.sub(r'(["`$\\])', r"\\\1", arg).replace("%", "%%") + '"'


def desktop_entry(command: list[str] | None = None) -> str:
    """The shipped entry with Exec and TryExec pointing at `command` (default: launch_command())."""
    command = command or launch_command()
    exec_line = " ".join(_exec_argument(a) for a in command).replace("\\", "\\\\") + " %f"
    text = (resources_dir() / DESKTOP_FILE).read_text(encoding="utf-8")
    text = re.sub(r"^Exec=.*$", lambda _: f"Exec={exec_line}", text, count=1, flags=re.MULTILINE)
    try_exec = command[0].replace("\\", "\\\\")
    return re.sub(r"^TryExec=.*$", lambda _: f"TryExec={try_exec}", text, count=1, flags=re.MULTILINE)


def install_desktop_entry(data: Path | None = None, command: list[str] | None = None) -> list[Path]:
    """Write the entry and the icons under `data` (default data_home()); -> the files written."""
    data = data or data_home()
    written = []
    apps = data / "applications"
    apps.mkdir(parents=True, exist_ok=True)
    entry = apps / DESKTOP_FILE
    entry.write_text(desktop_entry(command), encoding="utf-8")
    written.append(entry)
    for size, src in icon_files().items():
        ext = "svg" if size == "scalable" else "png"
        dest = data / "icons" / "hicolor" / size / "apps" / f"{APP_ID}.{ext}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        written.append(dest)
    _refresh(data)
    return written


def uninstall_desktop_entry(data: Path | None = None) -> list[Path]:
    """Remove what install_desktop_entry wrote; -> the files removed."""
    data = data or data_home()
    targets = [data / "applications" / DESKTOP_FILE]
    targets += sorted((data / "icons" / "hicolor").glob(f"*/apps/{APP_ID}.*"))
    removed = [p for p in targets if p.is_file()]
    for path in removed:
        path.unlink()
    _refresh(data)
    return removed


def _refresh(data: Path) -> None:
    """Let the desktop see the change now: the MIME cache of the applications folder (the entry opens folders),
    and the icon theme's mtime. Best effort: without these tools the desktop finds the files on its next scan."""
    tool = shutil.which("update-desktop-database")
    if tool and (data / "applications").is_dir():
        try:
            subprocess.run([tool, str(data / "applications")], check=False, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("update-desktop-database failed: %s", exc)
    hicolor = data / "icons" / "hicolor"
    if hicolor.is_dir():
        os.utime(hicolor)
