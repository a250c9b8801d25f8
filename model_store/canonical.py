"""Canonical JSON: sorted keys, no whitespace, no NaN or Infinity, UTF-8. The same value
always gives the same bytes, so they can be hashed, signed or compared: a blob's header
(the model card), the flow's anchor seal and the embedded chain's journal lines.

    canonical_json({"b": 1, "a": "é"})                  # b'{"a":"\\xc3\\xa9","b":1}'
    canonical_json({"a": "é"}, ascii_only=True)         # b'{"a":"\\\\u00e9"}'
"""

from __future__ import annotations

import json

__all__ = ["canonical_json"]


def canonical_json(obj: object, *, ascii_only: bool = False) -> bytes:
    """``obj`` as canonical JSON bytes; ``ascii_only`` writes non-ASCII characters as
    ``\\uXXXX`` escapes (the spelling the anchor seal has always signed). NaN and
    Infinity are refused (ValueError): no canonical form holds them."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=ascii_only,
                      allow_nan=False).encode()
