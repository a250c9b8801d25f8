"""Reusable Bytewax pieces: sources, preprocess, model reader, score, sinks."""
