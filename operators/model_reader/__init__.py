"""The model-reader stage: only verified, registered, unrevoked models reach the score.

| module | what |
|---|---|
| ``source`` | ``verified_models`` operator, ``ModelReaderSource`` (one partition per stream) |
| ``resolver`` | ``ModelResolver``: the model verified at start (blob path or deployment name) |
| ``watcher`` | ``ModelWatcher``: hot swaps, revocations, pending deploys, fail safe |
| ``blob_locator`` | ``BlobLocator``: the blob file of a key (URI, then model folders) |
| ``status_cache`` | ``StatusCache``: the last status verified online |
| ``errors`` | ``ModelRefused``, ``ChainDown``, ``BlobNotHere`` |
"""
from .blob_locator import BlobLocator
from .errors import BlobNotHere, ChainDown, ModelRefused
from .resolver import connect_registry
from .source import ModelReaderSource, verified_models
from .watcher import ModelWatcher

__all__ = ["verified_models", "ModelRefused", "ChainDown", "BlobNotHere", "ModelWatcher",
           "ModelReaderSource", "BlobLocator", "connect_registry"]
