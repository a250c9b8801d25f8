"""chain.results: one computation of a frame's results line, its leaf and class shares,
shared by the flow's sink and anchor-verify."""
from __future__ import annotations

import numpy as np
import pytest

from chain.anchoring import AnchorBatch, leaf_digest
from chain.results import class_shares, frame_record
from model_store import CARLA_CLASSES

KEY = "ab" * 32
NAMES = [c.name for c in CARLA_CLASSES]


def test_class_shares_count_every_id_including_ones_past_the_classes():
    cm = np.zeros((4, 5), np.uint8)
    cm[0, :2] = 7       # Road: 2 of 20 pixels
    cm[1, 0] = 255      # "no class": named by its number
    shares = class_shares(cm, NAMES)
    assert shares == {"Unlabeled": 0.85, "Road": 0.1, "255": 0.05}
    assert class_shares(cm[..., None], NAMES) == shares      # an H x W x 1 map is the same map


def test_class_shares_agree_with_a_histogram_of_the_map():
    cv2 = pytest.importorskip("cv2")
    cm = np.random.default_rng(3).integers(0, 16, (64, 48), dtype=np.uint8)
    hist = cv2.calcHist([cm], [0], None, [256], [0, 256]).ravel()
    want = {(NAMES[i] if i < len(NAMES) else str(i)): round(float(c) / cm.size, 5)
            for i, c in enumerate(hist) if c}
    assert class_shares(cm, NAMES) == want


def test_frame_record_writes_the_line_in_order_and_binds_what_it_states():
    cm = np.full((3, 4), 10, np.uint8)
    rec = frame_record("cam0", 7, KEY.upper(), cm, ts=1_700_000_000.1234567, pos="clip.avi#7",
                       class_names=NAMES, batch=2, mask="masks/000007.png")
    assert list(rec.line) == ["stream", "seq", "ts", "pos", "model_key", "batch", "mask", "shares",
                              "leaf"]
    assert rec.line["ts"] == 1_700_000_000.123457 and rec.line["model_key"] == KEY
    assert rec.line["shares"] == {"Car": 1.0}
    # the leaf binds the ts as the line states it (rounded), so the line verifies
    assert rec.leaf == leaf_digest("cam0", 7, KEY, cm, ts=1_700_000_000.123457, pos="clip.avi#7")
    assert rec.line["leaf"] == rec.leaf.hex()
    batch = AnchorBatch(KEY, [rec.anchor_leaf])
    assert batch.leaves[0].digest == rec.leaf and batch.leaves[0].ts == rec.line["ts"]


def test_frame_record_without_leaf_or_shares():
    cm = np.zeros((2, 2), np.uint8)
    rec = frame_record("s", 0, KEY, cm, ts=1.0, pos=None, class_names=None, with_leaf=False,
                       with_shares=False)
    assert rec.leaf is None and rec.line == {"stream": "s", "seq": 0, "ts": 1.0, "pos": None,
                                             "model_key": KEY}
    with pytest.raises(ValueError):
        rec.anchor_leaf
