"""The app shell (app, main window, menus and actions by id, style); may import every other gui folder."""
