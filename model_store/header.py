"""The blob header: the model card as canonical JSON, and untrusted header bytes parsed back
into a card.

The header is parsed only if it nests at most MAX_JSON_DEPTH arrays/objects (counted
without recursion), its integers have at most MAX_INT_DIGITS characters, it has no
NaN/Infinity and no duplicate keys; anything else is `BadCard`, never a Python error.
"""

from __future__ import annotations

import itertools
import json
import re

from . import errors
from .canonical import canonical_json
from .card import ModelCard

MAX_JSON_DEPTH = 32  # a card nests 4 deep; json recurses once a level, so bound it first
MAX_INT_DIGITS = 40  # sizes and seeds fit; a 5000-digit number is hostile (and int() refuses it)


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NESTING_STEP = [0] * 256
for _b in b"[{":
    _NESTING_STEP[_b] = 1
for _b in b"]}":
    _NESTING_STEP[_b] = -1


def _json_depth(text: bytes) -> int:
    """How deep arrays and objects nest, counted in a loop (json.loads would recurse).

    Strings are cut out the way the JSON scanner reads them, so a bracket inside a string
    does not count; what json would recurse into is exactly what is counted.
    """
    brackets = _JSON_STRING.sub(b"", text).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_NESTING_STEP.__getitem__, brackets)), default=0)


def _json_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise ValueError(f"a {len(text)}-character integer; the limit is {MAX_INT_DIGITS}")
    return int(text)


def _json_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _json_object(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {dup[:40]!r}")
    return obj


def parse_card(header: bytes, source: str) -> ModelCard:
    """The card from untrusted header bytes; any defect is BadCard, never a Python error."""
    depth = _json_depth(header)
    if depth > MAX_JSON_DEPTH:
        raise errors.BadCard(source, f"header nests {depth} levels deep; a card nests at most {MAX_JSON_DEPTH}; do not use this file")
    try:
        parsed = json.loads(header.decode("utf-8"), parse_int=_json_int, parse_constant=_json_constant,
                            object_pairs_hook=_json_object)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise errors.BadCard(source, f"header is not a card's UTF-8 JSON ({exc.__class__.__name__}: {exc}); do not use this file") from None
    try:
        canonical = canonical_json(parsed)
    except (TypeError, ValueError) as exc:
        raise errors.BadCard(source, f"header has values canonical JSON cannot hold ({exc}); do not use this file") from None
    if canonical != header:
        raise errors.BadCard(source, "header is not canonical JSON (sorted keys, no whitespace)")
    try:
        card = ModelCard.from_dict(parsed)
    except errors.BadCard as exc:
        raise errors.BadCard(source, str(exc).split(": ", 1)[1]) from None
    if card.body is None:
        raise errors.BadCard(source, "header has no body section; re-pack the model with model_store.pack")
    return card
