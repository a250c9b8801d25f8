"""File replay of a labelled dataset through the same verified scoring flow -> a report.

    VERISEG_SOURCE=../shared/data/carla python -m bytewax.run dataflows.evaluate

The source is a dataset folder (``images/`` + ``labels/`` matched by file stem; labels
single-channel class ids, or the CARLA palette / Lyft red-channel format) or a CSV with
image and label columns.  Predictions are resized back to each label's native resolution
(nearest neighbour) before they are counted.  Writes to ``VERISEG_OUT`` (default ./out)
``eval/report.json`` (pixel accuracy, per-class accuracy and IoU, mIoU; also with the ego
car's hood rows excluded), ``eval/report.md``, ``eval/confusion.json``,
``eval/confusion.png`` and ``eval/grid.png`` (raw / truth / prediction, like the paper's
Figure 6), and prints pixel accuracy and mIoU.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import cv2
import numpy as np
import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from model_store.drive import palette_lut
from model_store.metrics import (ConfusionMatrix, confusion_image, format_table, grid_image, hood_mask,
                                  resize_prediction)
from model_store.palette import rgb_palette_to_ids
from operators.config import REPO_ROOT, ConfigError, load_config
from operators.context import FlowContext, VerisegFlow
from operators.frames import ScoredFrame
from operators.model_reader import verified_models
from operators.score import score
from operators.sources import read_frames
from operators.startup import flow_from_env, lazy_flow, start_flow

__all__ = ["build", "build_flow", "flow", "evaluate_results", "EvalSink", "read_label"]

GRID_FRAMES = 6

#: the labelled frames evaluate replays when VERISEG_SOURCE is unset
DEFAULT_DATASET = REPO_ROOT.parent / "shared" / "data" / "carla"


def read_label(path: str) -> np.ndarray:
    """Class ids [H, W] uint8 from a single-channel id image, a CARLA-palette RGB image or
    a Lyft-style image with the id in the red channel."""
    lab = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise ValueError(f"{path}: not a readable label image")
    if lab.ndim == 2:
        return lab.astype(np.uint8, copy=False)
    if lab.shape[2] == 4:
        lab = lab[..., :3]
    rgb = cv2.cvtColor(lab, cv2.COLOR_BGR2RGB)
    ids = rgb_palette_to_ids(rgb)
    return ids if ids is not None else np.ascontiguousarray(rgb[..., 0])


class _EvalPart(StatefulSinkPartition):
    def __init__(self, sink: "EvalSink", sid: str):
        self.sink = sink
        self.stats = sink.stats
        self.sid = sid
        n = len(sink.class_names)
        self.cm = ConfusionMatrix(n, sink.class_names)
        self.cm_nohood = ConfusionMatrix(n, sink.class_names)
        self.samples = []
        self.frames = 0
        self.unlabelled = 0
        self.keys = {}

    def write_batch(self, values):
        for r in values:
            if not isinstance(r, ScoredFrame):
                continue
            self.keys[r.model_key] = self.keys.get(r.model_key, 0) + 1
            if not r.label or not os.path.exists(r.label):
                self.unlabelled += 1
                continue
            try:
                truth = read_label(r.label)
            except ValueError as e:
                self.stats.bad_frame(self.sid, str(e))
                continue
            h, w = truth.shape
            pred = resize_prediction(r.class_map, h, w)
            self.cm.update(pred, truth)
            self.cm_nohood.update(pred, truth, mask=~hood_mask(h, w))
            self.frames += 1
            total = self.stats.totals.get(self.sid) or 0
            every = max(1, total // GRID_FRAMES) if total else 1
            if len(self.samples) < GRID_FRAMES and r.seq % every == every // 2 and r.raw is not None:
                raw = r.raw
                rgb = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB) if raw.ndim == 3 else raw
                self.samples.append((rgb, truth, pred))
            self.stats.add("written", self.sid)

    def snapshot(self):
        return None

    def close(self):
        self.sink.part_done(self)


class EvalSink(FixedPartitionedSink):
    def __init__(self, stats, out: Path, stream_ids, class_names, model_info: dict, lut=None):
        self.stats = stats
        self.lut = lut   # the model's class colours for the grid
        self.out = Path(out)
        self.sids = list(stream_ids)
        self.class_names = tuple(class_names)
        self.model_info = model_info
        self.parts = []
        self.lock = threading.Lock()
        self.report = None

    def list_parts(self):
        return list(self.sids)

    def part_fn(self, item_key: str) -> int:
        return sorted(self.sids).index(item_key)

    def build_part(self, step_id, for_part, resume_state):
        return _EvalPart(self, for_part)

    def part_done(self, part: _EvalPart):
        with self.lock:
            self.parts.append(part)
            if len(self.parts) < len(self.sids):
                return
        self.report = write_report(self.stats, self.out / "eval", self.parts, self.model_info, self.lut)


def write_report(stats, folder: Path, parts, model_info: dict, lut=None) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    names = parts[0].cm.names if parts else ()
    cm = ConfusionMatrix(len(names), names)
    cm_nh = ConfusionMatrix(len(names), names)
    samples, frames, unlabelled, keys = [], 0, 0, {}
    for p in parts:
        cm.merge(p.cm)
        cm_nh.merge(p.cm_nohood)
        samples += p.samples
        frames += p.frames
        unlabelled += p.unlabelled
        for k, v in p.keys.items():
            keys[k] = keys.get(k, 0) + v
    summ = cm.summary()
    nohood = cm_nh.summary()
    report = {"frames": frames, "frames_without_label": unlabelled,
              "bad_frames": sum(stats.bad.values()), "model": model_info,
              "frames_by_model_key": keys, "metrics": summ,
              "metrics_without_hood_rows": {
                  "pixel_accuracy": nohood["pixel_accuracy"], "mean_iou": nohood["mean_iou"],
                  "car_accuracy": nohood["per_class"].get("Car", {}).get("accuracy"),
                  "car_iou": nohood["per_class"].get("Car", {}).get("iou")},
              "resolution": "label native (predictions resized back, nearest neighbour)",
              "fps": round(stats.fps(), 3), "provider": stats.provider}
    (folder / "report.json").write_text(json.dumps(report, indent=1))
    (folder / "confusion.json").write_text(json.dumps(
        {"classes": list(names), "rows": "truth", "columns": "prediction",
         "matrix": cm.matrix.tolist()}, indent=None))
    cv2.imwrite(str(folder / "confusion.png"), cv2.cvtColor(confusion_image(cm), cv2.COLOR_RGB2BGR))
    if samples:
        g = grid_image([s[0] for s in samples], [s[1] for s in samples], [s[2] for s in samples], lut=lut)
        cv2.imwrite(str(folder / "grid.png"), cv2.cvtColor(g, cv2.COLOR_RGB2BGR))
    md = [f"# Evaluation: {frames} frames, model {model_info.get('key', '?')}", "",
          format_table(summ), "",
          f"Without the ego hood rows: pixel accuracy {_pct(nohood['pixel_accuracy'])}, "
          f"mIoU {_pct(nohood['mean_iou'])}, Car accuracy "
          f"{_pct(report['metrics_without_hood_rows']['car_accuracy'])}."]
    (folder / "report.md").write_text("\n".join(md) + "\n")
    line = (f"evaluate: {frames} frames: pixel accuracy {_pct(summ['pixel_accuracy'])}, "
            f"mIoU {_pct(summ['mean_iou'])} (report in {folder})")
    print(line, flush=True)
    return report


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.2f}%"


@operator
def evaluate_results(step_id: str, scored: Stream, ctx: FlowContext) -> None:
    """Count every scored frame against its label; the report is written when the last
    stream ends."""
    cfg, first = ctx.config, ctx.first
    names = [c.name for c in first.card.classes] if first.card is not None else []
    lut = palette_lut((c.color for c in first.card.classes), "RGB") if first.card is not None else None
    model = {"key": first.key, "name": getattr(first.card, "name", None), "source": first.source}
    op.output("report", scored, EvalSink(ctx.stats, cfg.out, cfg.stream_ids, names, model, lut))


def _config_from_env():
    """The flow's configuration, with the labelled dataset beside the checkout as the
    default source and anchoring off by default."""
    defaults = {"VERISEG_ANCHOR_EVERY": "0"}
    if DEFAULT_DATASET.is_dir():
        defaults["VERISEG_SOURCE"] = f"dir:{DEFAULT_DATASET}"
    cfg = load_config(defaults=defaults)
    if "source" not in cfg.model_fields_set:
        raise ConfigError(["VERISEG_SOURCE: set it to a dataset folder (images/ + labels/) "
                           "or a CSV with label paths"])
    return cfg


def build_flow(cfg=None, *, registry=None, decrypt_key=None) -> VerisegFlow:
    """The evaluation flow: the segment flow's frames, models and score, counted against
    the labels; raises ConfigError or ModelRefused (one line each)."""
    cfg = cfg or _config_from_env()
    bad = [s for s in cfg.source if s.kind not in ("dir", "csv")]
    if bad:
        raise ConfigError([f"VERISEG_SOURCE: evaluate replays a labelled dataset folder or CSV, "
                           f"not {s.kind} {s.target!r}" for s in bad])
    ctx = start_flow(cfg, registry=registry, decrypt_key=decrypt_key)
    flow = VerisegFlow("veriseg_evaluate", context=ctx)
    # the segment flow's frames (each keeps its picture as decoded), models and score;
    # counted against the labels instead of written out
    scored = score("score", read_frames("frames", flow, ctx, keep_raw=True),
                   verified_models("models", flow, ctx), ctx)
    evaluate_results("evaluate", scored, ctx)
    return flow


def build() -> VerisegFlow:
    """The flow from ``VERISEG_*`` (``python -m bytewax.run "dataflows.evaluate:build()"``)."""
    return flow_from_env(build_flow)


__getattr__ = lazy_flow(__name__, build)
