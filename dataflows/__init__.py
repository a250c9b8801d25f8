"""Bytewax flows: `segment` (the main job) and `evaluate` (file replay)."""
