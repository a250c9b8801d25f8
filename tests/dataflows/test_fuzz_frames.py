"""Bad frames: odd images, undecodable files, headers that lie about their size, broken
CSV files and videos. Each frame is scored (odd but usable) or skipped, counted
(``bad_frames`` in summary.json, ``veriseg_bad_frames_total``) and named in one line;
nothing crashes and nothing huge is decoded."""

from __future__ import annotations

import json
import logging
import os
import random
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from bytewax.testing import run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflows.segment import build_flow
from tests.flow_fixtures import env_for, frame_image, prom_value, read_jsonl
from operators.config import load_config
from operators.sources import ImageListReader
from operators.sources.errors import BadFrame
from operators.sources.image_file import declared_size, read_image


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _flow(tmp_path, model, source, before_run=None, **extra):
    """Run the flow in process; (results rows, summary, log lines, metrics text).
    ``before_run`` is called between the configuration check and the run."""
    reg, blob, _ = model
    extra.setdefault("VERISEG_ANCHOR_EVERY", 0)
    extra.setdefault("VERISEG_VIDEO", 0)
    cfg = load_config(env_for(tmp_path, source, blob, **extra))
    if before_run is not None:
        before_run()
    flow_log = logging.getLogger("veriseg.flow")
    rec = _Records()
    flow_log.addHandler(rec)
    try:
        run_main(build_flow(cfg, registry=reg))
    finally:
        flow_log.removeHandler(rec)
    sid = cfg.source[0].stream_id
    rows = read_jsonl(cfg.out / sid / "results.jsonl")
    summary = json.loads((cfg.out / "summary.json").read_text())
    prom = (cfg.out / "metrics.prom").read_text()
    for line in rec.lines:
        assert "\n" not in line.strip() and "Traceback" not in line, line
    # a bad file must not end the stream (that would be a source error)
    assert not any("decoder stopped" in x for x in summary["source_errors"].values()), summary
    return cfg, rows, summary, rec.lines, prom


def _class_of_mask(cfg, sid, row) -> int:
    m = cv2.imread(str(cfg.out / sid / row["mask"]), cv2.IMREAD_UNCHANGED)
    assert m is not None and m.shape == (32, 32) and m.dtype == np.uint8
    return int(np.bincount(m.ravel()).argmax())


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(w: int, h: int, idat: bytes = b"") -> bytes:
    """A PNG whose header (valid CRC) says w x h RGB; ``idat``: its compressed data."""
    out = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    if idat:
        out += _png_chunk(b"IDAT", idat)
    return out + _png_chunk(b"IEND", b"")


def jpeg_claiming(w: int, h: int) -> bytes:
    """A real 8x8 JPEG whose start-of-frame header is rewritten to say w x h."""
    ok, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    b = bytearray(buf.tobytes())
    i = b.index(b"\xff\xc0")
    b[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(b)


def bmp_claiming(w: int, h: int) -> bytes:
    head = struct.pack("<2sIHHI", b"BM", 54, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return head + info


def tiff(w: int, h: int, spp: int, data: bytes | None = None) -> bytes:
    """An uncompressed little-endian TIFF with ``spp`` 8-bit samples per pixel."""
    data = bytes(w * h * spp) if data is None else data
    tags = [(256, 4, w), (257, 4, h), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8),
            (277, 3, spp), (278, 4, h), (279, 4, len(data))]
    out = b"II*\x00" + struct.pack("<I", 8 + len(data)) + data + struct.pack("<H", len(tags))
    for tag, typ, val in tags:
        out += struct.pack("<HHI", tag, typ, 1) + (struct.pack("<HH", val, 0) if typ == 3
                                                   else struct.pack("<I", val))
    return out + struct.pack("<I", 0)


def webp_claiming(w: int, h: int) -> bytes:
    body = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (w - 1).to_bytes(3, "little") \
        + (h - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def _grey_alpha_png(v: int, size=(9, 5)) -> bytes:
    h, w = size
    raw = b"".join(b"\x00" + bytes([v, 255]) * w for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 4, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))


def test_odd_sizes_and_channel_counts_are_scored_at_the_model_size(tmp_path, model):
    """1x1, 7x3, 5000x3 strips, grey, grey+alpha, RGBA, 2-sample TIFF, 16-bit: each is
    converted and resized to the model's 32x32 RGB input, and scored with the right class."""
    d = tmp_path / "odd"
    d.mkdir()
    want = {}

    def put(name, cls, write):
        write(d / name)
        want[name] = cls

    red = lambda c: c * 20 + 5   # noqa: E731 - the tiny model's class is R // 20
    for i, (h, w) in enumerate([(1, 1), (7, 3), (3, 7), (5000, 3), (3, 5000), (1, 700)]):
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 2] = red(i + 1)
        put(f"a{i}_{h}x{w}.png", i + 1, lambda p, im=img: cv2.imwrite(str(p), im))
    put("b_grey.png", 7, lambda p: cv2.imwrite(str(p), np.full((6, 10), red(7), np.uint8)))
    put("c_grey_alpha.png", 8, lambda p: p.write_bytes(_grey_alpha_png(red(8))))
    rgba = np.zeros((6, 10, 4), np.uint8)
    rgba[..., 2], rgba[..., 3] = red(9), 128
    put("d_rgba.png", 9, lambda p: cv2.imwrite(str(p), rgba))
    put("e_two_samples.tif", 10, lambda p: p.write_bytes(tiff(4, 3, 2, bytes([red(10), 255] * 12))))
    deep = np.zeros((5, 5, 3), np.uint16)
    deep[..., 2] = red(11) << 8
    put("f_16bit.png", 11, lambda p: cv2.imwrite(str(p), deep))
    cfg, rows, summary, lines, prom = _flow(tmp_path, model, f"dir:{d}")
    assert summary["bad"] == 0, summary["bad_frame_reports"]
    names = sorted(want)
    assert len(rows) == len(names)
    for r in rows:
        name = Path(r["pos"]).name
        assert _class_of_mask(cfg, "odd", r) == want[name], name


def test_undecodable_files_are_skipped_counted_and_named(tmp_path, model):
    d = tmp_path / "bad"
    d.mkdir()
    for i in range(3):
        cv2.imwrite(str(d / f"{i:04d}.png"), frame_image(i))
    good = cv2.imencode(".png", frame_image(5))[1].tobytes()
    rnd = random.Random(8)
    bad = {
        "1000_empty.png": b"",
        "1001_garbage.jpg": rnd.randbytes(5000),
        "1002_truncated.png": good[:40],
        "1003_bad_idat.png": png_claiming(16, 16, rnd.randbytes(300)),
        "1004_header_only.bmp": bmp_claiming(16, 16),
        "1005_float.tiff": cv2.imencode(".tiff", np.zeros((4, 4, 3), np.float32))[1].tobytes(),
        "1006_zero_size.png": png_claiming(0, 0),
        "1007_text.webp": b"this is text, not an image\n" * 10,
    }
    for name, data in bad.items():
        (d / name).write_bytes(data)
    (d / "1008_a_folder.png").mkdir()          # not a file: not listed at all
    cfg, rows, summary, lines, prom = _flow(tmp_path, model, f"dir:{d}")
    assert [r["seq"] for r in rows] == [0, 1, 2]
    assert summary["bad"] == len(bad) and summary["bad_frames"] == {"bad": len(bad)}
    assert prom_value(prom, "veriseg_bad_frames_total", stream="bad") == len(bad)
    reports = summary["bad_frame_reports"]
    for name in bad:
        line = next(x for x in reports if name in x)
        assert "\n" not in line
        assert any(f"skipped bad frame: {line}" == x for x in lines)
    assert any("1000_empty.png: empty file" in x for x in reports)
    assert any("1005_float.tiff: unsupported pixel type float32" in x for x in reports)


HUGE = {
    "png.png": png_claiming(60000, 60000),
    "jpeg.jpg": jpeg_claiming(60000, 60000),
    "bmp.bmp": bmp_claiming(60000, -60000),
    "tiff.tif": tiff(60000, 60000, 3, b""),
    "webp.webp": webp_claiming(60000, 60000),
    "pnm.ppm": b"P6\n# a comment\n60000 60000\n255\n" + bytes(64),
}


@pytest.mark.parametrize("name", sorted(HUGE))
def test_declared_dimensions_are_read_without_decoding(name):
    assert declared_size(HUGE[name]) == (60000, 60000)


def test_huge_declared_dimensions_are_refused_before_decoding(tmp_path, model, monkeypatch):
    d = tmp_path / "huge"
    d.mkdir()
    cv2.imwrite(str(d / "0000.png"), frame_image(0))
    for name, data in HUGE.items():
        (d / f"1_{name}").write_bytes(data)
    # a real decompression bomb: 416 KB of PNG that decodes to 12000 x 12000 x 3 = 432 MB
    row = b"\x00" + bytes(12000 * 3)
    co = zlib.compressobj(9)
    idat = b"".join(co.compress(row) for _ in range(12000)) + co.flush()
    (d / "2_bomb.png").write_bytes(png_claiming(12000, 12000, idat))
    assert (d / "2_bomb.png").stat().st_size < 500_000

    # the refusal happens on the header: the decoder is never called for these files
    real = cv2.imdecode

    def guarded(buf, flags):
        assert buf.size < 1000, "a huge image reached the decoder"
        return real(buf, flags)
    monkeypatch.setattr(cv2, "imdecode", guarded)
    cfg, rows, summary, lines, prom = _flow(tmp_path, model, f"dir:{d}")
    assert [r["seq"] for r in rows] == [0]
    assert summary["bad"] == len(HUGE) + 1
    for x in summary["bad_frame_reports"]:
        assert "pixels, over the limit of 40000000 (VERISEG_MAX_PIXELS); not decoded" in x, x
    assert any("2_bomb.png: header declares 12000x12000 = 144000000 pixels" in x
               for x in summary["bad_frame_reports"])
    # the limit is configurable: a 24x40 (960-pixel) frame is over a limit of 900
    cfg, rows, summary, *_ = _flow(tmp_path, model, f"dir:{d}", VERISEG_MAX_PIXELS=900)
    assert rows == [] and summary["bad"] == len(HUGE) + 2
    assert any("0000.png: header declares 40x24 = 960 pixels, over the limit of 900" in x
               for x in summary["bad_frame_reports"])


def test_huge_declared_dimensions_via_the_csv_source(tmp_path, model):
    (tmp_path / "big.jpg").write_bytes(jpeg_claiming(60000, 60000))
    cv2.imwrite(str(tmp_path / "ok.png"), frame_image(3))
    (tmp_path / "f.csv").write_text("image\nbig.jpg\nok.png\n")
    cfg, rows, summary, *_ = _flow(tmp_path, model, f"csv:{tmp_path / 'f.csv'}")
    assert [r["seq"] for r in rows] == [1]
    (rep,) = summary["bad_frame_reports"]
    assert rep.startswith(f"{tmp_path / 'f.csv'}:row 2 (big.jpg): ") and "60000x60000" in rep


MAGICS = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*",
          b"RIFF\x00\x00\x00\x00WEBP", b"P6\n", b"GIF89a", b"\x00\x00\x00\x0cjP  "]


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(magic=st.sampled_from(MAGICS), tail=st.binary(max_size=400))
def test_random_bytes_after_any_image_magic_are_a_skip_never_a_crash(tmp_path, magic, tail):
    p = tmp_path / "x.img"
    p.write_bytes(magic + tail)
    try:
        img = read_image(str(p))
    except BadFrame as e:
        msg = str(e)
        assert msg.startswith(str(p) + ": ") and "\n" not in msg
    else:   # something decodable: always an HxWx3 uint8 frame
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


def test_a_folder_of_seeded_garbage_scores_nothing_and_names_every_file(tmp_path, model):
    d = tmp_path / "junk"
    d.mkdir()
    rnd = random.Random(20261125)
    for i in range(12):
        magic = MAGICS[i % len(MAGICS)]
        (d / f"{i:03d}.png").write_bytes(magic + rnd.randbytes(rnd.randrange(0, 3000)))
    cfg, rows, summary, *_ = _flow(tmp_path, model, f"dir:{d}")
    assert rows == [] and summary["bad"] == 12
    assert sorted(Path(x.split(":")[0]).name for x in summary["bad_frame_reports"]) == \
        [f"{i:03d}.png" for i in range(12)]


def test_csv_with_missing_files_bad_rows_and_non_utf8_bytes(tmp_path, model):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), frame_image(i))
    latin = os.fsencode(str(tmp_path)) + b"/caf\xe9.png"     # a Latin-1 file name
    with open(latin, "wb") as f:
        f.write(cv2.imencode(".png", frame_image(4))[1].tobytes())
    csv = tmp_path / "f.csv"
    csv.write_bytes(b"\xef\xbb\xbfimage,label,timestamp\n"   # UTF-8 BOM
                    b"0.png,,10\n"                              # row 2: fine
                    b"missing.png,,11\n"                        # row 3: no such file
                    b",only,labels\n"                           # row 4: no image column
                    b"1.png,,12,extra,columns\n"                # row 5: extra columns: fine
                    b"nul\x00byte.png,,13\n"                    # row 6: NUL byte
                    b"caf\xe9.png,,14\n"                        # row 7: Latin-1, exists
                    b"\xff\xfe\xfd.png,,15\n"                   # row 8: undecodable, missing
                    b"2.png,,not-a-time\n"                      # row 9: fine, timestamp ignored
                    b"\n# a comment\n")
    cfg, rows, summary, lines, _ = _flow(tmp_path, model, f"csv:{csv}")
    assert [r["seq"] for r in rows] == [0, 3, 5, 7]
    assert [r["ts"] for r in rows[:3]] == [10, 12, 14]
    assert "caf\\xe9.png" in rows[2]["pos"]
    reports = summary["bad_frame_reports"]
    assert summary["bad"] == 4 and len(reports) == 4
    assert reports[0].startswith(f"{csv}:row 3 (missing.png): ") and "cannot read" in reports[0]
    assert reports[1] == f"{csv}:row 4: missing image column"
    assert reports[2] == f"{csv}:row 6 (nul\\x00byte.png): the image path contains a NUL byte"
    assert reports[3].startswith(f"{csv}:row 8 (\\xff\\xfe\\xfd.png): ")
    for x in reports:
        x.encode("utf-8")   # printable, encodable: one clean log line each


def test_csv_that_is_binary_garbage_or_empty(tmp_path, model):
    rnd = random.Random(3)
    csv = tmp_path / "g.csv"
    csv.write_bytes(bytes(range(256)) + rnd.randbytes(3000) + b"\n" + b"x" * 200_000 + b"\n")
    cfg, rows, summary, lines, _ = _flow(tmp_path, model, f"csv:{csv}")
    assert rows == [] and summary["bad"] >= 1
    assert any("field larger than field limit" in x for x in summary["bad_frame_reports"])
    assert all(x.startswith(f"{csv}:row ") for x in summary["bad_frame_reports"])
    (tmp_path / "e.csv").write_bytes(b"")
    cfg, rows, summary, lines, _ = _flow(tmp_path, model, f"csv:{tmp_path / 'e.csv'}")
    assert rows == [] and summary["bad"] == 0


def test_a_csv_that_cannot_be_read_ends_its_stream_with_one_line(tmp_path, model):
    csv = tmp_path / "locked.csv"
    csv.write_text("image\n0.png\n")
    csv.chmod(0)
    why, swap = "Permission denied", None
    if os.geteuid() == 0:
        # root reads a mode-000 file: the CSV becomes a folder after the start-up check instead
        def swap():
            csv.unlink()
            csv.mkdir()
        why = "Is a directory"
    cfg, rows, summary, lines, _ = _flow(tmp_path, model, f"csv:{csv}", before_run=swap)
    assert rows == [] and list(summary["source_errors"]) == ["locked"]
    assert any(f"csv source '{csv}'" in x and why in x for x in lines), lines


def test_unreadable_csv_reader_does_not_crash_the_flow(tmp_path, model, monkeypatch):
    """Whatever makes building a reader fail (here a simulated OSError) ends that stream
    with one line; the flow still finishes and writes its summary."""
    (tmp_path / "f.csv").write_text("image\n")

    def boom(cls, path, loop=False):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(ImageListReader, "from_csv", classmethod(boom))
    cfg, rows, summary, lines, prom = _flow(tmp_path, model, f"csv:{tmp_path / 'f.csv'}")
    assert rows == [] and summary["scored"] == 0
    assert any("csv source" in x and "Input/output error" in x for x in lines), lines
    assert summary["source_errors"] == {"f": f"csv source '{tmp_path / 'f.csv'}': "
                                              "[Errno 5] Input/output error"}
    assert prom_value(prom, "veriseg_source_errors_total", stream="f") == 1


@pytest.mark.parametrize("content", [b"", b"not a video at all\n" * 50, "random"])
def test_a_video_source_that_is_not_a_video_ends_with_one_line_naming_it(tmp_path, model, content):
    clip = tmp_path / "clip.avi"
    clip.write_bytes(random.Random(5).randbytes(20000) if content == "random" else content)
    cfg, rows, summary, lines, prom = _flow(tmp_path, model, clip)
    assert rows == [] and summary["scored"] == 0
    assert f"stream clip: cannot open video '{clip}'" in lines, lines
    # counted: the stream ended early
    assert summary["source_errors"] == {"clip": f"cannot open video '{clip}'"}
    assert prom_value(prom, "veriseg_source_errors_total", stream="clip") == 1


def test_a_file_too_large_for_any_frame_within_the_limit_is_not_read(tmp_path, model):
    d = tmp_path / "big"
    d.mkdir()
    cv2.imwrite(str(d / "0.png"), frame_image(0))
    with open(d / "1.png", "wb") as f:      # sparse: 2 MiB + 1 byte, nothing written
        f.truncate(8 * 1000 + (1 << 20) + 1)
    cfg, rows, summary, *_ = _flow(tmp_path, model, f"dir:{d}", VERISEG_MAX_PIXELS=1000)
    assert [r["seq"] for r in rows] == [0]
    (rep,) = summary["bad_frame_reports"]
    assert rep == (f"{d / '1.png'}: file of {8 * 1000 + (1 << 20) + 1} bytes is larger than any "
                   "frame within VERISEG_MAX_PIXELS=1000; not read")
