"""Fixtures the tests of dataflows/ share."""

from __future__ import annotations

import pytest

from tests.flow_fixtures import FakeRegistry, make_blob


@pytest.fixture
def model(tmp_path):
    reg = FakeRegistry()
    blob = tmp_path / "models" / "tiny.vsb"
    key = make_blob(blob)
    reg.register(key, "tiny", blob.as_uri())
    return reg, blob, key
