"""A live camera through the main job: frames dropped and capture-to-result latency.

    python -m bench live [--seconds 120] [--fps 30] [--size 800x600] [--source testsrc|rtsp|both]
                         [--backend auto] [--model models/carla-enet.vsb]

- ``testsrc``: ``videotestsrc is-live=true`` at the given size and rate (a camera that
  never waits for the flow: every frame the flow cannot take is dropped, counted as
  ``backpressure``);
- ``rtsp``: the same pattern H.264-encoded (openh264) by a loopback RTSP server
  (gst-rtsp-server) and read back through ``rtsp://``, decoding included.

The flow runs as ``python -m bytewax.run dataflows.segment`` with every default sink, for
``--seconds`` (``VERISEG_MAX_FRAMES`` = seconds x fps).  Reported from its summary:
frames scored and dropped by reason, and the p50/p99 of the ``total`` stage (decode
start to result written: capture-to-result on a live source).  Results:
``bench/results/live.json`` (``--out``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from ._environment import child_environment
from ._table import markdown
from .machine import free_port as _free_port

REPO = Path(__file__).resolve().parents[1]


class _Rtsp:
    """Loopback RTSP server of an H.264 live test pattern (openh264)."""

    def __init__(self, w: int, h: int, fps: int):
        import gi
        gi.require_version("GstRtspServer", "1.0")
        gi.require_version("Gst", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
        Gst.init(None)
        self.port = _free_port()
        self.ctx = GLib.MainContext.new()
        self.loop = GLib.MainLoop.new(self.ctx, False)
        self.server = GstRtspServer.RTSPServer.new()
        self.server.set_address("127.0.0.1")
        self.server.set_service(str(self.port))
        f = GstRtspServer.RTSPMediaFactory.new()
        f.set_launch(f"( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width={w},height={h},"
                     f"framerate={fps}/1 ! openh264enc ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )")
        f.set_shared(True)
        self.server.get_mount_points().add_factory("/cam", f)
        self.server.attach(self.ctx)
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"

    def stop(self):
        self.loop.quit()
        self.thread.join(5)


def run_one(kind: str, a, work: Path) -> dict:
    w, h = (int(v) for v in a.size.lower().split("x"))
    srv = None
    if kind == "rtsp":
        srv = _Rtsp(w, h, a.fps)
        source = f"cam@{srv.url}"
    else:
        source = (f"cam@gst:videotestsrc is-live=true pattern=ball ! "
                  f"video/x-raw,width={w},height={h},framerate={a.fps}/1")
    out = work / f"out-{kind}"
    env = child_environment(dict(VERISEG_SOURCE=source, VERISEG_MODEL=a.model,
                                 VERISEG_HOME=str(work / "home"), VERISEG_OUT=str(out),
                                 VERISEG_PROGRESS="0", VERISEG_MAX_FRAMES=str(a.seconds * a.fps),
                                 VERISEG_BACKEND=a.backend), path_first=REPO)
    t0 = time.time()
    try:
        p = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.segment"], env=env, cwd=str(work),
                           capture_output=True, text=True, timeout=a.seconds * 3 + 120)
        rc, tail = p.returncode, (p.stdout + p.stderr)[-1500:]
    except subprocess.TimeoutExpired as e:
        rc, tail = 124, str(e)[-500:]
    finally:
        if srv is not None:
            srv.stop()
    res = {"source": kind, "pipeline": source, "rc": rc, "wall_s": round(time.time() - t0, 1),
           "size": f"{w}x{h}", "fps_source": a.fps}
    summ = out / "summary.json"
    if not summ.exists():
        res["error"] = tail
        return res
    sm = json.loads(summ.read_text())
    lat = sm.get("latency", {})
    res.update(scored=sm.get("scored"), dropped=sm.get("dropped"),
               dropped_by_reason=sm.get("frames_dropped", {}).get("cam", {}), provider=sm.get("provider"),
               fps_scored=sm.get("fps"), capture_to_result_p50_ms=(lat.get("total") or {}).get("p50_ms"),
               capture_to_result_p99_ms=(lat.get("total") or {}).get("p99_ms"),
               score_p50_ms=(lat.get("score") or {}).get("p50_ms"))
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench live", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=120)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--size", default="800x600")
    p.add_argument("--source", choices=("testsrc", "rtsp", "both"), default="both")
    p.add_argument("--backend", default="auto")
    p.add_argument("--model", default=str(REPO / "models" / "carla-enet.vsb"))
    p.add_argument("--out", default="live")
    p.add_argument("--results", help="folder for the JSON (default bench/results)")
    a = p.parse_args(argv)
    a.model = str(Path(a.model).resolve())     # the flow runs in its own work folder
    rows = []
    sys.path.insert(0, str(REPO))
    import model_store
    from .perf import register
    with tempfile.TemporaryDirectory(prefix="veriseg-live-") as tmp:
        register(Path(tmp) / "home", Path(a.model), model_store.verify(a.model))
        for kind in (("testsrc", "rtsp") if a.source == "both" else (a.source,)):
            r = run_one(kind, a, Path(tmp))
            rows.append(r)
            print(json.dumps(r), flush=True)
    from .machine import save
    doc = {"rows": rows, "command": "python -m bench live " + " ".join(argv or sys.argv[1:])}
    path = save(a.out, doc, a.results)
    print(f"saved {path}")
    print("\n".join(markdown(
        ["live source", "scored", "dropped", "capture-to-result p50 / p99 ms", "backend"],
        [[f"{r['source']} {r['size']} @ {r['fps_source']} FPS, {a.seconds} s", r.get("scored"),
          r.get("dropped_by_reason") or r.get("dropped"),
          f"{r.get('capture_to_result_p50_ms')} / {r.get('capture_to_result_p99_ms')}", r.get("provider")]
         for r in rows])))
    return 0 if all(r.get("rc") == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
