"""operators.backends.ov_devices and OpenVINO's device in the flow: auto's order (discrete
GPU, integrated GPU, CPU; NPU only when named), the next device when one refuses the model,
a named device OpenVINO does not list refused with one line, and the setting reaching the
compile.  Only the CPU exists here: GPUs are a Core that lists them and refuses to compile."""
from __future__ import annotations

import pytest

from tests.flow_fixtures import tiny_onnx

KA = "a" * 64


def _kinds(discrete=()):
    return lambda d: "discrete" if d in discrete else "integrated"


def test_auto_prefers_a_discrete_then_an_integrated_gpu_then_the_cpu_and_never_the_npu():
    from operators.backends.ov_devices import pick
    order, why = pick("auto", ["CPU", "GPU.0", "GPU.1", "NPU"], _kinds({"GPU.1"}))
    assert order == ["GPU.1", "GPU.0", "CPU"]
    assert why.startswith("auto: GPU.1 > GPU.0 > CPU") and "NPU" in why and "\n" not in why
    assert pick("auto", ["CPU"], _kinds())[0] == ["CPU"]
    assert pick("auto", ["CPU", "NPU"], _kinds())[0] == ["CPU"]


@pytest.mark.parametrize("wanted, listed, used", [
    ("NPU", ["CPU", "NPU"], "NPU"),
    ("GPU", ["CPU", "GPU.0"], "GPU"),             # OpenVINO's name for the first GPU
    ("GPU.1", ["CPU", "GPU.0", "GPU.1"], "GPU.1"),
    ("HETERO:GPU,CPU", ["CPU"], "HETERO:GPU,CPU"),  # a virtual device: OpenVINO checks its parts
    ("cpu", ["CPU"], "CPU"),
])
def test_a_named_device_is_used_alone(wanted, listed, used):
    from operators.backends.ov_devices import pick
    assert pick(wanted, listed, _kinds()) == ([used], f"VERISEG_OPENVINO_DEVICE={used}")


@pytest.mark.parametrize("wanted, listed", [("GPU", ["CPU"]), ("NPU", ["CPU", "GPU.0"]), ("auto", ["NPU"]),
                                            ("auto", [])])
def test_a_device_openvino_does_not_list_is_one_line_naming_what_it_lists(wanted, listed):
    from operators.backends import ScoreError
    from operators.backends.ov_devices import pick
    with pytest.raises(ScoreError) as ei:
        pick(wanted, listed, _kinds())
    msg = str(ei.value)
    assert "\n" not in msg and (", ".join(listed) or "no device") in msg and "VERISEG_" in msg


class _CoreWithGpus:
    """The real Core, listing GPUs that refuse every model."""
    def __init__(self, real, gpus=("GPU.0",), discrete=()):
        self._real, self._gpus, self._discrete, self.tried = real, gpus, discrete, []

    @property
    def available_devices(self):
        return ["CPU", *self._gpus]

    def get_property(self, device, name):
        if device in self._gpus:
            return "Type.DISCRETE" if device in self._discrete else "Type.INTEGRATED"
        return self._real.get_property(device, name)

    def compile_model(self, model, device, config):
        self.tried.append((device, dict(config)))
        if device in self._gpus:
            raise RuntimeError(f"[GPU] {device}: clGetPlatformIDs failed\nsecond line")
        return self._real.compile_model(model, device, config)

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def fake_core(monkeypatch):
    ov = pytest.importorskip("openvino")
    real = ov.Core
    made = []

    def make(**kw):
        def core():
            c = _CoreWithGpus(real(), **kw)
            made.append(c)
            return c
        monkeypatch.setattr(ov, "Core", core)
        return made
    return make


def test_auto_moves_on_to_the_next_device_when_a_gpu_refuses_the_model_and_says_so(fake_core):
    from operators.backends import ov
    made = fake_core(gpus=("GPU.0", "GPU.1"), discrete=("GPU.1",))
    r = ov.build(tiny_onnx(), key=KA, threads=1)
    assert r.device == "CPU"
    assert [d for d, _ in made[-1].tried] == ["GPU.1", "GPU.0", "CPU"]
    # thread count is a CPU setting: the GPUs were asked without it
    assert all("INFERENCE_NUM_THREADS" not in c for d, c in made[-1].tried if d != "CPU")
    assert "GPU.1 refused it" in r.how and "GPU.0 refused it" in r.how and "\n" not in r.how


def test_a_named_gpu_that_refuses_the_model_is_refused_with_one_line(fake_core):
    from operators.backends import ScoreError, compile_verified
    fake_core(gpus=("GPU.0",))
    with pytest.raises(ScoreError) as ei:
        compile_verified(tiny_onnx(), key=KA, backend="openvino", ov_device="GPU", threads=1)
    assert KA[:12] in str(ei.value) and "for GPU" in str(ei.value) and "\n" not in str(ei.value)


def test_the_device_setting_reaches_the_compile_through_the_flows_context():
    pytest.importorskip("openvino")
    from operators.config import load_config
    from operators.context import FlowContext
    from operators.sessions import build_session
    cfg = load_config({"VERISEG_OPENVINO_DEVICE": "cpu", "VERISEG_BACKEND": "openvino"})
    options = FlowContext(config=cfg).sessions.options
    assert options["ov_device"] == "CPU"
    e = build_session(tiny_onnx(), key=KA, **dict(options, threads=1))
    assert e.runner.device == "CPU" and "VERISEG_OPENVINO_DEVICE=CPU" in e.runner.how
    e.runner.close()


def test_a_named_npu_gets_a_batch_of_one_because_it_compiles_static_shapes_only(monkeypatch):
    """The NPU here is the CPU under another name, recording the shape it was given."""
    ov_mod = pytest.importorskip("openvino")
    from operators.backends import ov
    real = ov_mod.Core
    shapes = []

    class CoreWithNpu(_CoreWithGpus):
        available_devices = ["CPU", "NPU"]

        def compile_model(self, model, device, config):
            shapes.append((device, str(model.inputs[0].get_partial_shape())))
            return self._real.compile_model(model, "CPU", config)
    monkeypatch.setattr(ov_mod, "Core", lambda: CoreWithNpu(real(), gpus=()))
    r = ov.build(tiny_onnx(), key=KA, device="NPU")
    assert shapes[-1] == ("NPU", "[1,32,32,3]") and r.input.shape[0] == 1 and r.device == "NPU"
    ov.build(tiny_onnx(), key=KA, device="CPU", threads=1)
    assert shapes[-1] == ("CPU", "[?,32,32,3]")     # the CPU keeps the dynamic batch
