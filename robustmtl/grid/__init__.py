"""Grids: spec files → planned runs → executors → status."""
