"""CARLA-C: a model's accuracy under weather, light and sensor conditions, in the spirit of
Cityscapes-C (Kamann & Rother, CVPR 2020) and ImageNet-C (Hendrycks & Dietterich, ICLR 2019).

    python -m trainer robustness --data DIR --model NEW.vsb --model OLD.vsb --out DIR

Each frame of the folder (or of its validation split) is scored clean and under every
condition of ``trainer.conditions.CONDITIONS`` at severities 1..3, applied to the camera
frame at its native size, before the network's resize, as a camera would see it.  A
condition's random draws come from ``benchmark_seed(seed, condition, severity, frame)``: the
same report on any machine, and the same corrupted frames for every model compared.

``robustness.json``: per model, the clean figures and per condition and severity pixel
accuracy, mIoU, Road and Car accuracy; ``mPA-C`` and ``mIoU-C`` are the means over every
condition and severity (each condition has all three, so this is also the mean over
conditions of their mean over severities).  ``robustness.png``: one frame under each
condition at severity 2: input, truth, and each model's prediction.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np

from .conditions import CONDITIONS, SEVERITIES, apply_condition, benchmark_seed
from .metrics import ConfusionMatrix, _text, resize_prediction
from .palette import colorize

__all__ = ["figures", "run_benchmark", "grid", "format_report", "format_summary", "main"]

GRID_SEVERITY = 2


def figures(cm: ConfusionMatrix) -> dict:
    """The four figures a report row carries (rounded as ``ConfusionMatrix.summary`` does)."""
    s = cm.summary()
    return {"pixel_accuracy": s["pixel_accuracy"], "mean_iou": s["mean_iou"],
            "road_accuracy": s["per_class"]["Road"]["accuracy"], "car_accuracy": s["per_class"]["Car"]["accuracy"]}


def _mean(rows: list[dict], key: str):
    vals = [r[key] for r in rows if r[key] is not None]
    return round(float(np.mean(vals)), 6) if vals else None


def run_benchmark(predictors: dict, images, labels, conditions=None, severities=SEVERITIES, seed: int = 0,
                  size: int = 512, grid_frame: int | None = None, log=print) -> tuple[dict, dict]:
    """Score every predictor (name -> fn uint8 NHWC [N, size, size, 3] -> class maps) on the frames
    (RGB uint8 [N, H, W, 3], labels [N, H, W]) clean and under each condition and severity.

    Returns (report: name -> {"clean", "conditions": {cond: {sev: figures}}, "mPA-C", "mIoU-C"},
    grid tiles: cond -> (image, truth, {name: prediction}) for ``grid_frame`` at GRID_SEVERITY)."""
    conditions = list(conditions or CONDITIONS)
    cells = [("clean", 0)] + [(c, s) for c in conditions for s in severities]
    cms = {n: {cell: ConfusionMatrix() for cell in cells} for n in predictors}
    tiles: dict = {}
    grid_sev = GRID_SEVERITY if GRID_SEVERITY in severities else severities[0]
    t0 = time.time()
    for i, (img, lab) in enumerate(zip(images, labels)):
        h, w = lab.shape
        for cond, sev in cells:
            x = img if cond == "clean" else apply_condition(cond, img, lab, sev, benchmark_seed(seed, cond, sev, i))
            net_in = cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA)[None]
            preds = {}
            for name, predict in predictors.items():
                p = resize_prediction(np.asarray(predict(net_in))[0], h, w)
                cms[name][(cond, sev)].update(p, lab)
                preds[name] = p
            if i == grid_frame and sev in (0, grid_sev):
                tiles[cond] = (x, lab, preds)
        if log and (i + 1) % 10 == 0:
            log(f"  {i + 1}/{len(images)} frames, {time.time() - t0:.0f}s")
    report = {}
    for name in predictors:
        rows = {c: {str(s): figures(cms[name][(c, s)]) for s in severities} for c in conditions}
        flat = [r for c in rows.values() for r in c.values()]
        report[name] = {"clean": figures(cms[name][("clean", 0)]), "conditions": rows,
                        "mPA-C": _mean(flat, "pixel_accuracy"), "mIoU-C": _mean(flat, "mean_iou"),
                        "mean_road_accuracy_c": _mean(flat, "road_accuracy"),
                        "per_condition": {c: {k: _mean(list(r.values()), k) for k in
                                              ("pixel_accuracy", "mean_iou", "road_accuracy", "car_accuracy")}
                                          for c, r in rows.items()}}
    return report, tiles


def grid(tiles: dict, names: list[str], tile_width: int = 200) -> np.ndarray:
    """Rows: clean, then each condition; columns: input, truth, each model's prediction."""
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


def format_report(report: dict) -> str:
    """Markdown: one row per condition and severity, one column per model (pixel acc. / mIoU / Road)."""
    names = list(report)

    def cell(d):
        def p(x):
            return "–" if x is None else f"{100 * x:.1f}"
        return f"{p(d['pixel_accuracy'])} / {p(d['mean_iou'])} / {p(d['road_accuracy'])}"
    out = ["| condition | severity | " + " | ".join(f"{n}: PA / mIoU / Road %" for n in names) + " |",
           "|---|---|" + "---|" * len(names)]
    out.append("| clean | – | " + " | ".join(cell(report[n]["clean"]) for n in names) + " |")
    first = report[names[0]]["conditions"]
    for c, sevs in first.items():
        for s in sevs:
            out.append(f"| {c} | {s} | " + " | ".join(cell(report[n]["conditions"][c][s]) for n in names) + " |")
    out.append("| **mPA-C / mIoU-C** | | " + " | ".join(
        f"**{100 * report[n]['mPA-C']:.1f} / {100 * report[n]['mIoU-C']:.1f}**" for n in names) + " |")
    return "\n".join(out)


def format_summary(report: dict) -> str:
    """Markdown: one row per model; clean, each condition's mean over severities and the means
    (pixel accuracy %, Road accuracy % in brackets)."""
    names = list(report)
    conds = list(report[names[0]]["per_condition"])

    def p(x):
        return "–" if x is None else f"{100 * x:.1f}"
    out = ["| model | clean | " + " | ".join(conds) + " | mPA-C | mIoU-C |",
           "|---|---:|" + "---:|" * (len(conds) + 2)]
    for n in names:
        r = report[n]
        cells = [f"{p(r['per_condition'][c]['pixel_accuracy'])} ({p(r['per_condition'][c]['road_accuracy'])})"
                 for c in conds]
        out.append(f"| {n} | {p(r['clean']['pixel_accuracy'])} ({p(r['clean']['road_accuracy'])}) | "
                   + " | ".join(cells) + f" | **{p(r['mPA-C'])}** | **{p(r['mIoU-C'])}** |")
    return "\n".join(out)


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
    conditions = a.conditions.split(",") if a.conditions else None
    for c in conditions or []:
        if c not in CONDITIONS:
            raise SystemExit(f"error: --conditions: unknown condition {c!r}; known: {', '.join(CONDITIONS)}")
    severities = tuple(int(s) for s in a.severities.split(","))
    for s in severities:
        if s not in SEVERITIES:
            raise SystemExit(f"error: --severities: {s} is not one of {SEVERITIES}")
    print(f"CARLA-C: {len(data)} frames ({data.names[0]}..{data.names[-1]}), {len(predictors)} model(s), "
          f"{len(conditions or CONDITIONS)} conditions x {len(severities)} severities, seed {a.seed}")
    t0 = time.time()
    report, tiles = run_benchmark(predictors, data.images, data.labels, conditions, severities, a.seed, a.size,
                                  grid_frame=len(data) // 2)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "CARLA-C", "seed": a.seed, "severities": list(severities),
           "conditions": {c: CONDITIONS[c].kind for c in (conditions or CONDITIONS)},
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
