"""Small reusable Qt widgets (flow layout, token axis, error banner); import nothing else from gui."""
