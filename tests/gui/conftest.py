"""GUI fixtures: tiny random checkpoints of each family (built once), and a fresh main window per test."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QSettings

from tests import factories

OPEN_TIMEOUT_MS = 60_000  # a busy shared CPU can make the first load slow


def long_gpt2(folder, n_positions: int = 1024):
    """factories.gpt2 with a long context (and no end of text), so a long run has room to be stopped."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = factories.byte_level_tokenizer(300, ["<|endoftext|>"])
    eos = tok.token_to_id("<|endoftext|>")
    cfg = GPT2Config(vocab_size=tok.get_vocab_size(), n_embd=32, n_layer=2, n_head=4, n_positions=n_positions,
                     bos_token_id=eos, eos_token_id=None, attn_implementation="eager")
    return factories._save(factories._init(GPT2LMHeadModel(cfg), 1), tok, folder)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "decoder": factories.gpt2(root / "gpt2"),
        "long-decoder": long_gpt2(root / "gpt2-long"),
        "encoder": factories.bert(root / "bert"),
        "encoder-no-head": factories.bert(root / "bert-no-head", head=False),
        "encoder-decoder": factories.marian(root / "marian"),
    }


@pytest.fixture
def window(qtbot, tmp_path):
    from gui.shell.app import make_app
    from gui.shell.main_window import MainWindow

    make_app()
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings, devices=["cpu"])
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    yield win
    win.close()


def wait_idle(qtbot, win, timeout: int = OPEN_TIMEOUT_MS) -> None:
    """Until the worker has answered everything and the startup chain is done."""
    qtbot.waitUntil(lambda: not win.client.busy and not win._chain, timeout=timeout)


def open_model(qtbot, win, path, **kw) -> None:
    n_errors = len(win.errors)
    win.open_model(str(path), **kw)
    wait_idle(qtbot, win)
    assert win.errors[n_errors:] == []
    assert win.state.trace is not None
