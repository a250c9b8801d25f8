"""Blob throughput: pack, verify and load of a 1.5 MB and a 100 MB model, in MB/s.

The payload is float32 noise shaped like trained weights (it barely compresses, as
real fp32 weights do), so the figures are a floor for real models.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import model_store as ms

from ._table import columns
from .machine import save

CARD = ms.ModelCard(
    name="bench",
    description="throughput benchmark payload",
    algorithm="ENet",
    created="2026-11-25T00:00:00Z",
    modified="2026-11-25T00:00:00Z",
    training_params={},
    classes=ms.CARLA_CLASSES,
    scoring_function="bench",
    inputs=(ms.TensorSpec("image", "uint8", ("N", 512, 512, 3), "NHWC", "RGB"),),
    outputs=(ms.TensorSpec("classes", "uint8", ("N", 512, 512), "NHW"),),
)


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def run(size_mb: float, repeat: int, level: int) -> dict:
    rng = np.random.default_rng(0)
    payload = (rng.standard_normal(int(size_mb * 1e6 / 4)) * 0.05).astype(np.float32).tobytes()
    mb = len(payload) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.vsb"
        key = ms.write(path, payload, CARD, level=level)
        blob_size = path.stat().st_size
        t_pack = _best(lambda: ms.pack(payload, CARD, level=level), repeat)
        t_write = _best(lambda: ms.write(path, payload, CARD, level=level), repeat)
        t_verify = _best(lambda: ms.verify(path, key), repeat)
        t_load = _best(lambda: ms.load(path, key, check_graph=False), repeat)  # the payload is noise, not a graph
    return {
        "model_mb": round(mb, 2),
        "blob_mb": round(blob_size / 1e6, 2),
        "ratio": round(blob_size / len(payload), 3),
        "zstd_level": level,
        "pack_mb_s": round(mb / t_pack, 1),
        "write_mb_s": round(mb / t_write, 1),
        "verify_mb_s": round(mb / t_verify, 1),
        "load_mb_s": round(mb / t_load, 1),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench model_store")
    p.add_argument("--sizes", type=float, nargs="+", default=[1.5, 100.0])
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    # Level 19 only on the small model: it is ~40x slower to pack and barely smaller.
    rows = [run(s, args.repeat, level) for s in args.sizes for level in ((3, 19) if s < 10 else (3,))]
    keys = ("model_mb", "blob_mb", "zstd_level", "pack_mb_s", "write_mb_s", "verify_mb_s", "load_mb_s")
    lines = columns(["model MB", "blob MB", "level", "pack", "write", "verify", "load"],
                    [[r[k] for k in keys] for r in rows], (9, 8, 5, 8, 8, 8, 8))
    print("\n".join([lines[0] + "  (MB/s of model)", *lines[1:]]))
    print(f"saved {save('model_store', rows)}")
    return 0
