"""Attention Inspector's PySide6 + pyqtgraph GUI: owns every thread, draws the engine's numpy Traces, no tensor math.

Grouped by role, each layer importing only the ones below it (enforced by import-linter, see pyproject.toml):

    shell/      the app, the main window, its menus and actions (by id), the style
    features/   what spans panels: head ablation, rollout, compare, session files, exports
    panels/     one dock each: prompt, tokens, attention, heads, candidates, logit lens, head statistics
    core/       state (one signal per field), the engine worker thread and the jobs it runs
    widgets/    small reusable Qt widgets: flow layout, token axis, error banner
    rendering/  numpy display helpers: colour maps, scaling and pooling, head-grid thumbnails, labels
"""
