"""CARLA-C: a model's accuracy under weather, light and sensor conditions and under other
cameras, in the spirit of Cityscapes-C (Kamann & Rother, CVPR 2020) and ImageNet-C (Hendrycks &
Dietterich, ICLR 2019).

    python -m trainer robustness --data DIR --model NEW.vsb --model OLD.vsb --out DIR

Each frame of the folder (or of its validation split) is scored clean and under every
condition of ``trainer.conditions.CONDITIONS`` at severities 1..3, applied to the camera
frame at its native size, before the network's resize, as a camera would see it.  A
condition's random draws come from ``benchmark_seed(seed, condition, severity, frame)``: the
same report on any machine, and the same corrupted frames for every model compared.

The *geometry* family (``trainer.geometry``) is scored the same way: severities 1..5 are fixed
camera changes (pitch, height, 16:9, hood, lens), and the stand-ins for the hidden sets
(``other_town``, ``other_camera``) are named ones.  A camera change moves the label with the
frame and may change the frame's size; each is scored against its own moved label.

``robustness.json``: per model, the clean figures and per condition and severity pixel
accuracy, mIoU, Road and Car accuracy; ``mPA-C`` and ``mIoU-C`` are the means over every
condition and severity (each condition has all three, so this is also the mean over
conditions of their mean over severities); ``mPA-G`` and ``mIoU-G`` the means over the
geometry severities (the stand-ins are reported on their own).  ``robustness.png``: one frame
under each condition at severity 2, geometry severity 3 and each stand-in: input, truth, and
each model's prediction.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from .conditions import CONDITIONS, SEVERITIES, apply_condition, benchmark_seed
from .geometry import GEOMETRY_SEVERITIES, SEVERITY_CHANGES, STAND_INS, benchmark_camera
from model_store.metrics import ConfusionMatrix, _text, resize_prediction
from model_store.palette import colorize

__all__ = ["figures", "run_benchmark", "grid", "format_report", "format_summary", "main"]

GRID_SEVERITY = 2
GRID_GEOMETRY = 3


def figures(cm: ConfusionMatrix) -> dict:
    """The four figures a report row carries (rounded as ``ConfusionMatrix.summary`` does)."""
    s = cm.summary()
    return {"pixel_accuracy": s["pixel_accuracy"], "mean_iou": s["mean_iou"],
            "road_accuracy": s["per_class"]["Road"]["accuracy"], "car_accuracy": s["per_class"]["Car"]["accuracy"]}


def _mean(rows: list[dict], key: str):
    vals = [r[key] for r in rows if r[key] is not None]
    return round(float(np.mean(vals)), 6) if vals else None


def _cell_frame(cell, img, lab, seed: int, frame: int):
    """The frame and label a cell of the benchmark scores."""
    kind, which = cell
    if kind == "clean":
        return img, lab
    if kind in ("geometry", "stand_in"):
        return benchmark_camera(which, img, lab)
    return apply_condition(kind, img, lab, which, benchmark_seed(seed, kind, which, frame)), lab


def run_benchmark(predictors: dict, images, labels, conditions=None, severities=SEVERITIES, seed: int = 0,
                  size: int = 512, grid_frame: int | None = None, log=print, geometry=(), stand_ins=()
                  ) -> tuple[dict, dict]:
    """Score every predictor (name -> fn uint8 NHWC [N, size, size, 3] -> class maps) on the frames
    (RGB uint8 [N, H, W, 3], labels [N, H, W]) clean, under each condition and severity
    (``conditions`` None: all; [] none), each ``geometry`` severity and each named ``stand_ins``.

    Returns (report: name -> {"clean", "conditions": {cond: {sev: figures}}, "mPA-C", "mIoU-C",
    "geometry": {sev: figures}, "stand_ins": {name: figures}, "mPA-G", "mIoU-G"}, grid tiles:
    row name -> (image, truth, {name: prediction}) for ``grid_frame``)."""
    conditions = list(CONDITIONS) if conditions is None else list(conditions)
    cells = [("clean", 0)] + [(c, s) for c in conditions for s in severities] + \
        [("geometry", s) for s in geometry] + [("stand_in", n) for n in stand_ins]
    cms = {n: {cell: ConfusionMatrix() for cell in cells} for n in predictors}
    tiles: dict = {}
    grid_sev = GRID_SEVERITY if GRID_SEVERITY in severities else (severities[0] if severities else None)
    grid_geo = GRID_GEOMETRY if GRID_GEOMETRY in geometry else (geometry[0] if geometry else None)
    t0 = time.time()
    for i, (img, lab) in enumerate(zip(images, labels)):
        for cell in cells:
            x, truth = _cell_frame(cell, img, lab, seed, i)
            h, w = truth.shape
            net_in = cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA)[None]
            preds = {}
            for name, predict in predictors.items():
                p = resize_prediction(np.asarray(predict(net_in))[0], h, w)
                cms[name][cell].update(p, truth)
                preds[name] = p
            if i == grid_frame:
                kind, which = cell
                if kind == "clean" or (kind in conditions and which == grid_sev):
                    tiles[kind] = (x, truth, preds)
                elif kind == "geometry" and which == grid_geo:
                    tiles[f"geometry {which}"] = (x, truth, preds)
                elif kind == "stand_in":
                    tiles[which] = (x, truth, preds)
        if log and (i + 1) % 10 == 0:
            log(f"  {i + 1}/{len(images)} frames, {time.time() - t0:.0f}s")
    report = {}
    for name in predictors:
        rows = {c: {str(s): figures(cms[name][(c, s)]) for s in severities} for c in conditions}
        flat = [r for c in rows.values() for r in c.values()]
        geo = {str(s): figures(cms[name][("geometry", s)]) for s in geometry}
        report[name] = {"clean": figures(cms[name][("clean", 0)]), "conditions": rows,
                        "mPA-C": _mean(flat, "pixel_accuracy"), "mIoU-C": _mean(flat, "mean_iou"),
                        "mean_road_accuracy_c": _mean(flat, "road_accuracy"),
                        "per_condition": {c: {k: _mean(list(r.values()), k) for k in
                                              ("pixel_accuracy", "mean_iou", "road_accuracy", "car_accuracy")}
                                          for c, r in rows.items()},
                        "geometry": geo, "stand_ins": {n: figures(cms[name][("stand_in", n)]) for n in stand_ins},
                        "mPA-G": _mean(list(geo.values()), "pixel_accuracy"),
                        "mIoU-G": _mean(list(geo.values()), "mean_iou"),
                        "mean_road_accuracy_g": _mean(list(geo.values()), "road_accuracy")}
    return report, tiles


def grid(tiles: dict, names: list[str], tile_width: int = 200) -> np.ndarray:
    """Rows: clean, then each condition, geometry severity and stand-in; columns: input, truth,
    each model's prediction (a row as tall as its frame's aspect)."""
    rows = []
    for cond, (img, lab, preds) in tiles.items():
        h, w = lab.shape
        th = int(round(tile_width * h / w))
        cells = [cv2.resize(img, (tile_width, th), interpolation=cv2.INTER_AREA),
                 cv2.resize(colorize(lab), (tile_width, th), interpolation=cv2.INTER_NEAREST)]
        cells += [cv2.resize(colorize(preds[n]), (tile_width, th), interpolation=cv2.INTER_NEAREST) for n in names]
        row = np.concatenate([np.pad(c, ((1, 1), (1, 1), (0, 0)), constant_values=255) for c in cells], 1)
        _text(row, cond, (6, 16), scale=0.45)
        rows.append(row)
    head = np.full((22, rows[0].shape[1], 3), 255, np.uint8)
    for k, s in enumerate(["input", "truth"] + names):
        cv2.putText(head, s[:28], (6 + k * (tile_width + 2), 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return np.concatenate([head] + rows, 0)


def _pct(x):
    return "–" if x is None else f"{100 * x:.1f}"


def format_report(report: dict) -> str:
    """Markdown: one row per condition and severity, geometry severity and stand-in, one column
    per model (pixel acc. / mIoU / Road)."""
    names = list(report)

    def cell(d):
        return f"{_pct(d['pixel_accuracy'])} / {_pct(d['mean_iou'])} / {_pct(d['road_accuracy'])}"
    out = ["| condition | severity | " + " | ".join(f"{n}: PA / mIoU / Road %" for n in names) + " |",
           "|---|---|" + "---|" * len(names)]
    out.append("| clean | – | " + " | ".join(cell(report[n]["clean"]) for n in names) + " |")
    first = report[names[0]]
    for c, sevs in first["conditions"].items():
        for s in sevs:
            out.append(f"| {c} | {s} | " + " | ".join(cell(report[n]["conditions"][c][s]) for n in names) + " |")
    if first["conditions"]:
        out.append("| **mPA-C / mIoU-C** | | " + " | ".join(
            f"**{_pct(report[n]['mPA-C'])} / {_pct(report[n]['mIoU-C'])}**" for n in names) + " |")
    for s in first.get("geometry", {}):
        out.append(f"| geometry | {s} | " + " | ".join(cell(report[n]["geometry"][s]) for n in names) + " |")
    if first.get("geometry"):
        out.append("| **mPA-G / mIoU-G** | | " + " | ".join(
            f"**{_pct(report[n]['mPA-G'])} / {_pct(report[n]['mIoU-G'])}**" for n in names) + " |")
    for k in first.get("stand_ins", {}):
        out.append(f"| {k} | stand-in | " + " | ".join(cell(report[n]["stand_ins"][k]) for n in names) + " |")
    return "\n".join(out)


def format_summary(report: dict) -> str:
    """Markdown: one row per model; clean, each condition's mean over severities and the means,
    the geometry severities' mean and each stand-in (pixel accuracy %, Road accuracy % in brackets)."""
    names = list(report)
    first = report[names[0]]
    conds = list(first["per_condition"])
    stand = list(first.get("stand_ins", {}))
    geo = bool(first.get("geometry"))
    head = ["clean", *conds] + (["mPA-C", "mIoU-C"] if conds else []) + (["geometry", "mIoU-G"] if geo else []) + stand
    out = ["| model | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for n in names:
        r = report[n]
        cells = [f"{_pct(r['clean']['pixel_accuracy'])} ({_pct(r['clean']['road_accuracy'])})"]
        cells += [f"{_pct(r['per_condition'][c]['pixel_accuracy'])} ({_pct(r['per_condition'][c]['road_accuracy'])})"
                  for c in conds]
        if conds:
            cells += [f"**{_pct(r['mPA-C'])}**", f"**{_pct(r['mIoU-C'])}**"]
        if geo:
            cells += [f"**{_pct(r['mPA-G'])}** ({_pct(r['mean_road_accuracy_g'])})", f"**{_pct(r['mIoU-G'])}**"]
        cells += [f"{_pct(r['stand_ins'][k]['pixel_accuracy'])} ({_pct(r['stand_ins'][k]['road_accuracy'])})"
                  for k in stand]
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _names(arg: str, known, flag: str, noun: str, convert=str) -> list:
    """A comma-separated CLI list ('none': empty), each checked against ``known``."""
    if arg.strip() == "none":
        return []
    out = []
    for item in arg.split(","):
        try:
            v = convert(item.strip())
        except ValueError:
            v = item.strip()
        if v not in known:
            raise SystemExit(f"error: --{flag}: unknown {noun} {v!r}; "
                             f"known: {', '.join(map(str, known))} (or none)")
        out.append(v)
    return out


def main(a) -> int:
    from .evaluate import load_split, make_predictor
    data = load_split(a, limit=a.limit)
    if a.frames and a.frames < len(data):       # evenly spread over the split, not its first N
        data = data.subset(np.linspace(0, len(data) - 1, a.frames).round().astype(int).tolist())
    predictors, descs = {}, {}
    for m in a.model:
        name = Path(m).stem
        if name in predictors:
            name = f"{name}#{len(predictors)}"
        predictors[name], descs[name] = make_predictor(m, a.size, a.threads)
    conditions = _names(a.conditions, list(CONDITIONS), "conditions", "condition") if a.conditions else list(CONDITIONS)
    severities = tuple(_names(a.severities, SEVERITIES, "severities", "severity", int))
    geometry = tuple(_names(a.geometry, GEOMETRY_SEVERITIES, "geometry", "geometry severity", int))
    stand_ins = tuple(_names(a.stand_ins, list(STAND_INS), "stand-ins", "stand-in"))
    print(f"CARLA-C: {len(data)} frames ({data.names[0]}..{data.names[-1]}), {len(predictors)} model(s), "
          f"{len(conditions)} conditions x {len(severities)} severities, geometry {list(geometry)}, "
          f"stand-ins {list(stand_ins)}, seed {a.seed}")
    t0 = time.time()
    report, tiles = run_benchmark(predictors, data.images, data.labels, conditions, severities, a.seed, a.size,
                                  grid_frame=len(data) // 2, geometry=geometry, stand_ins=stand_ins)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "CARLA-C", "seed": a.seed, "severities": list(severities),
           "conditions": {c: CONDITIONS[c].kind for c in conditions},
           "geometry": {"severities": {str(s): asdict(SEVERITY_CHANGES[s]) for s in geometry},
                        "stand_ins": {n: asdict(STAND_INS[n]) for n in stand_ins}},
           "frames": {"count": len(data), "first": data.names[0], "last": data.names[-1], "split": a.split,
                      "val_fraction": a.val_fraction, "val_at": a.val_at, "gap": a.gap},
           "network_input": a.size, "models": {n: descs[n] for n in predictors}, "results": report,
           "seconds": round(time.time() - t0, 1)}
    (out / "robustness.json").write_text(json.dumps(doc, indent=1))
    cv2.imwrite(str(out / "robustness.png"), cv2.cvtColor(grid(tiles, list(predictors)), cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(format_report(report))
    print()
    print(format_summary(report))
    print(f"wrote {out}/robustness.json, robustness.png ({doc['seconds']:.0f}s)")
    return 0
