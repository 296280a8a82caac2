"""Attention Inspector's bundled resources: models/ (tiny-gpt, tiny-bert, tiny-seq2seq, …), icons/ and the
freedesktop entry. Not code: pyproject.toml installs this folder as the package `attention_inspector_resources`
(package data, so the wheel carries the models), and engine.checkpoints.resolve.resources_dir() finds it with
importlib.resources."""
