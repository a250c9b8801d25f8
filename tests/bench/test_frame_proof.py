"""bench.frame_proof: its per-frame costs are measured on the sample clip, and its variants
are the flow without the digest, with it, keeping every 10th frame and every frame."""
from __future__ import annotations

import bench.frame_proof as fp
from tests.conftest import need


def test_the_variants_and_the_unit_costs():
    assert fp.VARIANTS == {"no_digest": ("off", False), "digest": ("off", True),
                           "keep_every_10": ("every:10", True), "keep_all": ("all", True)}
    need(fp.CLIP.exists(), "models/sample.avi")
    u = fp._unit_costs()
    assert u["frame"] == "800x600" and u["digest_ms"] > 0 and u["keep_frame_ms"] > 0
    assert u["disk_gb_per_hour_30fps"]["all"] > u["disk_gb_per_hour_30fps"]["every_10"] > 0
