"""python -m trainer train | evaluate | robustness | export | clip | quantize"""
from __future__ import annotations

import argparse
import sys


def _add_split_args(p: argparse.ArgumentParser) -> None:
    """The time split, shared by train and evaluate so both pick the same frames."""
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--val-at", choices=("end", "start"), default="end",
                   help="validate on the drive's last (default) or first --val-fraction")
    p.add_argument("--gap", type=int, default=10)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train ENet")
    t.add_argument("--data", default="synthetic", help="folder with images/ + labels/, or 'synthetic'")
    t.add_argument("--out", default="runs/enet")
    t.add_argument("--epochs", type=int)
    t.add_argument("--minutes", type=float, help="wall-clock budget; fits the epoch count to it")
    t.add_argument("--size", type=int, default=320, help="training crop size")
    t.add_argument("--load-size", type=int, default=512)
    t.add_argument("--eval-size", type=int, default=512)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--scale", type=float, nargs=2, default=(0.5, 1.5), metavar=("MIN", "MAX"))
    t.add_argument("--weight-c", type=float, default=1.02, help="class weights 1/ln(c+p)")
    t.add_argument("--rare-crops", type=float, default=0.0, metavar="P",
                   help="share of crops centred on a pixel of a rare class (0: off)")
    t.add_argument("--class-mix", type=float, default=0.0, metavar="P",
                   help="share of samples given ClassMix from another sample of the batch (0: off)")
    t.add_argument("--conditions", type=float, default=0.0, metavar="P",
                   help="share of crops given a random weather/light/sensor condition (0: off)")
    t.add_argument("--geometry", type=float, default=0.0, metavar="P",
                   help="share of frames seen by another camera: height, pitch, field of view, aspect, hood, "
                        "lens (0: off)")
    t.add_argument("--consistency", type=float, default=0.0, metavar="W",
                   help="weight of the clean-vs-condition Jensen-Shannon loss (0: off; 2x compute a step)")
    t.add_argument("--lovasz", type=float, default=0.0, metavar="W",
                   help="weight of the Lovász-softmax loss (a per-class IoU surrogate) beside the "
                        "cross-entropy (0: off)")
    t.add_argument("--init", metavar="CHECKPOINT", help="start from this checkpoint's EMA weights (a fine-tune)")
    t.add_argument("--variant", choices=("prelu", "relu"), default="relu")
    t.add_argument("--dropout", type=float, default=0.1)
    t.add_argument("--ema", type=float, default=0.99, help="EMA decay of the weights (0: off)")
    _add_split_args(t)
    t.add_argument("--val-every", type=int, default=1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    t.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--workers", type=int,
                   help="augment in N worker processes (default: 0 on the CPU, min(8, cores - 1) on CUDA, "
                        "which augmentation in the loop starves); the batches are the same for any N")
    t.add_argument("--no-channels-last", action="store_true")
    t.add_argument("--limit", type=int)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--no-progress", action="store_true")

    e = sub.add_parser("evaluate", help="evaluate a checkpoint or an .onnx/.vsb model on a folder")
    e.add_argument("--model", required=True, help="checkpoint .pt, .onnx or .vsb")
    e.add_argument("--data", required=True)
    e.add_argument("--split", choices=("val", "train", "all"), default="val")
    _add_split_args(e)
    e.add_argument("--size", type=int, default=512, help="network input size")
    e.add_argument("--out", default="runs/eval")
    e.add_argument("--grid", type=int, default=6, help="frames in the Figure-6 grid")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--no-ema", action="store_true", help="checkpoint: use the raw weights, not the EMA")

    r = sub.add_parser("robustness", help="CARLA-C: score models under weather, light and sensor conditions "
                                          "and other cameras")
    r.add_argument("--model", required=True, action="append",
                   help="checkpoint .pt, .onnx or .vsb; repeat to compare models side by side")
    r.add_argument("--data", required=True)
    r.add_argument("--split", choices=("val", "train", "all"), default="val")
    _add_split_args(r)
    r.add_argument("--frames", type=int, help="score this many frames spread evenly over the split (default: all)")
    r.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    r.add_argument("--conditions", help="comma-separated subset (default: all; none: only clean and geometry)")
    r.add_argument("--severities", default="1,2,3")
    r.add_argument("--geometry", default="1,2,3,4,5",
                   help="camera-geometry severities (trainer.geometry; none: skip)")
    r.add_argument("--stand-ins", default="other_town,other_camera",
                   help="named camera stand-ins for the hidden sets (none: skip)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--size", type=int, default=512, help="network input size")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--out", default="runs/robustness")

    x = sub.add_parser("export", help="export a checkpoint to ONNX and pack a .vsb blob")
    x.add_argument("--checkpoint", required=True)
    x.add_argument("-o", "--output", required=True, help=".vsb (packed) or .onnx")
    x.add_argument("--size", type=int, default=512)
    x.add_argument("--opset", type=int, default=17)
    x.add_argument("--no-ema", action="store_true")
    x.add_argument("--plain-graph", action="store_true",
                   help="skip the exact graph rewrite (channel Pad as identity conv) done for ORT's CPU speed")
    x.add_argument("--check-data", help="folder of real frames for the equivalence check")
    x.add_argument("--metrics", help="evaluation JSON to put in the model card")
    x.add_argument("--name", default="carla-enet")
    x.add_argument("--record", help="write the training record JSON here (e.g. models/carla-enet.json)")
    x.add_argument("--fps", type=float, default=0, help="measure ORT CPU FPS for this many seconds")
    x.add_argument("--register", action="store_true", help="register the key on the chain")
    x.add_argument("--deploy", metavar="NAME", help="also point deployment NAME at the key")
    x.add_argument("--chain", default="embedded")
    x.add_argument("--registry")

    from .quantize import add_parser as add_quantize
    add_quantize(sub)

    c = sub.add_parser("clip", help="write a sample MJPG clip from consecutive frames")
    c.add_argument("--data", required=True)
    c.add_argument("-o", "--output", default="models/sample.avi")
    c.add_argument("--first", help="stem of the first frame (default: the last --frames frames)")
    c.add_argument("--frames", type=int, default=60)
    c.add_argument("--fps", type=float, default=10.0)
    c.add_argument("--size", type=int, nargs=2, metavar=("W", "H"))
    c.add_argument("--quality", type=int, default=90)

    a = ap.parse_args(argv)
    if a.cmd == "quantize":
        from .quantize import main as qz
        return qz(a)
    if a.cmd == "clip":
        from .clip import write_clip
        print(write_clip(a.data, a.output, a.first, a.frames, a.fps, tuple(a.size) if a.size else None, a.quality))
        return 0
    if a.cmd == "train":
        from .train import TrainConfig, train
        cfg = TrainConfig(data=a.data, out=a.out, epochs=a.epochs, minutes=a.minutes, size=a.size,
                          load_size=a.load_size, eval_size=a.eval_size, batch=a.batch, lr=a.lr,
                          weight_decay=a.weight_decay, scale_min=a.scale[0], scale_max=a.scale[1],
                          weight_c=a.weight_c, rare_crops=a.rare_crops, class_mix=a.class_mix,
                          conditions=a.conditions, geometry=a.geometry, consistency=a.consistency, lovasz=a.lovasz, init=a.init,
                          variant=a.variant, dropout=a.dropout, ema=a.ema,
                          val_fraction=a.val_fraction, val_at=a.val_at, gap=a.gap, val_every=a.val_every, seed=a.seed,
                          device=a.device, amp=a.amp, threads=a.threads, workers=a.workers, limit=a.limit,
                          channels_last=not a.no_channels_last,
                          progress=not a.no_progress)
        train(cfg, resume=a.resume)
        return 0
    if a.cmd == "evaluate":
        from .evaluate import main as ev
        return ev(a)
    if a.cmd == "robustness":
        from .robustness import main as rb
        return rb(a)
    if a.cmd == "export":
        from .export import main as ex
        return ex(a)
    return 2


if __name__ == "__main__":
    sys.exit(main())
