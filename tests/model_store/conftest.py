"""Fixtures the tests of model_store/ share."""

from __future__ import annotations

import pytest

import model_store as ms

from tests.conftest import tiny_onnx

from tests.model_store.blob_cases import make_card


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    return tiny_onnx()


@pytest.fixture(scope="module")
def blob(onnx_bytes) -> bytes:
    return ms.pack(onnx_bytes, make_card())
