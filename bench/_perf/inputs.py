"""What ``python -m bench perf`` measures on: the clip and its decoded frames, the model under
test (the trained blob or a random-weight ENet) and its rewritten variants, registered on the
bench's embedded chain."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np

from bench._environment import carla_dir_setting

REPO = Path(__file__).resolve().parents[2]


def carla_dir() -> Optional[Path]:
    for c in (carla_dir_setting(), REPO.parent / "shared" / "data" / "carla"):
        if c and (Path(c) / "images").is_dir():
            return Path(c)
    return None


def prepare_clip(work: Path, size: int, frames: int) -> tuple[Path, str]:
    import cv2
    vids = sorted(p for p in (REPO / "models").glob("*.avi")) if (REPO / "models").is_dir() else []
    if vids:
        return vids[0], f"committed clip {vids[0].relative_to(REPO)}"
    clip = work / "clip.avi"
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (size, size))
    d = carla_dir()
    if d is not None:
        imgs = sorted((d / "images").glob("*.jpg"))[:frames]
        for p in imgs:
            img = cv2.imread(str(p))
            w.write(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA))
        what = f"first {len(imgs)} CARLA frames of {d} resized to {size}x{size}, MJPG"
    else:
        from trainer.data import synthetic_scene
        rng = np.random.default_rng(0)
        for _ in range(frames):
            img, _ = synthetic_scene(rng, size, size)
            w.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        what = f"{frames} synthetic scenes {size}x{size}, MJPG"
    w.release()
    return clip, what


def decode_frames(clip: Path, size: int, limit: int) -> np.ndarray:
    """``limit`` frames of the clip (looped when it is shorter, as the flow replays it),
    resized and colour-converted exactly as the flow's preprocess stage does."""
    import cv2
    from operators.frames import Frame
    from operators.preprocess import Preprocessor
    pre = Preprocessor((size, size), "RGB")
    cap = cv2.VideoCapture(str(clip))
    out = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        out.append(pre(Frame("s", len(out), 0.0, "", img)).image)
        if len(out) >= limit:
            break
    if not out:
        raise SystemExit(f"error: no frame could be decoded from {clip}")
    n = len(out)
    return np.stack([out[i % n] for i in range(limit)]), n


def write_clip(path: Path, frames: np.ndarray) -> Path:
    """An MJPG clip of already-sized RGB frames (the flow then skips the resize)."""
    import cv2
    h, w = frames.shape[1:3]
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w, h))
    for f in frames:
        wr.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    wr.release()
    return path


def _card(size: int, name: str, description: str):
    from model_store import CARLA_CLASSES, ModelCard, TensorSpec
    t = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return ModelCard(name=name, description=description, algorithm="ENet", created=t, modified=t,
                     training_params={"weights": "random init"}, classes=CARLA_CLASSES,
                     scoring_function="uint8 NHWC RGB -> normalise -> ENet -> argmax -> uint8",
                     inputs=(TensorSpec("image", "uint8", ("N", size, size, 3), "NHWC", "RGB"),),
                     outputs=(TensorSpec("classes", "uint8", ("N", size, size), "NHW", None),),
                     metrics={}, onnx_opset=17)


def prepare_model(work: Path, size: int, random_model: bool = False) -> dict:
    """The model under test: the committed trained blob, else a random-weight ENet relu."""
    import model_store
    blob = REPO / "models" / "carla-enet.vsb"
    if blob.exists() and not random_model:
        key = model_store.verify(str(blob))
        card, onnx = model_store.load(str(blob), expected_key=key)
        if tuple(card.input_size) != (size, size):
            raise SystemExit(f"error: {blob} takes {card.input_size}, not {size}x{size}: pass --size")
        variant = "prelu" if "prelu" in (card.description or "").lower() else "relu"
        what = f"trained blob models/carla-enet.vsb ({card.description})"
        card_ = card
    else:
        from trainer.export import export_random
        variant = "relu"
        onnx = export_random(variant, size)
        blob = work / "model.vsb"
        card_ = _card(size, "bench-enet", "random-weight ENet relu")
        key = model_store.write(str(blob), onnx, card_)
        what = ("random-weight ENet relu exported by trainer.export ("
                + ("--random-model)" if random_model else "models/carla-enet.vsb absent)"))
    path = work / "model.onnx"
    path.write_bytes(onnx)
    return {"onnx": path, "blob": blob, "key": key, "variant": variant, "what": what, "card": card_}


def variant_blob(work: Path, model: dict, tag: str, onnx: bytes, what: str) -> dict:
    """A blob of a rewritten model (same card), registered on the bench's embedded chain."""
    import model_store
    blob = work / f"model-{tag}.vsb"
    key = model_store.write(str(blob), onnx, model["card"])
    register(work / "home", blob, key)
    path = work / f"model-{tag}.onnx"
    path.write_bytes(onnx)
    return dict(model, onnx=path, blob=blob, key=key, what=what)


def register(home: Path, blob: Path, key: str):
    import chain
    reg = chain.connect(chain="embedded", home=home)
    if not reg.status(key).registered:
        reg.register(key, "bench", blob.resolve().as_uri())
