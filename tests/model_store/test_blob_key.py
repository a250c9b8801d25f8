"""A blob key is parsed and shortened in one place, ``model_store.blob_key.BlobKey``: any
spelling of a key gives the same value, equal to (and hashed as) its 64 lower-case hex, and
anything else is refused in one line."""
import json
import pickle
import re

import pytest

from chain import errors
from chain.values import parse_key
from model_store import BlobKey, InvalidBlobKey
from model_store.blob_key import unpacked_key

from tests.conftest import REPO

HEX = "ab" * 31 + "cd"


@pytest.mark.parametrize("spelling", [HEX, HEX.upper(), "0x" + HEX, " 0x" + HEX.upper() + "\n",
                                      bytes.fromhex(HEX), bytearray.fromhex(HEX)])
def test_every_spelling_of_a_key_is_one_value(spelling):
    key = BlobKey(spelling)
    assert key == HEX and hash(key) == hash(HEX) and {HEX: 1}[key] == 1
    assert key.bytes == bytes.fromhex(HEX) and key.short == HEX[:12]
    assert BlobKey(key) is key and str(key) == HEX and f"{key}" == HEX


def test_a_key_travels_as_its_hex():
    key = BlobKey(HEX)
    assert json.dumps({"k": key}) == json.dumps({"k": HEX})
    assert pickle.loads(pickle.dumps(key)) == key and repr(key) == f"BlobKey('{HEX}')"


@pytest.mark.parametrize("bad", ["", "xyz", HEX[:-1], HEX + "0", "k" * 64, b"\x00" * 31, None, 7,
                                 "0x" + "g" * 64, "a" * 10_000])
def test_anything_else_is_refused_in_one_short_line(bad):
    with pytest.raises(InvalidBlobKey) as ei:
        BlobKey(bad)
    assert isinstance(ei.value, ValueError) and "\n" not in str(ei.value) and len(str(ei.value)) < 200
    with pytest.raises(errors.InvalidKey):   # the chain's callers catch the chain's error
        parse_key(bad)


def test_an_unpacked_graph_is_named_by_its_bytes():
    assert unpacked_key(b"graph") == unpacked_key(b"graph") != unpacked_key(b"other graph")


def test_no_module_shortens_a_key_by_hand():
    """``key.short`` is the one short form: a slice of a key anywhere else is a second rule."""
    sliced = re.compile(r"key\w*(\[['\"]key['\"]\])?\)?\[:\d+\]", re.IGNORECASE)
    found = [f"{p.relative_to(REPO)}:{n}" for pkg in ("model_store", "chain", "operators", "dataflows",
                                                      "trainer", "web", "bench")
             for p in sorted((REPO / pkg).rglob("*.py"))
             if p.name != "blob_key.py"
             for n, line in enumerate(p.read_text().splitlines(), 1) if sliced.search(line)]
    assert found == [], found
