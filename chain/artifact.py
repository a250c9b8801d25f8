"""Load the committed ``ModelRegistry`` artifact (ABI + bytecode)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

ARTIFACT = Path(__file__).resolve().parent / "artifacts" / "ModelRegistry.json"


@functools.lru_cache(maxsize=1)
def load_artifact() -> dict:
    return json.loads(ARTIFACT.read_text())
