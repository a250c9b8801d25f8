"""Shared fixtures. Tests that need outside components skip without them, except in CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
REPO = Path(__file__).resolve().parent.parent
WEB_TESTS = REPO / "tests" / "web"


def need(condition: bool, what: str) -> None:
    """Skip when `what` is missing locally; in CI a missing component is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI (.ci/run installs it)")
    pytest.skip(f"{what} not available")


def tiny_onnx(height: int = 8, width: int = 8, opset: int = 17) -> bytes:
    """A real ONNX model with the shipped model's contract: uint8 NHWC RGB in, uint8 class map out.

    The class of a pixel is the index of its largest channel (0..2), so results are predictable.
    """
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("ArgMax", ["f"], ["idx"], axis=3, keepdims=0),
            helper.make_node("Cast", ["idx"], ["classes"], to=TensorProto.UINT8),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", height, width, 3])],
        [helper.make_tensor_value_info("classes", TensorProto.UINT8, ["N", height, width])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="veriseg-tests")
    model.ir_version = 8
    return model.SerializeToString()


def installed_backends() -> list:
    """The scoring backends importable here (``VERISEG_BACKEND`` values); in CI both must be."""
    import importlib.util
    names = [n for n, mod in (("onnxruntime", "onnxruntime"), ("openvino", "openvino"))
             if importlib.util.find_spec(mod) is not None]
    if IN_CI and len(names) < 2:
        raise RuntimeError(f"CI needs both scoring backends installed, found {names}")
    return names


@pytest.fixture(params=installed_backends())
def backend(request) -> str:
    """Runs the test once per installed scoring backend (VERISEG_BACKEND value)."""
    return request.param


@pytest.fixture
def carla_dir() -> Path:
    path = os.environ.get("VERISEG_CARLA_DIR")
    if not path:
        pytest.skip("VERISEG_CARLA_DIR is not set")
    return Path(path)


def pytest_collection_modifyitems(config, items):
    """The web tests first: they start Chromium (Playwright) and fork, and a process that has
    loaded OpenVINO (the backend tests) crashed (SIGSEGV) or hung when it later forked."""
    items.sort(key=lambda item: 0 if WEB_TESTS in item.path.parents else 1)
