"""Canonical JSON has one owner, ``model_store.canonical``: its exact bytes are pinned here,
since blob headers, anchor seals and the embedded chain's journal made before must still
verify (a change of flags would silently break them)."""
import pytest

from chain.anchor_batch import AnchorBatch, Leaf
from model_store.canonical import canonical_json
from operators.anchor_seal import seal


def test_the_bytes_are_sorted_compact_utf8():
    assert canonical_json({"b": [1, 2.5, None], "a": "café"}) == b'{"a":"caf\xc3\xa9","b":[1,2.5,null]}'
    assert canonical_json({"a": "café"}, ascii_only=True) == b'{"a":"caf\\u00e9"}'


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_and_infinity_have_no_canonical_form(value):
    with pytest.raises(ValueError):
        canonical_json({"x": value})


def test_a_seal_made_before_still_verifies():
    # a stream id outside ASCII: the seal signs it as a \u escape
    batch = AnchorBatch("ab" * 32, [Leaf("caméra", 7, bytes(range(32)))])
    assert seal(b"k" * 32, batch) == "6a09ca47a1b00a10e61c94d8523d3a08a3bd942338da9d3ae206a20e700e4ba5"
