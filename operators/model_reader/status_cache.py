"""The last status of a model verified online, so that a flow may start while the registry
is unreachable (``VERISEG_STATUS_MAX_AGE``).

Kept in ``VERISEG_HOME/status-cache.json``, one entry per chain, registry and model.
Whoever can write ``VERISEG_HOME`` can forge it: the same trust as the embedded chain's
journal there.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from model_store.blob_key import BlobKey, InvalidBlobKey
from model_store.util import atomic_write

from ..telemetry import log

__all__ = ["StatusCache", "STATUS_CACHE"]

STATUS_CACHE = "status-cache.json"


class StatusCache:
    def __init__(self, home: Path, entry_id: str):
        self.home = Path(home)
        self.path = self.home / STATUS_CACHE
        self.entry_id = entry_id

    def _all(self) -> dict:
        try:
            d = json.loads(self.path.read_text())
            return d if isinstance(d, dict) else {}
        except (OSError, ValueError):
            return {}

    def load(self) -> Optional[dict]:
        """This model's entry: key (a BlobKey), version, name, checked_at, block (None if
        none, or if it holds no key)."""
        entry = self._all().get(self.entry_id)
        try:
            return {**entry, "key": BlobKey(entry["key"])}
        except (TypeError, KeyError, InvalidBlobKey):   # not an entry this flow wrote
            return None

    def save(self, key: str, version: int, name: str, block: int) -> None:
        d = self._all()
        d[self.entry_id] = {"key": key, "version": version, "name": name,
                            "checked_at": time.time(), "block": block}
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(d, indent=1))
        except OSError as e:
            log.warning("cannot write the status cache %s: %s", self.path, e)
