"""chain.follower: the registry's events in order, through outages, with rewind: the one
follower the flow's model watcher and Registry.follow share."""
from __future__ import annotations

import threading

import pytest

from chain import errors
from chain.follower import EventFollower
from tests.flow_fixtures import FakeRegistry

K1, K2 = "a1" * 32, "b2" * 32


def test_rounds_report_events_outages_and_reconnects_and_rewind_reads_again():
    reg = FakeRegistry()
    reg.register(K1, "m")
    reg.deploy("d", K1)
    notes = []
    f = EventFollower(reg, 0, poll_interval=0.01, max_delay=0.04,
                      retry_on=(errors.ChainError,),
                      on_outage=lambda e: notes.append(("down", str(e))),
                      on_reconnect=lambda s: notes.append(("up", s >= 0)))
    first = f.poll_once()
    assert first.reachable and [e.key for e in first.events] == [K1]
    assert f.block == first.next_block and f.poll_once().events == ()   # each event once

    reg.down = True
    assert [f.poll_once().reachable for _ in range(3)] == [False] * 3
    assert notes == [("down", "fake node is down")]                      # said once
    reg.down = False
    reg.deploy("d", K2)
    back = f.poll_once()
    assert back.reachable and [e.version for e in back.events] == [2]
    assert notes[-1] == ("up", True)
    f.rewind(back.events[0].block)                                       # could not handle it
    assert [e.version for e in f.poll_once().events] == [2]


def test_polls_back_off_during_an_outage_and_a_long_one_raises():
    reg = FakeRegistry()
    reg.down = True
    f = EventFollower(reg, 0, poll_interval=0.01, max_delay=0.02, max_outage=0.1)
    with pytest.raises(errors.ChainUnavailable):
        for poll in f.polls():
            assert not poll.reachable


def test_events_end_when_stop_is_set():
    reg = FakeRegistry()
    reg.register(K1, "m")
    stop = threading.Event()
    seen = []
    f = EventFollower(reg, 0, poll_interval=0.01, stop=stop)
    t = threading.Thread(target=lambda: [seen.append(ev) or stop.set() for ev in f.events()])
    t.start()
    reg.deploy("d", K1)
    t.join(10)
    assert not t.is_alive() and [e.kind for e in seen] == ["Deployed"]


def test_rounds_wait_the_poll_interval_then_double_while_the_node_is_down():
    class Waits(threading.Event):
        def __init__(self):
            super().__init__()
            self.delays = []

        def wait(self, timeout=None):   # said, not waited for
            self.delays.append(timeout)
            return len(self.delays) >= 6

    reg, stop = FakeRegistry(), Waits()
    f = EventFollower(reg, 0, poll_interval=1.0, max_delay=5.0, stop=stop)
    downs = iter([True, True, True, False, True])   # the state of the next round
    for _ in f.polls():
        reg.down = next(downs, False)
    assert stop.delays == [1.0, 2.0, 4.0, 5.0, 1.0, 2.0]
