"""Where this machine keeps the blobs it registered: ``<home>/chain/blobs.json``, model
key -> absolute path, written by ``register``.

``anchor-verify --result`` needs a model's card (its class names) to check a results
line's shares; the registered URI is public and often empty or remote, so the path stays
local. It is only a hint: a blob found through it is used only if it still hashes to the
key (``model_store.verify``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from model_store.util import atomic_write

from .pins import pins_path
from .values import parse_key

__all__ = ["INDEX_FILE", "index_path", "record_blob", "recorded_blob"]

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
