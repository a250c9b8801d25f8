"""The score's session cache keeps only the newest model, so hot swaps do not grow memory."""
import gc
import weakref

import numpy as np
import pytest

from conftest import tiny_onnx

pytest.importorskip("onnxruntime")


def test_a_superseded_session_lives_only_while_a_stream_still_scores_with_it():
    from operators.frames import ModelUpdate
    from operators.score import SessionCache
    cache = SessionCache()
    cache.configure(providers="cpu", threads=1)
    onnx = tiny_onnx()
    old = cache.get(ModelUpdate("load", "a" * 64, 1, onnx=onnx))
    new = cache.get(ModelUpdate("load", "b" * 64, 2, onnx=onnx))
    assert cache.keys() == ["b" * 64]
    # the stream that still holds the old entry can finish its batch with it ...
    x = np.zeros((1, 8, 8, 3), np.uint8)
    x[..., 2] = 1
    assert (old.session.run([old.output_name], {old.input_name: x})[0] == 2).all()
    # ... and once it switches, nothing keeps the old session alive
    ref = weakref.ref(old.session)
    del old
    gc.collect()
    assert ref() is None
    assert cache.get(ModelUpdate("load", "b" * 64, 3, onnx=onnx)) is new


def test_a_stream_without_a_valid_model_is_paused_and_resumed_by_the_next_model():
    """The score pauses the stream's file replay while no valid model may score it (no frame
    is dropped) and resumes it when a verified model arrives."""
    from operators import sources
    from operators.frames import Frame, ModelUpdate
    from operators.score import SESSIONS, ScoreLogic
    SESSIONS.configure(providers="cpu", threads=1)
    logic = ScoreLogic("paused-cam", pending=4)
    frame = Frame("paused-cam", 0, 0.0, "#0", np.zeros((8, 8, 3), np.uint8))
    out, _ = logic.on_batch([frame])
    assert out == [] and "paused-cam" in sources._PAUSED and len(logic.pending) == 1
    out, _ = logic.on_batch([ModelUpdate("load", "c" * 64, 1, onnx=tiny_onnx())])
    assert "paused-cam" not in sources._PAUSED
    assert [r.seq for r in out] == [0]
