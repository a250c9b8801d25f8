"""Keyed, compressed, self-describing model blobs (the paper's ASTORE)."""
