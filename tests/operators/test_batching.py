"""operators.batching: which frames share a run, when a run starts, and what each stream gets
back. The flow-level guarantees (order, revocation, hot swap, recovery with 1, 3 and 8
streams) are in tests/dataflows/test_batching_flow.py."""
from __future__ import annotations

import time
from concurrent.futures import Future

import numpy as np
import pytest

from operators.backends.base import FuturePending
from operators.batching import Batcher, BatchPart


class FakeRunner:
    """Scores a batch by returning each frame's first pixel; records every run it starts."""

    def __init__(self, depth=2, fail=None):
        self.depth = depth
        self.runs: list[np.ndarray] = []
        self.fail = fail

    def submit(self, x):
        if self.fail == "submit":
            raise RuntimeError("runner closed")
        self.runs.append(x.copy())
        fut = Future()
        if self.fail == "run":
            fut.set_exception(RuntimeError("device lost"))
        else:
            fut.set_result((x[:, 0, 0, 0].copy(), 4.0))
        return FuturePending(fut)


def frames(*values):
    return np.array(values, np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)


def test_size_one_is_the_bare_runner():
    r = FakeRunner()
    b = Batcher(1, 50)
    p = b.submit(r, frames(1))
    assert not isinstance(p, BatchPart) and len(r.runs) == 1
    assert b.depth(r) == r.depth and b.depth(FakeRunner(depth=1)) == 1


def test_frames_of_several_submissions_share_one_run_and_each_gets_its_own_rows():
    r = FakeRunner()
    b = Batcher(4, 10_000)
    a, c, d = b.submit(r, frames(1)), b.submit(r, frames(2, 3)), b.submit(r, frames(4))
    assert [len(x) for x in r.runs] == [4]            # started the moment it was full
    assert [list(p.result()[0]) for p in (a, c, d)] == [[1], [2, 3], [4]]
    assert a.batch == c.batch == d.batch == 4
    assert a.result()[1] == 4.0                        # the run's own time, for every part


def test_a_stream_that_needs_a_result_starts_its_group_at_once():
    r = FakeRunner()
    b = Batcher(8, 10_000)
    p = b.submit(r, frames(7))
    assert not r.runs and not p.done()
    t0 = time.perf_counter()
    assert list(p.result()[0]) == [7]
    assert time.perf_counter() - t0 < 5                # not the 10 s wait
    assert [len(x) for x in r.runs] == [1]


def test_a_group_starts_once_its_first_frame_waited_wait_ms():
    r = FakeRunner()
    b = Batcher(8, 30)
    p = b.submit(r, frames(1))
    b.submit(r, frames(2))
    assert not p.done() and not r.runs
    time.sleep(0.05)
    assert p.done() and [len(x) for x in r.runs] == [2]
    q = b.submit(r, frames(3))                         # the next group, on its own
    assert [len(x) for x in r.runs] == [2] and not q.done()


def test_a_submission_that_would_overfill_the_group_starts_it_and_opens_the_next():
    r = FakeRunner()
    b = Batcher(4, 10_000)
    first = b.submit(r, frames(1, 2, 3))
    second = b.submit(r, frames(4, 5))
    assert [len(x) for x in r.runs] == [3]
    assert list(first.result()[0]) == [1, 2, 3] and list(second.result()[0]) == [4, 5]
    assert second.batch == 2


def test_two_models_or_two_shapes_never_share_a_run():
    r1, r2 = FakeRunner(), FakeRunner()
    b = Batcher(8, 10_000)
    parts = [b.submit(r1, frames(1)), b.submit(r2, frames(2)), b.submit(r1, frames(3)),
             b.submit(r1, np.full((1, 4, 4, 3), 9, np.uint8))]
    assert [list(p.result()[0]) for p in parts] == [[1], [2], [3], [9]]
    assert [x[:, 0, 0, 0].tolist() for x in r1.runs] == [[1, 3], [9]]
    assert [x[:, 0, 0, 0].tolist() for x in r2.runs] == [[2]]


@pytest.mark.parametrize("fail", ["run", "submit"])
def test_a_run_that_fails_fails_each_stream_s_frames_in_its_own_result(fail):
    r = FakeRunner(fail=fail)
    b = Batcher(2, 10_000)
    a, c = b.submit(r, frames(1)), b.submit(r, frames(2))   # full: started
    for p in (a, c):
        assert p.done()
        with pytest.raises(RuntimeError):
            p.result()
