"""Why a model may not score: one line each (what, why, what to do)."""
from __future__ import annotations

__all__ = ["ModelRefused", "ChainDown", "BlobNotHere"]


class ModelRefused(RuntimeError):
    """The configured model may not score (one line: what, why, what to do)."""


class ChainDown(ModelRefused):
    """The registry could not be reached while resolving the model."""


class BlobNotHere(ModelRefused):
    """A deployed key whose blob is in none of the model folders (yet)."""
