"""Sources and preprocessing on their own: looping, resume positions, datasets, CSV."""
from __future__ import annotations

import time

import numpy as np

from tests.flow_fixtures import frame_image, make_clip, make_folder
from operators.config import SourceSpec
from operators.sources import FrameSource, ImageListReader
from operators.context import FlowContext


def _drain(part, timeout=10):
    got = []
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            got += part.next_batch()
        except StopIteration:
            return got
        time.sleep(0.001)
    raise AssertionError("source did not finish")


def test_video_source_resumes_at_its_snapshot_position(tmp_path):
    clip = make_clip(tmp_path / "c.avi", n=12)
    src = FrameSource(FlowContext(), [SourceSpec("c", "video", str(clip))], batch=3)
    part = src.build_part("source", "c", None)
    first = []
    while len(first) < 5:
        first += part.next_batch()
        time.sleep(0.001)
    snap = part.snapshot()
    part.close()
    assert snap == first[-1][1].seq + 1
    part2 = src.build_part("source", "c", snap)
    rest = _drain(part2)
    assert [f.seq for _, f in rest] == list(range(snap, 12))
    assert rest[0][1].pos.endswith(f"#{snap}")
    # the decoded pixels are the frame at that position
    assert abs(int(rest[0][1].image[0, 0, 2]) - int(frame_image(snap)[0, 0, 2])) < 6


def test_looping_video_with_max_frames(tmp_path):
    clip = make_clip(tmp_path / "c.avi", n=5)
    src = FrameSource(FlowContext(), [SourceSpec("c", "video", str(clip))], loop=True, max_frames=13, batch=4)
    got = _drain(src.build_part("source", "c", None))
    assert [f.seq for _, f in got] == list(range(13))
    assert [f.pos.rsplit("#", 1)[1] for _, f in got] == [str(i % 5) for i in range(13)]


def test_file_replay_never_drops_with_a_tiny_buffer(tmp_path):
    folder = make_folder(tmp_path / "f", n=30)
    ctx = FlowContext()
    src = FrameSource(ctx, [SourceSpec("f", "dir", str(folder))], queue=1, batch=1)
    part = src.build_part("source", "f", None)
    time.sleep(0.3)     # the decoder waits instead of dropping
    got = _drain(part)
    assert [f.seq for _, f in got] == list(range(30)) and not ctx.stats.dropped.get("f")


def test_dataset_folder_pairs_images_with_labels_by_stem(tmp_path):
    root = tmp_path / "ds"
    make_folder(root / "images", n=3)
    (root / "labels").mkdir()
    for i in (0, 2):
        (root / "labels" / f"{i:04d}.png").write_bytes(b"x")
    r = ImageListReader.from_dir(str(root))
    assert [e[2] is not None for e in r.entries] == [True, False, True]
    r.open()
    d = r.read()
    assert d.seq == 0 and d.label.endswith("labels/0000.png") and d.image.shape == (24, 40, 3)


def test_csv_header_variants_and_tab_separated(tmp_path):
    make_folder(tmp_path / "i", n=2)
    p = tmp_path / "f.tsv.csv"
    p.write_text("index\timage\tlabel\n0\ti/0000.png\tl/0.png\n1\ti/0001.png\t\n")
    r = ImageListReader.from_csv(str(p))
    assert len(r.entries) == 2 and r.entries[0][2].endswith("l/0.png") and r.entries[1][2] is None
    q = tmp_path / "plain.csv"
    q.write_text("i/0000.png\ni/0001.png,,12.5\n")
    r = ImageListReader.from_csv(str(q))
    assert [e[3] for e in r.entries] == [None, 12.5]


def test_grey_and_alpha_images_become_three_channels(tmp_path):
    import cv2
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((5, 6), np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((5, 6, 4), np.uint8))
    r = ImageListReader.from_dir(str(tmp_path))
    r.open()
    assert r.read().image.shape == (5, 6, 3) and r.read().image.shape == (5, 6, 3)


def test_unreadable_video_ends_its_stream_with_one_error_line(tmp_path, caplog):
    clip = tmp_path / "c.avi"
    clip.write_bytes(b"RIFF" + bytes(100))
    src = FrameSource(FlowContext(), [SourceSpec("c", "video", str(clip))])
    assert _drain(src.build_part("source", "c", None)) == []
    msgs = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert msgs == [f"stream c: cannot open video {str(clip)!r}"]


class _SilentCamera:
    """A live reader whose frames the test puts in by hand: read() waits until closed."""
    is_live, total, seq = True, None, 0

    def __init__(self):
        import threading
        self.closed = threading.Event()

    def open(self, seq):
        pass

    def read(self):
        self.closed.wait()
        return None

    def close(self):
        self.closed.set()


def test_a_live_stream_that_drops_frames_says_so_at_most_every_ten_seconds(caplog, monkeypatch):
    """Backpressure drops on a live source are counted and said in one line: at the first
    drop, then once per DROP_REPORT_S with the count since the line before."""
    import operators.sources.partition as partition
    from operators.frames import Frame
    clock = [1000.0]
    monkeypatch.setattr(partition.time, "monotonic", lambda: clock[0])
    ctx = FlowContext()
    cam = _SilentCamera()
    p = partition.StreamPartition(ctx, SourceSpec("cam", "gst", "videotestsrc is-live=true"), 0, queue=8,
                                  batch=1, loop=False, max_frames=None, prepare=None, reconnect_max=1,
                                  colour="BGR", reader_factory=lambda spec, **kw: cam)
    try:
        def put(n):
            for i in range(n):
                p._put(Frame("cam", i, 0.0, "", np.zeros((2, 2, 3), np.uint8), live=True))
        put(partition.LIVE_BUFFER)               # fills the live buffer: nothing dropped
        assert not [r for r in caplog.records if "dropped" in r.message]
        put(3)                                   # 3 dropped, the first said at once
        clock[0] += 4.0
        put(5)                                   # 5 more within 10 s: counted, not said
        clock[0] += 6.5
        put(1)                                   # 10.5 s after the first line: said, with 8
        lines = [r.message for r in caplog.records if "dropped" in r.message]
        assert len(lines) == 2, lines
        assert "stream cam: 1 frame(s) dropped so far" in lines[0]
        assert "stream cam: 8 frame(s) dropped in the last 10 s" in lines[1]
        assert all("to keep up" in m and "\n" not in m for m in lines)
        assert ctx.stats.dropped["cam"]["backpressure"] == 9
    finally:
        cam.close()
        p.close()


class _FailingCamera:
    """A live reader that opens every time, then fails its reads as ``script`` says: an
    IOError, or a frame (then the end of the stream)."""
    is_live, total, seq = True, None, 0

    def __init__(self, script):
        self.script = list(script)

    def open(self, seq):
        pass

    def read(self):
        from operators.frames import Decoded
        if not self.script:
            return None
        step = self.script.pop(0)
        if step == "error":
            raise IOError("caps do not negotiate")
        self.seq += 1
        return Decoded(self.seq - 1, "cam#0", np.zeros((2, 2, 3), np.uint8))

    def close(self):
        pass


def test_a_live_source_that_opens_and_fails_backs_off_longer_until_a_frame_comes(monkeypatch):
    """Opening is no reconnect: the backoff doubles over open-then-fail and starts over at
    the first frame after it."""
    import logging
    import threading
    import types

    import operators.sources.partition as partition
    from operators.telemetry import log

    class NoWait(threading.Event):
        def wait(self, timeout=None):   # the backoff is said, not waited for
            return self.is_set()
    monkeypatch.setattr(partition, "threading", types.SimpleNamespace(
        Event=NoWait, Condition=threading.Condition, Thread=threading.Thread))
    lines: list[str] = []
    h = logging.Handler()
    h.emit = lambda r: lines.append(r.getMessage())
    log.addHandler(h)
    cam = _FailingCamera(["error", "error", "error", "frame", "error"])
    try:
        p = partition.StreamPartition(FlowContext(), SourceSpec("cam", "gst", "x"), 0, queue=8, batch=1,
                                      loop=False, max_frames=None, prepare=None, reconnect_max=30,
                                      colour="BGR", reader_factory=lambda spec, **kw: cam)
        p.thread.join(10)
    finally:
        log.removeHandler(h)
    backoffs = [m.rsplit(" ", 1)[1] for m in lines if "caps do not negotiate" in m]
    assert backoffs == ["0.5s", "1.0s", "2.0s", "0.5s"], lines
    assert [m for m in lines if m.endswith("reconnected")] == ["stream cam: reconnected"]
