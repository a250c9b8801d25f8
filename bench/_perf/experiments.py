"""The experiments of ``python -m bench perf``: one setting changed at a time against the
baseline (ONNX Runtime options, graph rewrites, int8, PyTorch, the flow's own settings), the
ORT profile and the decoder/writer costs."""
from __future__ import annotations

import time
from pathlib import Path

from .inputs import REPO, carla_dir, variant_blob, write_clip
from .suite import Suite, run_flow


def int8_variants(s: Suite, model: dict, size: int, calib_n: int) -> tuple[list, dict]:
    """Quantised models (written to the work folder) and their accuracy vs fp32."""
    from trainer import optimize as opt
    from trainer.ort_session import run_model
    d = carla_dir()
    onnx = model["onnx"].read_bytes()
    info = {"weights": model["what"]}
    if d is None:
        s.log("  int8: no CARLA frames: skipped")
        return [], {"skipped": "no CARLA frames"}
    calib, val, lab = opt.calibration_frames(d, size, calib_n)
    val, lab = val[-30:], lab[-30:]
    # a random-weight model says nothing about accuracy: use the newest trained
    # checkpoint when the blob is not committed yet
    acc_onnx = onnx
    if "random" in model["what"]:
        ck = sorted((REPO / "runs").glob("carla-*/best.pt"), key=lambda p: p.stat().st_mtime)
        if ck:
            try:
                from trainer.export import export_onnx
                from trainer.checkpoints import load_checkpoint
                net, c = load_checkpoint(ck[-1])
                acc_onnx = export_onnx(net, size)
                info["weights"] = (f"accuracy on checkpoint {ck[-1].relative_to(REPO)} (epoch "
                                   f"{c.get('state', {}).get('epoch')}, training still running); "
                                   "speed on the random-weight model")
            except Exception as e:  # noqa: BLE001 - a checkpoint being rewritten: fall back
                info["weights"] += f" (checkpoint unreadable: {type(e).__name__})"
    ref = run_model(acc_onnx, val)
    info.update(calibration_frames=len(calib), validation_frames=len(val),
                validation="last 30 frames of the time-split validation part (last 20%), labels resized "
                           f"to {size}x{size} (nearest)",
                fp32_pixel_accuracy=round(opt.pixel_accuracy(ref, lab), 4))
    out = []
    for name, kw, pad in (("int8 QDQ per-channel", {"per_channel": True}, False),
                          ("int8 QDQ per-tensor", {"per_channel": False}, False),
                          ("int8 QDQ per-channel, pad-as-conv graph", {"per_channel": True}, True)):
        t = time.perf_counter()
        try:
            src, src_acc = onnx, acc_onnx
            if pad:
                src = opt.channel_pad_as_conv(onnx, check=False)
                src_acc = src if acc_onnx is onnx else opt.channel_pad_as_conv(acc_onnx, check=False)
            q = opt.quantize_int8(src, calib, **kw)
            qa = q if src_acc is src else opt.quantize_int8(src_acc, calib, **kw)
        except Exception as e:  # noqa: BLE001 - report, keep the suite going
            s.log(f"  {name}: quantisation failed: {type(e).__name__}: {e}")
            info[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
            continue
        got = run_model(qa, val)
        p = s.work / f"{name.replace(' ', '_')}.onnx"
        p.write_bytes(q)
        info[name] = {"pixel_accuracy": round(opt.pixel_accuracy(got, lab), 4),
                      "agreement_with_fp32": round(opt.pixel_agreement(got, ref), 4),
                      "quantise_s": round(time.perf_counter() - t, 1)}
        out.append((name, p, info[name]))
    return out, info


def run_experiments(s: Suite, a, R: dict, base: dict, model: dict, clip: Path, fpath: Path, work: Path,
                    frames, clip_len: int) -> None:
    """One setting changed at a time (raw ORT, int8, PyTorch, the flow), the ORT profile and
    the decoder/writer costs, into ``R``; ``base`` is the raw ORT child spec of the main table."""
    from trainer.optimize import op_counts
    size = a.size
    onnx_bytes = model["onnx"].read_bytes()
    print("== experiments: raw ORT", flush=True)
    ex = []
    o = base["ort"]
    for label, ort in (("baseline = flow settings (all, 2 thr, no spin)", o),
                       ("spinning on (ORT default)", dict(o, spin=1)),
                       ("level extended", dict(o, level="extended")),
                       ("level basic", dict(o, level="basic")),
                       ("level disable", dict(o, level="disable")),
                       ("intra 1 thread", dict(o, intra=1)),
                       ("parallel mode, inter 2", dict(o, mode="parallel", inter=2)),
                       ("level extended, spinning on", dict(o, level="extended", spin=1))):
        ex.append(s.child(dict(base, ort=ort), f"ORT {label}"))
    ex.append(s.child(dict(base, batch=2), "ORT batch 2"))
    ex.append(s.child(dict(base, kind="ort_frames", workers=2), "ORT 2 frames in flight, 1 thread each"))
    from trainer.export import export_random
    pr = work / "prelu.onnx"
    pr.write_bytes(export_random("prelu", size))
    rl = work / "relu.onnx"
    rl.write_bytes(export_random("relu", size))
    ex.append(s.child(dict(base, model=str(rl)), "ORT random relu (same graph, random w.)"))
    ex.append(s.child(dict(base, model=str(pr)), "ORT random prelu"))
    from trainer.optimize import channel_pad_as_conv, ort_optimized
    try:
        padconv = variant_blob(work, model, "padconv", channel_pad_as_conv(onnx_bytes),
                               model["what"] + ", channel padding as 1x1 identity conv")
        R["inputs"]["padconv_ops_after_ort_all"] = op_counts(ort_optimized(padconv["onnx"].read_bytes(), "all"))
        R["inputs"]["ops_after_ort_all"] = op_counts(ort_optimized(onnx_bytes, "all"))
        ex.append(s.child(dict(base, model=str(padconv["onnx"])), "ORT channel pad as 1x1 conv (exact)"))
        ex.append(s.child(dict(base, model=str(padconv["onnx"]), ort=dict(o, intra=1)),
                          "ORT channel pad as 1x1 conv, intra 1"))
        from trainer.optimize import convtranspose_as_conv
        sp = work / "model-padconv-subpixel.onnx"
        sp.write_bytes(convtranspose_as_conv(padconv["onnx"].read_bytes()))
        ex.append(s.child(dict(base, model=str(sp)), "ORT pad as conv + ConvTranspose as sub-pixel conv"))
    except Exception as e:  # noqa: BLE001 - report, keep the suite going
        padconv = None
        s.log(f"  channel_pad_as_conv failed: {type(e).__name__}: {e}")
    off = work / "offline-extended.onnx"
    off.write_bytes(ort_optimized(onnx_bytes, "extended"))
    ex.append(s.child(dict(base, model=str(off), ort=dict(o, level="all")),
                      "ORT offline-optimised (extended) + all"))
    print("== experiments: int8", flush=True)
    q, qinfo = int8_variants(s, model, size, a.calib)
    for name, path, info in q:
        r = s.child(dict(base, model=str(path)), f"ORT {name}")
        r.update(info)
        ex.append(r)
    R["int8"] = qinfo
    print("== experiments: PyTorch", flush=True)
    tb = {"kind": "torch", "frames": str(fpath), "variant": model["variant"], "threads": a.threads,
          "seconds": a.seconds, "min_frames": 10}
    ex.append(s.child(dict(tb, channels_last=True), "PyTorch eager channels_last"))
    ex.append(s.child(dict(tb, channels_last=True, bf16=True), "PyTorch eager channels_last bf16 autocast"))
    R["experiments_raw"] = ex
    print("== where the time goes", flush=True)
    pr_ = s.child({"kind": "profile", "model": str(model["onnx"]), "frames": str(fpath), "ort": base["ort"]},
                  "ORT profile")
    R["profile"] = pr_
    if "ops" in pr_:
        print("  " + ", ".join(f"{o['op']} {o['ms']} ms" for o in pr_["ops"][:8]), flush=True)
    sc = s.child({"kind": "sinkcost", "frames": str(fpath), "clip": str(clip)}, "decoder/writer costs")
    R["sink_costs"] = sc
    if "ms" in sc:
        print("  " + ", ".join(f"{k} {v}" for k, v in sc["ms"].items()), flush=True)
    print("== experiments: flow", flush=True)
    fx = []
    clip512 = write_clip(work / f"clip{size}.avi", frames[:clip_len])
    for label, extra, c in (("flow spinning on", {"VERISEG_ORT_SPIN": "1"}, clip),
                            ("flow batch 4", {"VERISEG_BATCH": "4"}, clip),
                            ("flow masks+video off (jsonl, anchors)", {"VERISEG_MASKS": "0", "VERISEG_VIDEO": "0"}, clip),
                            ("flow overlay video at half size (VIDEO_SCALE 0.5)", {"VERISEG_VIDEO_SCALE": "0.5"}, clip),
                            ("flow 1 ORT thread", {"VERISEG_THREADS": "1"}, clip),
                            ("flow decoder/writers niced (AUX_NICE 10)", {"VERISEG_AUX_NICE": "10"}, clip),
                            (f"flow on a {size}² clip (no resize)", {}, clip512)):
        fx.append(run_flow(s, model, c, label=label, frames=a.frames, extra=extra))
    if padconv is not None:
        fx.append(run_flow(s, padconv, clip, label="flow, channel-pad-as-conv model", frames=a.frames))
        fx.append(run_flow(s, padconv, clip, label="flow, channel-pad-as-conv model, 2 workers", workers=2,
                           frames=a.frames))
    R["experiments_flow"] = fx
