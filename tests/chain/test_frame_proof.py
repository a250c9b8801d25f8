"""The frame proof's parts, without a flow: the frame digest and the v3 leaf as their specs
(chain/frame_digest.py, chain/merkle.py) write them, the batch file's and the results
line's new claims, the retention policy, the retained-frame files and the re-execution's
comparison (exact, within tolerance, mismatch) on small graphs."""
from __future__ import annotations

import json
import struct
from types import SimpleNamespace

import blake3
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import model_store
from chain import errors
from chain.anchor_batch import AnchorBatch, Leaf
from chain.frame_digest import frame_digest
from chain.merkle import leaf_digest
from chain.profile import ExecutionProfile
from chain.rescore import TOLERANCES, reference_profile, rescore_frame
from chain.results import RESULT_BOUND, frame_record
from chain.retained_frame import (MAX_FRAME_BYTES, FrameFormatError, decode_frame, encode_frame,
                                  find_frame, read_frame, viewable, write_frame)
from tests.flow_fixtures import tiny_card
from operators.keep_frames import KeepFrames

KEY = "ab" * 32
ORT_CPU = ExecutionProfile("onnxruntime", "CPU", "fp32", "1.0")
OV_BF16 = ExecutionProfile("openvino", "CPU", "bf16", "2026.0")


def _frame(h=6, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------ the frame digest, as specified
def test_the_frame_digest_is_the_specified_encoding():
    img = _frame()
    want = blake3.blake3(struct.pack(">H", 16) + b"veriseg/frame/v1" + struct.pack(">B", 3) + b"BGR"
                         + struct.pack(">III", 6, 5, 3) + struct.pack(">Q", 90) + img.tobytes()).digest()
    assert frame_digest(img, "BGR") == want
    # a non-contiguous view hashes its C-order pixels
    assert frame_digest(np.ascontiguousarray(img[:, ::-1])[:, ::-1], "BGR") == want


def test_the_frame_digest_binds_pixels_shape_and_colour_order():
    img = _frame()
    base = frame_digest(img, "BGR")
    other = img.copy()
    other[2, 3, 1] ^= 1
    variants = [frame_digest(img, "RGB"), frame_digest(other, "BGR"),
                frame_digest(img.reshape(5, 6, 3), "BGR"), frame_digest(img.reshape(3, 10, 3), "BGR")]
    assert len({base, *variants}) == 5
    gray = img[..., 0]
    assert frame_digest(gray, "GRAY") == frame_digest(gray[..., None], "GRAY") != base


@pytest.mark.parametrize("image,colour", [
    (np.zeros((4, 4, 3), np.uint16), "BGR"), (np.zeros((4, 4), np.uint8), "BGR"),
    (np.zeros((4, 4, 4), np.uint8), "BGR"), (np.zeros((4, 4, 3), np.uint8), "GRAY"),
    (np.zeros((4, 4, 3), np.uint8), "bgr"), (np.zeros((4, 4, 3), np.uint8), "YUV")])
def test_anything_but_a_decoded_frame_is_one_line(image, colour):
    with pytest.raises(ValueError) as e:
        frame_digest(image, colour)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ the v3 leaf, as specified
def test_the_v3_leaf_is_the_specified_encoding_and_binds_frame_and_profile():
    cm = np.arange(12, dtype=np.uint8).reshape(3, 4)
    fd = frame_digest(_frame(), "BGR")
    sid, pos = b"cam0", b"a.avi#7"
    enc = ORT_CPU.encode()
    want = blake3.blake3(
        b"\x00" + struct.pack(">H", 22) + b"veriseg/anchor/leaf/v3" + struct.pack(">I", 4) + sid
        + struct.pack(">Q", 7) + bytes.fromhex(KEY) + struct.pack(">BII", 2, 3, 4)
        + struct.pack(">Q", 12) + cm.tobytes() + b"\x01" + struct.pack(">q", 1_500_000)
        + b"\x01" + struct.pack(">I", len(pos)) + pos + fd + struct.pack(">I", len(enc)) + enc).digest()
    got = leaf_digest("cam0", 7, KEY, cm, ts=1.5, pos="a.avi#7", frame=fd, profile=ORT_CPU)
    assert got == want
    v2 = leaf_digest("cam0", 7, KEY, cm, ts=1.5, pos="a.avi#7")
    variants = [v2, leaf_digest("cam0", 7, KEY, cm, ts=1.5, pos="a.avi#7", frame=bytes(32), profile=ORT_CPU),
                leaf_digest("cam0", 7, KEY, cm, ts=1.5, pos="a.avi#7", frame=fd, profile=OV_BF16)]
    assert len({got, *variants}) == 4


def test_a_leaf_binds_both_frame_and_profile_or_neither():
    cm = np.zeros((2, 2), np.uint8)
    with pytest.raises(ValueError, match="both"):
        leaf_digest("s", 1, KEY, cm, frame=bytes(32))
    with pytest.raises(ValueError, match="both"):
        leaf_digest("s", 1, KEY, cm, profile=ORT_CPU)
    with pytest.raises(ValueError, match="32 bytes"):
        leaf_digest("s", 1, KEY, cm, frame=b"x", profile=ORT_CPU)


def test_batch_leaves_keep_their_frame_and_profile_and_refuse_half_of_them(tmp_path):
    cm = np.zeros((2, 2), np.uint8)
    fd = frame_digest(_frame(), "RGB")
    b = AnchorBatch.build(KEY, [("s", 0, cm, 1.0, "p#0", fd, ORT_CPU), ("s", 1, cm, 2.0, "p#1")])
    b.write(tmp_path / "b.json")
    back, raw = AnchorBatch.read(tmp_path / "b.json")
    assert back.leaves[0].frame == fd and back.leaves[0].profile == ORT_CPU
    assert back.leaves[1].frame is None and back.root == b.root
    raw["leaves"][0].pop("profile")
    (tmp_path / "half.json").write_text(json.dumps(raw))
    with pytest.raises(errors.BatchFormatError, match="malformed.*both its frame digest and its profile"):
        AnchorBatch.read(tmp_path / "half.json")
    raw["leaves"][0]["profile"] = {"backend": "onnxruntime"}
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(errors.BatchFormatError, match="malformed"):
        AnchorBatch.read(tmp_path / "bad.json")


def test_a_results_line_states_the_frame_and_profile_its_leaf_binds():
    assert {"frame", "profile"} <= set(RESULT_BOUND)
    cm = np.zeros((2, 2), np.uint8)
    fd = frame_digest(_frame(), "BGR")
    rec = frame_record("s", 3, KEY, cm, ts=1.0, pos="p", class_names=None, frame=fd, profile=OV_BF16)
    assert rec.line["frame"] == fd.hex() and rec.line["profile"] == OV_BF16.as_dict()
    assert rec.leaf == leaf_digest("s", 3, KEY, cm, ts=1.0, pos="p", frame=fd, profile=OV_BF16)
    assert rec.anchor_leaf == Leaf("s", 3, rec.leaf, 1.0, "p", fd, OV_BF16)
    old = frame_record("s", 3, KEY, cm, ts=1.0, pos="p", class_names=None)
    assert "frame" not in old.line and old.leaf == leaf_digest("s", 3, KEY, cm, ts=1.0, pos="p")


# ------------------------------------------------------------------ what a device keeps
@pytest.mark.parametrize("text,every,budget", [
    ("off", 0, None), ("", 0, None), ("all", 1, None), ("every:10", 10, None),
    ("budget:2.5", 1, 2_500_000), ("every:3,budget:1", 3, 1_000_000), (" EVERY:2 ", 2, None)])
def test_keep_frames_forms(text, every, budget):
    k = KeepFrames.parse(text)
    assert (k.every, k.budget_bytes) == (every, budget)
    assert [s for s in range(7) if k.keeps(s)] == ([] if not every else list(range(0, 7, every)))


@pytest.mark.parametrize("text", ["every:0", "every:x", "budget:0", "budget:-1", "some", "every:2,every:3",
                                  "all,budget:1"])
def test_a_bad_keep_frames_value_is_one_line_at_start(text):
    from operators.config import ConfigError, load_config
    with pytest.raises(ConfigError) as e:
        load_config({"VERISEG_KEEP_FRAMES": text, "VERISEG_SOURCE": "x.avi", "VERISEG_MODEL": "m.vsb"})
    assert [ln for ln in str(e.value).splitlines() if "VERISEG_KEEP_FRAMES" in ln] == [
        f"VERISEG_KEEP_FRAMES: expected off, all, every:N, budget:MB or every:N,budget:MB (N a whole "
        f"number in 1..1000000, MB a number > 0), got {text!r}"]


@pytest.mark.parametrize("colour", ["BGR", "RGB", "GRAY"])
def test_a_retained_frame_reads_back_as_decoded_and_hashes_the_same(tmp_path, colour):
    img = _frame(20, 30)
    if colour == "GRAY":
        img = img[..., :1]
    p = write_frame(tmp_path, 12, img, colour)
    assert p == tmp_path / "frames" / f"000012.{colour.lower()}.vsf" and find_frame(tmp_path, 12) == p
    back, order = read_frame(p)
    assert order == colour and np.array_equal(back, img)
    assert frame_digest(back, order) == frame_digest(img, colour)
    assert find_frame(tmp_path, 13) is None


@pytest.mark.parametrize("name,content", [("000001.bgr.vsf", None), ("000001.vsf", b"x"),
                                          ("000001.bgr.png", b"not a png"), ("000001.rgb.png", "gray"),
                                          ("000001.bgr.vsf", b"VSF1"), ("000001.bgr.vsf", b"not a vsf"),
                                          ("000001.gray.vsf", "bgr"), ("000001.bgr.vsf", "cut"),
                                          ("000001.bgr.jpg", b"x")])
def test_a_missing_or_unreadable_retained_frame_is_frame_missing(tmp_path, name, content):
    import cv2
    p = tmp_path / name
    if content == "gray":
        cv2.imwrite(str(p), np.zeros((4, 4), np.uint8))
    elif content == "bgr":      # three channels under a one-channel name
        p.write_bytes(encode_frame(_frame(4, 4)))
    elif content == "cut":      # a write cut short (a full disk, a crash)
        p.write_bytes(encode_frame(_frame(40, 40))[:-9])
    elif content is not None:
        p.write_bytes(content)
    with pytest.raises(errors.AnchorVerificationFailed) as e:
        read_frame(p)
    assert e.value.check == "frame_missing" and "\n" not in str(e.value)


def test_a_frame_write_cut_short_by_a_full_disk_leaves_no_torn_frame(tmp_path, monkeypatch):
    """The disk fills halfway through a kept frame: OSError for the sink to report, and no
    half-written file a later --rescore would read (or a budget would count)."""
    import builtins
    import errno
    real_open = builtins.open

    class HalfDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    def full_disk_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        return HalfDisk(f) if str(file).startswith(str(tmp_path)) and ("w" in mode or "x" in mode) else f
    monkeypatch.setattr(builtins, "open", full_disk_open)
    with pytest.raises(OSError):
        write_frame(tmp_path, 3, _frame(40, 40), "BGR")
    monkeypatch.undo()
    assert find_frame(tmp_path, 3) is None and list((tmp_path / "frames").iterdir()) == []


def test_the_retained_frame_format_is_the_specified_encoding():
    """chain/retained_frame.py's spec, rebuilt by hand: header, then one zstd frame of the
    row-wise horizontal differences mod 256, declaring its size."""
    import struct

    import zstandard
    img = _frame(7, 9)
    delta = img.astype(np.int16)
    delta[:, 1:] -= img[:, :-1].astype(np.int16)
    payload = zstandard.ZstdCompressor(write_content_size=True).compress((delta % 256).astype(np.uint8).tobytes())
    by_hand = b"VSF1" + struct.pack("<IIB", 7, 9, 3) + payload
    assert np.array_equal(decode_frame(by_hand), img)
    data = encode_frame(img)
    assert data[:13] == by_hand[:13] and zstandard.frame_content_size(data[13:]) == 7 * 9 * 3
    gray = img[..., :1]
    assert np.array_equal(decode_frame(encode_frame(gray)), gray)


def _vsf(h, w, c, payload):
    import struct
    return b"VSF1" + struct.pack("<IIB", h, w, c) + payload


def _zstd_declaring(size: int) -> bytes:
    """A zstd frame header declaring ``size`` bytes of content, then one empty last block."""
    import struct
    return struct.pack("<I", 0xFD2FB528) + bytes([0xC0, 0x00]) + struct.pack("<Q", size) + b"\x01\x00\x00"


@pytest.mark.parametrize("h,w,c", [(65535, 65535, 3), (10000, 10000, 3)])
def test_a_frame_declaring_a_huge_size_is_refused_before_anything_is_allocated(monkeypatch, h, w, c):
    import zstandard
    calls = []
    real = zstandard.ZstdDecompressor
    monkeypatch.setattr(zstandard, "ZstdDecompressor", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert zstandard.frame_content_size(_zstd_declaring(h * w * c)) == h * w * c
    with pytest.raises(FrameFormatError, match="over 256 MiB"):
        decode_frame(_vsf(h, w, c, _zstd_declaring(h * w * c)))
    assert calls == [] and h * w * c > MAX_FRAME_BYTES


@pytest.mark.parametrize("data,why", [
    (_vsf(4, 4, 3, b"\x28\xb5\x2f\xfd" + bytes(12)), "not a zstd frame|declare"),
    (b"VSF2" + bytes(20), "no VSF1 header"),
    (_vsf(0, 4, 3, b""), "out of range"),
    (_vsf(4, 4, 2, b""), "out of range"),
    (_vsf(4, 4, 3, b"nonsense"), "not a zstd frame"),
])
def test_a_malformed_frame_is_one_line(data, why):
    with pytest.raises(FrameFormatError, match=why) as e:
        decode_frame(data)
    assert "\n" not in str(e.value)


def test_a_frame_whose_pixels_lie_about_their_size_is_refused():
    """The zstd frame must declare exactly H*W*C bytes: a payload declaring more (a
    decompression bomb under a small header) or less, or none, is refused."""
    import zstandard
    small = np.zeros((4, 4, 3), np.uint8)
    for payload in (zstandard.ZstdCompressor(write_content_size=True).compress(bytes(4 * 4 * 3 + 1)),
                    zstandard.ZstdCompressor(write_content_size=True).compress(bytes(47)),
                    _zstd_declaring(1 << 40),
                    zstandard.ZstdCompressor(write_content_size=False).compress(bytes(48))):
        with pytest.raises(FrameFormatError, match="declare"):
            decode_frame(_vsf(4, 4, 3, payload))
    assert np.array_equal(decode_frame(_vsf(4, 4, 3, zstandard.ZstdCompressor().compress(bytes(48)))), small)


def test_bytes_after_the_pixels_or_a_frame_cut_short_are_refused():
    """One zstd frame, to the end of the file: a second frame, a skippable frame, junk after
    it or a frame cut short is one line, not pixels read from part of the file."""
    import zstandard
    pixels = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(48))
    skippable = (0x184D2A50).to_bytes(4, "little") + (4).to_bytes(4, "little") + b"evil"
    for extra in (pixels, skippable, b"\0", b"junk after the frame"):
        with pytest.raises(FrameFormatError, match="bytes follow the pixels' zstd frame") as e:
            decode_frame(_vsf(4, 4, 3, pixels + extra))
        assert "\n" not in str(e.value)
    with pytest.raises(FrameFormatError, match="cut short|do not decompress"):
        decode_frame(_vsf(4, 4, 3, pixels[:-3]))
    assert np.array_equal(decode_frame(_vsf(4, 4, 3, pixels)), np.zeros((4, 4, 3), np.uint8))


def test_a_frame_holding_more_than_it_declares_is_refused_not_inflated():
    """A header declaring the right size over blocks that hold more: zstd stops at the
    declared size (the decompression bomb a small header would otherwise hide)."""
    import zstandard
    big = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(200))
    assert zstandard.frame_content_size(big) == 200 and big[5] == 200   # single segment, 1-byte size
    lying = big[:5] + bytes([48]) + big[6:]
    assert zstandard.frame_content_size(lying) == 48
    with pytest.raises(FrameFormatError, match="do not decompress|hold"):
        decode_frame(_vsf(4, 4, 3, lying))


def test_a_kept_frame_turned_into_a_png_reads_back_as_the_same_array(tmp_path):
    from chain.cli import main
    img = _frame(12, 20)
    p = write_frame(tmp_path, 3, img, "RGB")
    assert main(["frame", str(p), "-o", str(tmp_path / "000003.rgb.png")]) == 0
    back, order = read_frame(tmp_path / "000003.rgb.png")
    assert order == "RGB" and np.array_equal(back, img)
    import cv2   # a viewer sees the true colours: cv2 reads the PNG as BGR
    assert np.array_equal(cv2.imread(str(tmp_path / "000003.rgb.png"))[..., ::-1], img)
    assert viewable(img, "RGB") == (tmp_path / "000003.rgb.png").read_bytes()
    assert main(["frame", str(p), "-o", str(tmp_path / "000003.bgr.png")]) == 1   # another order
    assert not (tmp_path / "000003.bgr.png").exists()


# ------------------------------------------------------------------ re-execution on small graphs
def _scores_model(size=(8, 8)) -> bytes:
    """uint8 NHWC RGB -> scores [N, 3, H, W] = (R, G, B) / 10 -> ArgMax over axis 1 -> uint8 ids."""
    h, w = size
    x = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", h, w, 3])
    y = helper.make_tensor_value_info("classes", TensorProto.UINT8, ["N", h, w])
    nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["f"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Div", ["t", "ten"], ["scores"]),
             helper.make_node("ArgMax", ["scores"], ["am"], axis=1, keepdims=0),
             helper.make_node("Cast", ["am"], ["classes"], to=TensorProto.UINT8)]
    g = helper.make_graph(nodes, "scores", [x], [y], [helper.make_tensor("ten", TensorProto.FLOAT, [], [10.0])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


@pytest.fixture
def scores_blob(tmp_path):
    blob = tmp_path / "scores.vsb"
    key = model_store.write(str(blob), _scores_model(), tiny_card(size=(8, 8), name="scores"))
    return blob, key


def _proven(key, image, colour, profile, seq=0):
    return SimpleNamespace(stream="s", seq=seq, model_key=key, frame=frame_digest(image, colour).hex(),
                           profile=profile.as_dict())


def _rgb_frame():
    """RGB with R top score everywhere, G 0.5 below it on the left half (a near tie), B far below."""
    img = np.zeros((8, 8, 3), np.uint8)
    img[..., 0] = 100
    img[:, :4, 1] = 95
    img[..., 2] = 10
    return img


def test_rescore_compares_exactly_under_the_reference_profile(tmp_path, scores_blob):
    blob, key = scores_blob
    img = _rgb_frame()
    p = write_frame(tmp_path, 0, img, "RGB")
    honest = np.zeros((8, 8), np.uint8)
    r = rescore_frame(_proven(key, img, "RGB", reference_profile()), honest, blob, p).check()
    assert (r.compared, r.identical, r.within_tolerance, r.mismatched) == (64, 64, 0, 0)
    near = honest.copy()
    near[0, 0] = 1       # class G at a pixel where it scores 0.5 below R
    r = rescore_frame(_proven(key, img, "RGB", ORT_CPU), near, blob, p)
    assert (r.identical, r.within_tolerance, r.mismatched, r.tolerance) == (63, 0, 1, None)
    with pytest.raises(errors.AnchorVerificationFailed) as e:
        r.check()
    assert e.value.check == "rescore_mismatch"
    assert str(e.value).startswith("rescore mismatch: 1 of 64 pixels disagree")


def test_rescore_allows_a_near_tie_under_another_profile_and_nothing_more(tmp_path, scores_blob):
    blob, key = scores_blob
    img = _rgb_frame()
    p = write_frame(tmp_path, 0, img, "RGB")
    anchored = np.zeros((8, 8), np.uint8)
    anchored[0, 0] = 1                     # G: 0.5 below the top score
    r = rescore_frame(_proven(key, img, "RGB", OV_BF16), anchored, blob, p).check()
    assert (r.identical, r.within_tolerance, r.mismatched) == (63, 1, 0)
    assert r.tolerance == TOLERANCES["bf16"] and r.max_gap == pytest.approx(0.5)
    anchored[0, 1] = 2                     # B: 9 below the top score
    anchored[0, 6] = 1                     # G on the right half: 10 below
    r = rescore_frame(_proven(key, img, "RGB", OV_BF16), anchored, blob, p)
    assert (r.identical, r.within_tolerance, r.mismatched) == (61, 1, 2)
    anchored[0, 1] = 255                   # no class at all
    assert rescore_frame(_proven(key, img, "RGB", OV_BF16), anchored, blob, p).mismatched == 2
    # under fp32 numerics a 0.5 gap is no rounding difference
    r = rescore_frame(_proven(key, img, "RGB", ExecutionProfile("openvino", "CPU", "fp32", "x")),
                      np.where(np.arange(64).reshape(8, 8) == 0, 1, 0).astype(np.uint8), blob, p)
    assert (r.within_tolerance, r.mismatched) == (0, 1)


def test_rescore_refuses_another_frame_and_a_leaf_without_one(tmp_path, scores_blob):
    blob, key = scores_blob
    img = _rgb_frame()
    p = write_frame(tmp_path, 0, img, "RGB")
    other = img.copy()
    other[7, 7, 2] += 1
    with pytest.raises(errors.AnchorVerificationFailed) as e:
        rescore_frame(_proven(key, other, "RGB", ORT_CPU), np.zeros((8, 8), np.uint8), blob, p)
    assert e.value.check == "frame_mismatch"
    # the same pixels said to be BGR are another frame
    with pytest.raises(errors.AnchorVerificationFailed) as e:
        rescore_frame(_proven(key, img, "BGR", ORT_CPU), np.zeros((8, 8), np.uint8), blob, p)
    assert e.value.check == "frame_mismatch"
    v2 = SimpleNamespace(stream="s", seq=0, model_key=key, frame=None, profile=None)
    with pytest.raises(errors.AnchorVerificationFailed) as e:
        rescore_frame(v2, np.zeros((8, 8), np.uint8), blob, p)
    assert e.value.check == "rescore_unavailable" and "v1/v2 leaf" in str(e.value)
    with pytest.raises(errors.AnchorVerificationFailed) as e:
        rescore_frame(_proven("cd" * 32, img, "RGB", ORT_CPU), np.zeros((8, 8), np.uint8), blob, p)
    assert e.value.check == "rescore_unavailable"


def test_rescore_maps_a_mask_at_the_frames_size(tmp_path, scores_blob):
    """VERISEG_MASK_SIZE=frame: the mask is the model's, resized to the frame by nearest."""
    import cv2
    blob, key = scores_blob
    img = np.zeros((12, 20, 3), np.uint8)
    img[..., 0] = 100
    img[:, 10:, 1] = 200
    p = write_frame(tmp_path, 0, img, "RGB")
    small = cv2.resize(img, (8, 8), interpolation=cv2.INTER_LINEAR)
    ids = np.argmax(small.astype(np.float32), axis=2).astype(np.uint8)
    mask = cv2.resize(ids, (20, 12), interpolation=cv2.INTER_NEAREST)
    r = rescore_frame(_proven(key, img, "RGB", ORT_CPU), mask, blob, p).check()
    assert r.compared == 240 and r.identical == 240


def test_frames_an_earlier_run_kept_count_against_the_budget(tmp_path):
    """A restart of the stream: its kept frames on disk share the budget with new ones."""
    from operators.frames import ScoredFrame
    from operators.sinks.frames import FrameKeeper
    from operators.telemetry import Stats
    img = _frame(16, 16)
    for seq in (0, 1, 2):
        write_frame(tmp_path, seq, img, "BGR")
    size = find_frame(tmp_path, 0).stat().st_size
    stats = Stats()
    keeper = FrameKeeper(tmp_path, KeepFrames(1, int(3.5 * size)), stats, "s")
    assert [p.name[:6] for p in sorted((tmp_path / "frames").iterdir())] == ["000000", "000001", "000002"]
    keeper.keep(ScoredFrame("s", 3, 0.0, "", np.zeros((2, 2), np.uint8), KEY, raw=img, raw_colour="BGR"))
    assert [p.name[:6] for p in sorted((tmp_path / "frames").iterdir())] == ["000001", "000002", "000003"]
    assert stats.kept == {"s": 1} and stats.rotated == {"s": 1}
    # a frame without its decoded picture (not selected at the source) is not kept
    keeper.keep(ScoredFrame("s", 4, 0.0, "", np.zeros((2, 2), np.uint8), KEY))
    assert find_frame(tmp_path, 4) is None


def test_a_frame_too_large_to_be_read_back_is_not_kept_but_counted_and_said_once(tmp_path, monkeypatch,
                                                                                caplog):
    """A kept frame no reader would take back could never be re-scored: the keeper counts
    it as not_kept and says so once a stream, instead of writing it."""
    import chain.retained_frame as retained
    import operators.sinks.frames as keeping
    from operators.frames import ScoredFrame
    from operators.telemetry import Stats
    img = _frame(16, 16)
    monkeypatch.setattr(keeping, "MAX_FRAME_BYTES", img.nbytes - 1)   # as if 16x16x3 were over 256 MiB
    stats = Stats()
    keeper = keeping.FrameKeeper(tmp_path, KeepFrames(1, None), stats, "s")
    with caplog.at_level("WARNING", logger="veriseg.flow"):
        for seq in (0, 1):
            keeper.keep(ScoredFrame("s", seq, 0.0, "", np.zeros((2, 2), np.uint8), KEY, raw=img, raw_colour="BGR"))
        keeper.keep(ScoredFrame("s", 2, 0.0, "", np.zeros((2, 2), np.uint8), KEY, raw=img[:8], raw_colour="BGR"))
    assert find_frame(tmp_path, 0) is None and find_frame(tmp_path, 1) is None
    assert find_frame(tmp_path, 2) is not None            # a smaller frame of the stream still is
    assert stats.not_kept == {"s": 2} and stats.kept == {"s": 1}
    said = [r.getMessage() for r in caplog.records if "not kept" in r.getMessage()]
    assert len(said) == 1 and "frame 0 is 16x16" in said[0] and "\n" not in said[0]
    assert retained.MAX_FRAME_BYTES == 256 << 20
