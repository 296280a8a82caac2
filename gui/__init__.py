"""Attention Inspector's PySide6 + pyqtgraph views. Owns every thread; draws Traces; no tensor math.

    app.py            QApplication, style, excepthook, --screenshot         (run_app)
    main_window.py    docks, menus, status bar, drag & drop, QSettings        (MainWindow)
    worker.py         the one engine thread and its GUI-side client           (EngineWorker, EngineClient)
    state.py          the selection/state object every panel subscribes to    (InspectorState)
    prompt_panel.py   model picker, device, prompt / source, sampling
    token_strip.py    stepper + token chips
    attention_view.py one head's pattern, large
    head_grid.py      every layer × head as thumbnails in one atlas image
    logits_panel.py   top-k candidates as bars; branch by double-click
    display.py, token_axis.py, flow_layout.py, style.py   small helpers
"""
