"""File → Connect to engine…: where the engine runs. An address and token for a port already forwarded
(paste the server's whole `connect:` line into the address), or an SSH host the app opens a tunnel to
(optionally through a jump host, optionally starting `attention-inspector serve` there), or this computer."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

LOCAL = "local"


class ConnectDialog(QDialog):
    """target() after exec(): {"address", "token"}, {"ssh_host", ...}, or LOCAL."""

    def __init__(self, parent: QWidget | None = None, where: str = "", last: dict | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Connect to engine")
        last = last or {}
        self._local = False
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(f"The engine runs on: <b>{where}</b>"))
        self.tabs = QTabWidget()
        layout.addWidget(self.tabs)

        direct = QWidget()
        form = QFormLayout(direct)
        self.address = QLineEdit(last.get("address", "127.0.0.1:5555"))
        self.address.setPlaceholderText("HOST:PORT, or paste the server's whole `connect:` line")
        self.address.textChanged.connect(self._maybe_connect_line)
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("token=… from the server's connect line")
        form.addRow("Address", self.address)
        form.addRow("Token", self.token)
        form.addRow(QLabel("For a port already forwarded, e.g. <code>ssh -L 5555:127.0.0.1:5555 gpu-box</code> "
                           "with <code>attention-inspector serve --port 5555</code> running there."))
        self.tabs.addTab(direct, "Address and token")

        ssh = QWidget()
        form = QFormLayout(ssh)
        self.host = QLineEdit(last.get("ssh_host", ""))
        self.host.setPlaceholderText("user@gpu-box, or a Host from ~/.ssh/config")
        self.jump = QLineEdit(last.get("jump") or "")
        self.jump.setPlaceholderText("optional: user@bastion")
        self.port = QSpinBox()
        self.port.setRange(1024, 65535)
        self.port.setValue(int(last.get("remote_port", 5555)))
        self.start_server = QCheckBox("Start `attention-inspector serve` there (it must be installed)")
        self.start_server.setChecked(bool(last.get("start_server", True)))
        self.unix_socket = QCheckBox("…listening on a private unix socket, not a port (serve --ipc)")
        self.unix_socket.setToolTip("No TCP port opens on the server: the socket is in a fresh folder only you can "
                                    "reach, and ssh forwards a local port to it")
        self.unix_socket.setChecked(bool(last.get("remote_socket")))
        self.ssh_token = QLineEdit()
        self.ssh_token.setEchoMode(QLineEdit.EchoMode.Password)
        self.ssh_token.setPlaceholderText("the running server's token (not needed when the app starts it)")
        self.start_server.toggled.connect(self._start_server_toggled)
        self.unix_socket.toggled.connect(lambda _on: self._start_server_toggled(self.start_server.isChecked()))
        self._start_server_toggled(self.start_server.isChecked())
        form.addRow("SSH host", self.host)
        form.addRow("Jump host", self.jump)
        form.addRow("Server port", self.port)
        form.addRow(self.start_server)
        form.addRow(self.unix_socket)
        form.addRow("Token", self.ssh_token)
        form.addRow(QLabel("The app runs the system <code>ssh</code> for the tunnel (your keys and ~/.ssh/config "
                           "apply); what crosses is encrypted by ssh."))
        self.tabs.addTab(ssh, "SSH host")
        if last.get("ssh_host"):
            self.tabs.setCurrentIndex(1)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.connect_button = buttons.addButton("Connect", QDialogButtonBox.ButtonRole.AcceptRole)
        local = QPushButton("Use this computer")
        buttons.addButton(local, QDialogButtonBox.ButtonRole.ActionRole)
        local.clicked.connect(self._use_local)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def _maybe_connect_line(self, text: str) -> None:
        from engine.remote.launch import parse_connect_line

        if text.strip().startswith("connect:"):
            try:
                address, token, _ = parse_connect_line(text)
            except Exception:  # noqa: BLE001 - half a line pasted: leave it for the person to finish
                return
            self.address.setText(address)
            if token:
                self.token.setText(token)

    def _start_server_toggled(self, on: bool) -> None:
        self.ssh_token.setEnabled(not on)
        self.unix_socket.setEnabled(on)  # a server already running: its own port (or socket: forward it yourself)
        self.port.setEnabled(not (on and self.unix_socket.isChecked()))  # a socket has no port

    def _use_local(self) -> None:
        self._local = True
        self.accept()

    def target(self) -> Any:
        if self._local:
            return LOCAL
        if self.tabs.currentIndex() == 0:
            return {"address": self.address.text().strip(), "token": self.token.text().strip()}
        return {"ssh_host": self.host.text().strip(), "jump": self.jump.text().strip() or None,
                "remote_port": self.port.value(), "start_server": self.start_server.isChecked(),
                "token": None if self.start_server.isChecked() else self.ssh_token.text().strip(),
                "remote_socket": self.start_server.isChecked() and self.unix_socket.isChecked()}
