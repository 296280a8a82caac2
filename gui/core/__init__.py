"""State (one signal per field), the engine worker thread and its jobs; Qt core only, may import engine, never gui widgets."""
