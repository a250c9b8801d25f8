"""The page's file root: ``chain.files`` (the chain CLI reads a run's files by the same
rule, and must not import the web package)."""
from chain.files import MAX_NAME, FileRoot, PathRefused, check_name, open_regular

__all__ = ["FileRoot", "PathRefused", "MAX_NAME", "check_name", "open_regular"]
