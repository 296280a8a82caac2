"""`python -m attention_inspector` runs the app (the same as `attention-inspector` or `python main.py`).

Kept free of heavy imports: `attention_inspector.version` answers `--version` without loading torch."""
