"""GStreamer sources: a videotestsrc pipeline and a loopback RTSP server, through the flow.

These run only in a child pytest process started by ``test_gst_sources.py``
(``VERISEG_GST_CHILD=1``; the file name keeps the main run from collecting it): with OpenCV/numpy already loaded, ``Gst.init`` in a process
that later runs ``torch.onnx.export`` aborts it (``terminate called after throwing an
instance of 'pybind11::stop_iteration'`` / SIGSEGV), which would kill the trainer tests.
Skipped when GStreamer/PyGObject are missing, unless CI=true (then they fail).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time

import pytest
from bytewax.testing import run_main

from dataflows.segment import build_flow
from tests.flow_fixtures import FakeRegistry, env_for, make_blob, read_jsonl
from operators.config import SourceSpec, load_config
from operators.frames import NOT_YET
from operators.sources import GstReader, gst_available
from tests.chain_fixtures import free_port as _free_port
from model_store import CARLA_CLASSES

pytestmark = pytest.mark.gst

if os.environ.get("VERISEG_GST_CHILD") != "1":
    pytest.skip("run in a child process by test_gst_sources.py", allow_module_level=True)

if not gst_available():
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI=true but GStreamer/PyGObject are not importable "
                           "(apt gstreamer1.0-* gir1.2-gst-*; pip 'PyGObject>=3.50,<3.52')")
    pytest.skip("GStreamer/PyGObject not available", allow_module_level=True)


def _registered(tmp_path, colour: str = "RGB"):
    reg = FakeRegistry()
    blob = tmp_path / "m.vsb"
    key = make_blob(blob, colour=colour)
    reg.register(key, "tiny", blob.as_uri())
    return reg, blob, key


def _pull(reader, seconds: float = 10.0) -> list:
    """Every frame a reader gives until its end of stream (or ``seconds``)."""
    reader.open()
    got = []
    t0 = time.time()
    while time.time() - t0 < seconds:
        x = reader.read()
        if x is None:
            break
        if x is not NOT_YET:
            got.append(x)
    reader.close()
    return got


def test_gst_reader_pulls_frames_and_sees_eos():
    got = _pull(GstReader("gst", "videotestsrc num-buffers=5 ! video/x-raw,width=37,height=21", colour="RGB"))
    assert len(got) == 5
    d = got[0]
    assert d.image.shape == (21, 37, 3) and d.colour == "RGB" and d.seq == 0 and d.pos.startswith("gst:")


def test_videotestsrc_pipeline_through_the_flow(tmp_path):
    reg, blob, key = _registered(tmp_path)
    src = ("gst:videotestsrc num-buffers=12 pattern=solid-color foreground-color=0xff5a0000 "
           "! video/x-raw,width=48,height=32")
    cfg = load_config(env_for(tmp_path, src, blob, VERISEG_ANCHOR_EVERY=0))
    run_main(build_flow(cfg, registry=reg))
    rows = read_jsonl(cfg.out / "gst0" / "results.jsonl")
    assert [r["seq"] for r in rows] == list(range(12))
    assert all(r["batch"] == 1 and r["model_key"] == key for r in rows)
    # red 0x5a = 90 -> class 90 // 20 = 4 (Pedestrian) everywhere
    assert all(r["shares"] == {"Pedestrian": 1.0} for r in rows)


def test_live_gst_source_drops_oldest_under_backpressure_and_counts(tmp_path):
    from operators.context import FlowContext
    from operators.sources.partition import StreamPartition
    spec = SourceSpec("cam", "gst", "videotestsrc is-live=true num-buffers=40 "
                      "! video/x-raw,width=16,height=16,framerate=200/1")
    ctx = FlowContext()
    p = StreamPartition(ctx, spec, 0, queue=8, batch=4, loop=False, max_frames=None, prepare=None,
                        reconnect_max=1, colour="BGR")
    time.sleep(1.0)            # nobody pulls: the buffer keeps only the newest frames
    got = []
    t0 = time.time()
    while time.time() - t0 < 10:
        try:
            got += p.next_batch()
        except StopIteration:
            break
        time.sleep(0.01)
    p.close()
    dropped = ctx.stats.dropped["cam"]["backpressure"]
    assert len(got) <= 3 and dropped >= 30 and len(got) + dropped == 40
    assert got[-1][1].seq == 39

def test_bad_pipeline_refuses_to_start_with_one_line(tmp_path):
    from operators.config import ConfigError
    reg, blob, key = _registered(tmp_path)
    cfg = load_config(env_for(tmp_path, "gst:nosuchelement ! fakesink", blob))
    with pytest.raises(ConfigError) as ei:
        build_flow(cfg, registry=reg)
    assert str(ei.value).count("\n") == 0 and "nosuchelement" in str(ei.value)


def test_gst_source_without_frames_still_writes_a_summary(tmp_path):
    reg, blob, key = _registered(tmp_path)
    cfg = load_config(env_for(tmp_path, "gst:videotestsrc num-buffers=0", blob))
    run_main(build_flow(cfg, registry=reg))
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert summary["scored"] == 0


def _run_gst(tmp_path, pipeline: str, colour: str = "RGB"):
    """(config, finished flow) of the segment flow on one ``gst:`` pipeline, anchoring off;
    ``colour``: the order the model's card asks for."""
    reg, blob, key = _registered(tmp_path, colour)
    cfg = load_config(env_for(tmp_path, f"gst:{pipeline}", blob, VERISEG_ANCHOR_EVERY=0))
    flow = build_flow(cfg, registry=reg)
    _run_guarded(flow)
    return cfg, flow


def _run_guarded(flow, seconds: float = 60) -> float:
    """Runs the flow; a stream that never ends (a reconnect loop) is stopped after
    ``seconds``, failing the test instead of hanging it. Returns the seconds it ran."""
    guard = threading.Timer(seconds, flow.context.stop.set)
    t0 = time.monotonic()
    guard.start()
    try:
        run_main(flow)
    finally:
        guard.cancel()
    return time.monotonic() - t0


def test_a_bare_appsink_gets_the_flows_caps_and_every_frame_is_scored(tmp_path):
    # README's camera shape: without caps on the appsink, videoconvert handed it ABGR64_LE and
    # every one of the 60 frames was a bad frame
    cfg, flow = _run_gst(tmp_path, "videotestsrc num-buffers=60 ! video/x-raw,width=64,height=48 "
                                   "! videoconvert ! appsink")
    rows = read_jsonl(cfg.out / "gst0" / "results.jsonl")
    assert [r["seq"] for r in rows] == list(range(60))
    assert not flow.context.stats.bad and not flow.context.stats.source_errors


def test_rows_are_read_with_gstreamers_stride():
    # 37 RGB pixels are 111 bytes in rows padded to 112: read as size // height, every row
    # after the first would shift by one byte and the solid colour would smear into the others
    got = _pull(GstReader("gst", "videotestsrc num-buffers=2 pattern=solid-color foreground-color=0xff5a1e0a "
                                 "! video/x-raw,width=37,height=21", colour="RGB"))
    assert len(got) == 2
    img = got[0].image
    assert img.shape == (21, 37, 3)
    assert (abs(img.astype(int) - (0x5a, 0x1e, 0x0a)) <= 2).all(), img.reshape(-1, 3)[::97]


def test_an_appsink_asking_for_a_format_the_flow_cannot_read_is_one_line_at_start(tmp_path):
    cfg, flow = _run_gst(tmp_path, "videotestsrc num-buffers=30 ! videoconvert ! appsink caps=video/x-raw,format=I420")
    stats = flow.context.stats
    assert not stats.bad, "a stream format problem was blamed on every frame"
    why = stats.source_errors["gst0"]
    assert "I420" in why and "format=BGR" in why and "\n" not in why


# R=0x5a=90 and B=0x96=150: tiny_onnx reads channel 0, so a model in RGB order sees class
# 90 // 20 = 4, one in BGR order class 150 // 20 = 7; a colour swap done wrong shows at once
SOLID = "pattern=solid-color foreground-color=0xff5a1e96"
CLASS_OF_CARD = {"RGB": CARLA_CLASSES[4].name, "BGR": CARLA_CLASSES[7].name}
CAMERA = f"videotestsrc num-buffers=60 {SOLID} ! video/x-raw,width=800,height=600"


@pytest.fixture
def flow_log():
    """The messages the flow logs while the test runs."""
    from operators.telemetry import log
    lines: list[str] = []
    h = logging.Handler()
    h.emit = lambda r: lines.append(r.getMessage())
    log.addHandler(h)
    yield lines
    log.removeHandler(h)


@pytest.mark.parametrize("card", ["RGB", "BGR"])
@pytest.mark.parametrize("caps", ["BGR", "RGB"])
def test_the_users_caps_in_either_colour_order_score_every_frame(tmp_path, caps, card):
    # the shape OpenCV users write: BGR caps against a model in RGB order too
    cfg, flow = _run_gst(tmp_path, f"{CAMERA} ! videoconvert ! video/x-raw,format={caps} ! appsink", card)
    rows = read_jsonl(cfg.out / "gst0" / "results.jsonl")
    assert [r["seq"] for r in rows] == list(range(60))
    assert all(r["shares"] == {CLASS_OF_CARD[card]: 1.0} for r in rows), rows[0]["shares"]
    stats = flow.context.stats
    assert not stats.bad and not stats.source_errors and not stats.reconnects


@pytest.mark.parametrize("card", ["RGB", "BGR"])
def test_gray8_caps_score_every_frame(tmp_path, card):
    cfg, flow = _run_gst(tmp_path, f"{CAMERA} ! videoconvert ! video/x-raw,format=GRAY8 ! appsink", card)
    rows = read_jsonl(cfg.out / "gst0" / "results.jsonl")
    assert [r["seq"] for r in rows] == list(range(60))
    # grey has one value in every channel: the same single class whatever the card's order
    assert len({json.dumps(r["shares"]) for r in rows}) == 1 and len(rows[0]["shares"]) == 1
    assert not flow.context.stats.bad and not flow.context.stats.source_errors


@pytest.mark.parametrize("card", ["RGB", "BGR"])
def test_a_bare_appsink_scores_every_frame_in_the_cards_order(tmp_path, card):
    cfg, flow = _run_gst(tmp_path, f"{CAMERA} ! videoconvert ! appsink", card)
    rows = read_jsonl(cfg.out / "gst0" / "results.jsonl")
    assert [r["seq"] for r in rows] == list(range(60))
    assert all(r["shares"] == {CLASS_OF_CARD[card]: 1.0} for r in rows)


@pytest.mark.parametrize("colour", ["RGB", "BGR"])
def test_a_bare_appsink_is_handed_the_models_colour_order_first(colour):
    # videoconvert then converts once, to what the model takes: no swap after it
    got = _pull(GstReader("gst", "videotestsrc num-buffers=2 ! videoconvert ! appsink", colour=colour))
    assert len(got) == 2 and {d.colour for d in got} == {colour}


def test_gray8_frames_are_read_in_the_models_colour_order():
    got = _pull(GstReader("gst", "videotestsrc num-buffers=2 ! video/x-raw,format=GRAY8,width=37,height=21 "
                                 "! appsink", colour="RGB"))
    assert len(got) == 2 and got[0].colour == "RGB" and got[0].image.shape == (21, 37, 3)


NOT_NEGOTIABLE = "! video/x-raw,format=I420,width=800,height=600 ! appsink"


def test_caps_that_do_not_negotiate_end_a_finite_stream_at_start_with_one_line(tmp_path, flow_log):
    reg, blob, key = _registered(tmp_path)
    cfg = load_config(env_for(tmp_path, f"gst:videotestsrc num-buffers=60 {NOT_NEGOTIABLE}", blob,
                              VERISEG_ANCHOR_EVERY=0))
    flow = build_flow(cfg, registry=reg)
    assert _run_guarded(flow, 20) < 10
    stats = flow.context.stats
    why = stats.source_errors["gst0"]
    assert "do not negotiate" in why and "I420" in why and "format=BGR" in why and "\n" not in why
    assert not stats.reconnects and not stats.bad and not stats.scored
    assert [m for m in flow_log if m.startswith("stream gst0:")] == [f"stream gst0: {why}"]


def test_caps_that_do_not_negotiate_on_a_live_source_back_off_longer_each_time(flow_log):
    from operators.context import FlowContext
    from operators.sources.partition import StreamPartition
    spec = SourceSpec("cam", "gst", f"videotestsrc is-live=true {NOT_NEGOTIABLE}")
    ctx = FlowContext()
    p = StreamPartition(ctx, spec, 0, queue=8, batch=1, loop=False, max_frames=None, prepare=None,
                        reconnect_max=30, colour="RGB")
    try:
        t0 = time.monotonic()
        while ctx.stats.reconnects.get("cam", 0) < 3 and time.monotonic() - t0 < 15:
            time.sleep(0.05)
    finally:
        p.close()
    lines = [m for m in flow_log if m.startswith("stream cam:")]
    assert len(lines) >= 3, lines
    assert all("do not negotiate" in m and "I420" in m for m in lines[:3])
    assert [m.rsplit(" ", 1)[1] for m in lines[:3]] == ["0.5s", "1.0s", "2.0s"]
    assert "cam" not in ctx.stats.source_errors


class RtspServer:
    """Loopback RTSP server (gst-rtsp-server) serving a live MJPEG test pattern."""

    def __init__(self, port: int):
        import gi
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, GstRtspServer
        self.GLib = GLib
        self.ctx = GLib.MainContext.new()
        self.loop = GLib.MainLoop.new(self.ctx, False)
        self.server = GstRtspServer.RTSPServer.new()
        self.server.set_address("127.0.0.1")
        self.server.set_service(str(port))
        factory = GstRtspServer.RTSPMediaFactory.new()
        factory.set_launch("( videotestsrc is-live=true pattern=solid-color foreground-color=0xff5a0000 "
                           "! video/x-raw,format=I420,width=64,height=48,framerate=30/1 ! jpegenc "
                           "! rtpjpegpay name=pay0 pt=96 )")
        factory.set_shared(True)
        self.server.get_mount_points().add_factory("/test", factory)
        self.id = self.server.attach(self.ctx)
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()

    def stop(self):
        self.loop.quit()
        self.thread.join(5)
        src = self.ctx.find_source_by_id(self.id)
        if src is not None:
            src.destroy()


@pytest.fixture
def rtsp_url():
    try:
        import gi
        gi.require_version("GstRtspServer", "1.0")
    except (ImportError, ValueError):
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("gir1.2-gst-rtsp-server-1.0 not installed")
    port = _free_port()
    srv = RtspServer(port)
    yield f"rtsp://127.0.0.1:{port}/test"
    srv.stop()


def test_rtsp_loopback_through_the_flow(tmp_path, rtsp_url):
    reg, blob, key = _registered(tmp_path)
    cfg = load_config(env_for(tmp_path, f"cam@{rtsp_url}", blob, VERISEG_ANCHOR_EVERY=0,
                              VERISEG_MAX_FRAMES=10))
    t0 = time.time()
    run_main(build_flow(cfg, registry=reg))
    assert time.time() - t0 < 60
    rows = read_jsonl(cfg.out / "cam" / "results.jsonl")
    assert len(rows) == 10 and all(r["model_key"] == key and r["batch"] == 1 for r in rows)
    seqs = [r["seq"] for r in rows]
    assert seqs == sorted(seqs)
    # JPEG over RTP: the solid red 0x5a decodes within a few grey levels of 90 -> class 4
    assert all(r["shares"].get("Pedestrian", 0) > 0.9 for r in rows)


def test_rtsp_camera_that_is_not_there_yet_is_reconnected(tmp_path):
    """The camera comes up 1.5 s after the flow starts: the source retries with backoff."""
    reg, blob, key = _registered(tmp_path)
    port = _free_port()
    url = f"rtsp://127.0.0.1:{port}/test"
    cfg = load_config(env_for(tmp_path, f"cam@{url}", blob, VERISEG_ANCHOR_EVERY=0,
                              VERISEG_MAX_FRAMES=5, VERISEG_RECONNECT_MAX=0.5))
    flow = build_flow(cfg, registry=reg)
    box = {}
    t = threading.Timer(1.5, lambda: box.setdefault("srv", RtspServer(port)))
    t.start()
    try:
        run_main(flow)
    finally:
        t.join()
        if "srv" in box:
            box["srv"].stop()
    rows = read_jsonl(cfg.out / "cam" / "results.jsonl")
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert len(rows) == 5 and summary["reconnects"]["cam"] >= 1


def test_spec_for_rtsp_builds_an_rtspsrc_pipeline():
    r = GstReader("rtsp", "rtsp://10.0.0.5/cam", colour="RGB")
    s = r.launch_string()
    assert s.startswith("rtspsrc location=rtsp://10.0.0.5/cam") and "format=RGB" in s
    assert SourceSpec("x", "rtsp", "rtsp://h").live
