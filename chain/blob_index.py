"""Where this machine keeps the blobs it registered: ``<home>/chain/blobs.json``, model
key -> absolute path, written by ``register``.

``anchor-verify --result`` needs a model's card (its class names) to check a results
line's shares; the registered URI is public and often empty or remote, so the path stays
local. It is only a hint: a blob found through it is used only if it still hashes to the
key (``model_store.verify``). :func:`blob_of` and :func:`card_of` find a model's blob and
card the way ``anchor-verify`` and the audit page do.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import unquote, urlparse

import model_store
from model_store.util import atomic_write

from .errors import ProofInputError
from .pins import pins_path
from .values import parse_key

__all__ = ["INDEX_FILE", "index_path", "record_blob", "recorded_blob", "blob_of", "card_of"]

log = logging.getLogger("chain")

INDEX_FILE = "blobs.json"


def index_path(home) -> Path:
    """Beside the chain id pins, in the home's ``chain`` folder (``VERISEG_HOME`` by default)."""
    return pins_path(home).with_name(INDEX_FILE)


def _read(p: Path) -> dict:
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_blob(home, key: str, path: str | Path) -> None:
    """Remember that ``key``'s blob is at ``path`` (made absolute); a failure to write is
    a warning: the registration it follows stands."""
    p = index_path(home)
    try:
        index = _read(p)
        index[parse_key(key)] = str(Path(path).resolve())
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, json.dumps(index, indent=1, sort_keys=True) + "\n")
    except OSError as exc:
        log.warning("could not record where blob %s is in %s: %s", parse_key(key).short, p, exc)


def recorded_blob(home, key: str) -> Path | None:
    """The path recorded for ``key`` when that file still exists, else None (unverified:
    the caller checks that it hashes to the key)."""
    path = _read(index_path(home)).get(parse_key(key))
    if not isinstance(path, str):
        return None
    p = Path(path)
    return p if p.is_file() else None


def blob_of(reg, key: str, blob: str | None = None) -> Path | None:
    """The blob file of ``key``: ``blob`` (which must hash to the key), else the URI it was
    registered with when that is a local file that still hashes to the key, else the blob
    ``register`` recorded on this machine when it still hashes to the key; None otherwise."""
    if blob is not None:
        got = model_store.verify(blob)
        if got != key:
            raise ProofInputError(f"--blob {blob} has key {got}, not the anchored model {key}; "
                                  "pass the blob of the model that scored the frame")
        return Path(blob)
    try:
        uri = reg.info(key)[1]
        u = urlparse(uri)
        path = Path(unquote(u.path)) if u.scheme == "file" else Path(uri)
        if uri and path.is_file() and model_store.verify(path) == key:
            return path
    except Exception:  # noqa: BLE001 - no blob there: try the local record
        pass
    try:
        path = recorded_blob(reg.home, key)
        if path is not None and model_store.verify(path) == key:
            return Path(path)
    except Exception:  # noqa: BLE001 - no blob: a line with shares is refused, not trusted
        pass
    return None


def card_of(reg, key: str, blob: str | None = None):
    """The card of ``key``'s blob (:func:`blob_of`); None when there is no such blob (a
    results line's shares then cannot be checked)."""
    path = blob_of(reg, key, blob)
    try:
        return None if path is None else model_store.read_header(path)
    except Exception:  # noqa: BLE001 - no card: a line with shares is refused, not trusted
        return None
