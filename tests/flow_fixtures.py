"""Test helpers for the streaming layer: tiny ONNX models, blobs, clips, a fake registry.

No torch, no trained model: the ONNX graphs are built with ``onnx.helper`` (uint8 NHWC
image -> per-pixel class ``(R // 20 + shift) % 13`` as a uint8 class map, dynamic batch).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np


def tiny_onnx(shift: int = 0, size=(32, 32), dynamic_batch: bool = True, busy: int = 0) -> bytes:
    """The per-pixel test function; ``busy`` > 0 adds that many 512×512 matrix products that
    depend on the input and change no class (a run that takes milliseconds, not microseconds)."""
    import onnx
    from onnx import TensorProto, helper
    h, w = size
    n = "N" if dynamic_batch else 1
    x = helper.make_tensor_value_info("image", TensorProto.UINT8, [n, h, w, 3])
    y = helper.make_tensor_value_info("classes", TensorProto.UINT8, [n, h, w])
    inits = [helper.make_tensor("s0", TensorProto.INT64, [1], [0]),
             helper.make_tensor("s1", TensorProto.INT64, [1], [1]),
             helper.make_tensor("ax", TensorProto.INT64, [1], [3]),
             helper.make_tensor("d", TensorProto.FLOAT, [], [20.0]),
             helper.make_tensor("sh", TensorProto.FLOAT, [], [float(shift)]),
             helper.make_tensor("m", TensorProto.FLOAT, [], [13.0])]
    busy_nodes, pixels = [], "f"
    if busy:
        # t = sum(image) * M, then M·t ...; the result times 0 is added before the division
        busy_nodes = [helper.make_node("ReduceSum", ["f"], ["busy_s"], keepdims=0),
                      helper.make_node("Mul", ["busy_m", "busy_s"], ["busy_0"]),
                      *(helper.make_node("MatMul", ["busy_m", f"busy_{i}"], [f"busy_{i + 1}"]) for i in range(busy)),
                      helper.make_node("ReduceMax", [f"busy_{busy}"], ["busy_max"], keepdims=0),
                      helper.make_node("Mul", ["busy_max", "busy_zero"], ["busy_nil"]),
                      helper.make_node("Add", ["f", "busy_nil"], ["f_busy"])]
        pixels = "f_busy"
        rng = np.random.default_rng(0)
        inits += [helper.make_tensor("busy_m", TensorProto.FLOAT, [512, 512],
                                     (rng.random((512, 512)) * 1e-3).astype(np.float32).ravel().tolist()),
                  helper.make_tensor("busy_zero", TensorProto.FLOAT, [], [0.0])]
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        *busy_nodes,
        helper.make_node("Slice", [pixels, "s0", "s1", "ax"], ["r"]),
        helper.make_node("Div", ["r", "d"], ["q"]),
        helper.make_node("Floor", ["q"], ["fl"]),
        helper.make_node("Add", ["fl", "sh"], ["a"]),
        helper.make_node("Mod", ["a", "m"], ["md"], fmod=1),
        helper.make_node("Squeeze", ["md", "ax"], ["sq"]),
        helper.make_node("Cast", ["sq"], ["classes"], to=TensorProto.UINT8),
    ]
    g = helper.make_graph(nodes, f"tiny{shift}", [x], [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m.SerializeToString()


def expected_classes(rgb: np.ndarray, shift: int = 0) -> np.ndarray:
    """What tiny_onnx computes for an RGB image."""
    return ((rgb[..., 0].astype(np.int64) // 20 + shift) % 13).astype(np.uint8)


def tiny_card(size=(32, 32), name="tiny", dynamic_batch=True, colour="RGB"):
    """The card of tiny_onnx; ``colour``: the order it states (its class reads channel 0)."""
    from model_store import CARLA_CLASSES, ModelCard, TensorSpec
    h, w = size
    n = "N" if dynamic_batch else 1
    t = "2026-01-01T00:00:00Z"
    return ModelCard(name=name, description="test model", algorithm="per-pixel test function",
                     created=t, modified=t, training_params={}, classes=CARLA_CLASSES,
                     scoring_function="class = (R // 20 + shift) % 13",
                     inputs=(TensorSpec("image", "uint8", (n, h, w, 3), "NHWC", colour),),
                     outputs=(TensorSpec("classes", "uint8", (n, h, w), "NHW", None),),
                     metrics={}, onnx_opset=17)


def make_blob(path, shift: int = 0, size=(32, 32), name="tiny", dynamic_batch=True, busy: int = 0,
              colour: str = "RGB") -> str:
    import model_store
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return model_store.write(str(path), tiny_onnx(shift, size, dynamic_batch, busy),
                             tiny_card(size, name, dynamic_batch, colour))


def register_embedded(home, blob) -> str:
    """Register a test blob on an embedded chain in `home`; return its key."""
    import chain
    import model_store
    reg = chain.connect(chain="embedded", home=home)
    key = model_store.verify(str(blob))
    reg.register(key, "tiny", Path(blob).resolve().as_uri())
    return key


def frame_image(i: int, size=(24, 40)) -> np.ndarray:
    """BGR frame whose red channel encodes the frame index (class = i % 13 for shift 0)."""
    h, w = size
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 2] = (i % 13) * 20 + 5      # red (BGR order)
    img[..., 1] = 7 * i % 256
    return img


def make_clip(path, n: int = 20, size=(24, 40), zero_frame: Optional[int] = None, fps: float = 10):
    """MJPG AVI; ``zero_frame``: that frame's JPEG payload zeroed (undecodable)."""
    h, w = size
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for i in range(n):
        vw.write(frame_image(i, size))
    vw.release()
    if zero_frame is not None:
        b = bytearray(Path(path).read_bytes())
        # frame chunks are '00dc' + u32 size + JPEG; the first '00dc' hits are header fields
        chunks = [i for i in range(len(b) - 8) if b[i:i + 4] == b"00dc"
                  and b[i + 8:i + 10] == b"\xff\xd8"]
        k = chunks[zero_frame]
        sz = int.from_bytes(b[k + 4:k + 8], "little")
        b[k + 8:k + 8 + sz] = bytes(sz)
        Path(path).write_bytes(bytes(b))
    return Path(path)


def make_folder(path, n: int = 10, size=(24, 40), bad: Optional[int] = None) -> Path:
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p = d / f"{i:04d}.png"
        if i == bad:
            p.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
        else:
            cv2.imwrite(str(p), frame_image(i, size))
    return d


@dataclass(frozen=True)
class _Status:
    registered: bool
    revoked: bool
    reason: str
    publisher: Optional[str]
    registered_at: int


@dataclass(frozen=True)
class _Event:
    kind: str
    block: int
    log_index: int = 0
    tx_hash: str = ""
    key: Optional[str] = None
    deployment: Optional[str] = None
    version: Optional[int] = None
    reason: Optional[str] = None


class FakeRegistry:
    """In-memory stand-in for chain.Registry (thread-safe), same method names."""

    address = "0x" + "11" * 20
    endpoint = "fake"
    chain_id = 1337

    class _W3:
        class eth:
            chain_id = 1337
    w3 = _W3()

    def __init__(self):
        self.lock = threading.Lock()
        self.block = 1
        self.keys: dict[str, dict] = {}
        self.deps: dict[str, tuple[str, int]] = {}
        self.log: list[_Event] = []
        self.anchors: dict[bytes, tuple] = {}
        self.down = False
        self.calls = 0

    def _chk(self):
        self.calls += 1
        if self.down:
            import chain
            raise chain.errors.ChainUnavailable("fake node is down")

    def _tick(self, ev=None):
        self.block += 1
        if ev is not None:
            self.log.append(ev)

    def register(self, key, name, uri=""):
        with self.lock:
            self._chk()
            self.keys[key] = {"name": name, "uri": uri, "revoked": False, "reason": "", "at": int(time.time())}
            self._tick()
            return "0x" + "ab" * 32

    def deploy(self, name, key):
        with self.lock:
            self._chk()
            v = self.deps.get(name, ("", 0))[1] + 1
            self.deps[name] = (key, v)
            self._tick(_Event("Deployed", self.block + 1, key=key, deployment=name, version=v))
            return v

    def revoke(self, key, reason):
        with self.lock:
            self._chk()
            self.keys[key]["revoked"] = True
            self.keys[key]["reason"] = reason
            self._tick(_Event("Revoked", self.block + 1, key=key, reason=reason))
            return "0x" + "cd" * 32

    def status(self, key):
        with self.lock:
            self._chk()
            k = self.keys.get(key)
            if k is None:
                return _Status(False, False, "", None, 0)
            return _Status(True, k["revoked"], k["reason"], "0xpub", k["at"])

    def info(self, key):
        with self.lock:
            self._chk()
            k = self.keys.get(key, {"name": "", "uri": ""})
            return k["name"], k["uri"]

    def current(self, name):
        import chain
        with self.lock:
            self._chk()
            if name not in self.deps:
                raise chain.errors.UnknownDeployment(f"deployment '{name}' does not exist")
            return self.deps[name]

    def deployments_of(self, key, from_block=0):
        import chain
        with self.lock:
            self._chk()
            last = {}
            for e in self.log:
                if e.kind == "Deployed" and e.key == key:
                    last[e.deployment] = e
            return [chain.KeyDeployment(n, e.version, e.block, key, *self.deps[n])
                    for n, e in last.items()]

    def block_number(self):
        with self.lock:
            self._chk()
            return self.block

    def events(self, from_block=0, kinds=("Deployed", "Revoked"), to_block=None):
        with self.lock:
            self._chk()
            evs = [e for e in self.log if e.block >= from_block and e.kind in kinds]
            return evs, self.block + 1

    def anchor(self, root, model_key, first_seq, last_seq, stream=None):
        import chain
        with self.lock:
            self._chk()
            if root in self.anchors:
                raise chain.errors.RootAlreadyAnchored("already anchored")
            self._tick()
            self.anchors[bytes(root)] = (model_key, first_seq, last_seq, self.block)
            return "0x" + "ef" * 32

    def anchor_of(self, root):
        with self.lock:
            return self.anchors.get(bytes(root))


def env_for(tmp_path, source, model, **extra) -> dict:
    env = {"VERISEG_SOURCE": str(source), "VERISEG_MODEL": str(model),
           "VERISEG_OUT": str(Path(tmp_path) / "out"), "VERISEG_HOME": str(Path(tmp_path) / "home"),
           "VERISEG_PROVIDERS": "cpu", "VERISEG_THREADS": "1", "VERISEG_POLL": "0.05",
           "VERISEG_PROGRESS": "0"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def prom_value(text: str, sample: str, **labels):
    """The value of the Prometheus sample ``sample`` whose labels include ``labels`` (parsed
    with prometheus_client's own parser: label order and number format do not matter),
    or None when there is none."""
    from prometheus_client.parser import text_string_to_metric_families
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == sample and all(s.labels.get(k) == str(v) for k, v in labels.items()):
                return s.value
    return None


def read_jsonl(path) -> list[dict]:
    import json
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


# what an attacker who can write a model folder plants: a valid magic, version and header
# length, a hostile header, and the correct BLAKE3 key at the end (re-keyed), so that only
# parsing the header can refuse it
HOSTILE_HEADERS = {
    "int_5000_digits": b"1" * 5000,                               # int(): ValueError
    "deep_arrays": b"[" * 200_000 + b"]" * 200_000,               # RecursionError (or worse)
    "deep_objects": b'{"":' * 200_000 + b"1" + b"}" * 200_000,   # under the 1 MiB header limit
}


def hostile_blob(path, header: bytes) -> Path:
    import struct

    import blake3
    from model_store.blob import FORMAT_VERSION, MAGIC
    content = struct.pack(">8sHI", MAGIC, FORMAT_VERSION, len(header)) + header
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(content + blake3.blake3(content).digest())
    return Path(path)


def score_start(row: dict) -> float:
    """Wall-clock time the model run of a results line started (as bench/soak.py reads it)."""
    from bench.soak import score_start as _s
    return _s(row)


def wait_for(cond, timeout: float = 20.0, step: float = 0.005) -> bool:
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            return False
        time.sleep(step)
    return True


#: what ``anchored_folder_run(base, sid, frames=10, every=4, bad=4)`` scores (frame 4 is
#: corrupt) and the anchor batches it writes
ANCHORED_SCORED = [0, 1, 2, 3, 5, 6, 7, 8, 9]
ANCHORED_BATCHES = {"A": "000000-000003.json", "B": "000005-000008.json", "C": "000009-000009.json"}


def anchored_folder_run(base, sid: str, *, frames: int, every: int, bad: Optional[int] = None, **env):
    """A folder stream ``sid`` of ``frames`` frames scored by a fresh tiny blob registered on
    an embedded chain in ``base/home``, anchored every ``every`` frames, no video:
    (config, blob key).  The audit page and the attack tests read such a run's outputs."""
    from bytewax.testing import run_main

    from dataflows.segment import build_flow
    from operators.config import load_config
    blob = Path(base) / "models" / "tiny.vsb"
    key = make_blob(blob)
    register_embedded(Path(base) / "home", blob)
    folder = make_folder(Path(base) / sid, n=frames, bad=bad)
    cfg = load_config(env_for(base, f"dir:{folder}", blob, VERISEG_ANCHOR_EVERY=every, VERISEG_VIDEO=0, **env))
    run_main(build_flow(cfg))
    return cfg, key
