"""Checking a card's JSON fields: the one refusal (BadCard, naming the card), values that
canonical JSON carries exactly, lists, and nested objects built into their dataclass."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from .errors import BadCard

CARD = "<card>"


def fail(what: str) -> BadCard:
    return BadCard(CARD, what)


def check_json(name: str, value: Any) -> None:
    """Refuse values canonical JSON cannot carry exactly (NaN, inf, non-string keys)."""

    def walk(v: Any, where: str) -> None:
        if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
            return
        if isinstance(v, float):
            if not math.isfinite(v):
                raise fail(f"{where} is {v!r}; expected a finite number")
            return
        if isinstance(v, (list, tuple)):
            for i, item in enumerate(v):
                walk(item, f"{where}[{i}]")
            return
        if isinstance(v, Mapping):
            for k, item in v.items():
                if not isinstance(k, str):
                    raise fail(f"{where} has key {k!r}; expected string keys")
                walk(item, f"{where}.{k}")
            return
        raise fail(f"{where} is a {type(v).__name__}; expected JSON data")

    walk(value, name)


def as_list(v: Any, what: str) -> Sequence:
    if not isinstance(v, (list, tuple)):
        raise fail(f"{what} is a {type(v).__name__}; expected a list")
    return v


def fields_of(kind: type, v: Any, what: str) -> dict:
    """``v`` as keyword arguments of dataclass ``kind``: refused unless it is an object with
    no field that ``kind`` lacks (a card from a newer writer is refused, not half-read)."""
    if not isinstance(v, Mapping):
        raise fail(f"{what} is a {type(v).__name__}; expected an object")
    extra = sorted(set(v) - {f.name for f in dataclasses.fields(kind)})
    if extra:
        raise fail(f"{what} has unknown fields {extra}")
    return dict(v)


def build(kind: type, v: Any, what: str) -> Any:
    kw = fields_of(kind, v, f"{what} entry")
    for key in ("color", "shape", "mean", "std", "size"):
        if kw.get(key) is not None:
            kw[key] = tuple(as_list(kw[key], f"{what} {key}"))
    return kind(**kw)
