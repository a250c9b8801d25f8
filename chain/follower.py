"""Following the registry: its events in chain order from a block on, polled, through
node outages.

    follower = EventFollower(registry, from_block, poll_interval=1.0, stop=stop_event,
                             on_outage=..., on_reconnect=...)
    for poll in follower.polls():           # one Poll per round, events or not
        for ev in poll.events:
            if not handle(ev):              # e.g. the node went away while handling it
                follower.rewind(ev.block)   # the next poll reads that block again
                break

or ``for ev in follower.events(): ...`` when every round is alike. ``Registry.follow``
and the flow's model watcher both follow through this class, so the polling, backoff and
outage rules have one owner.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from . import errors
from .retries import Backoff
from .values import ChainEvent

__all__ = ["EventFollower", "Poll"]


@dataclass(frozen=True)
class Poll:
    """One round of following."""

    events: tuple[ChainEvent, ...]   # new events of the wanted kinds, in chain order
    next_block: int                  # where the next round reads from (unless rewound)
    reachable: bool                  # False: the node did not answer (no events this round)


class EventFollower:
    """Polls ``registry.events`` from ``from_block`` every ``poll_interval`` s.

    An error in ``retry_on`` starts an outage: ``on_outage(exc)`` is called once, rounds go
    on with a doubling delay (up to ``max_delay`` s) and report ``reachable=False``; the
    first answer after it calls ``on_reconnect(seconds down)``. An outage longer than
    ``max_outage`` s (None: no limit) raises the error. Ends when ``stop`` is set."""

    def __init__(self, registry, from_block: int = 0, *,
                 kinds: tuple[str, ...] | None = ("Deployed", "Revoked"),
                 poll_interval: float = 1.0, max_delay: float = 10.0,
                 max_outage: float | None = None, stop: threading.Event | None = None,
                 retry_on: tuple[type[BaseException], ...] = (errors.ChainUnavailable,),
                 on_outage: Callable[[BaseException], None] | None = None,
                 on_reconnect: Callable[[float], None] | None = None):
        self.registry = registry
        self.block = from_block
        self.kinds = kinds
        self.poll_interval = poll_interval
        self.max_delay = max_delay
        self.max_outage = max_outage
        self.stop = stop
        self.retry_on = retry_on
        self.on_outage = on_outage
        self.on_reconnect = on_reconnect
        self.down_since: float | None = None   # monotonic time the current outage began

    def rewind(self, block: int) -> None:
        """Read from ``block`` again at the next round (an event could not be handled)."""
        self.block = block

    def poll_once(self) -> Poll:
        """One round without waiting: the new events, or an unreachable round."""
        try:
            evs, nxt = self.registry.events(self.block, kinds=self.kinds)
        except self.retry_on as exc:
            now = time.monotonic()
            if self.down_since is None:
                self.down_since = now
                if self.on_outage is not None:
                    self.on_outage(exc)
            elif self.max_outage is not None and now - self.down_since > self.max_outage:
                raise
            return Poll((), self.block, False)
        if self.down_since is not None:
            down, self.down_since = time.monotonic() - self.down_since, None
            if self.on_reconnect is not None:
                self.on_reconnect(down)
        self.block = nxt
        return Poll(tuple(evs), nxt, True)

    def polls(self) -> Iterator[Poll]:
        """Rounds until ``stop`` is set, waiting between them (longer during an outage)."""
        backoff = Backoff(2 * self.poll_interval, self.max_delay)
        while self.stop is None or not self.stop.is_set():
            poll = self.poll_once()
            if poll.reachable:
                backoff.reset()
            delay = self.poll_interval if poll.reachable else backoff.next()
            yield poll
            if self.stop is not None:
                if self.stop.wait(delay):
                    return
            else:
                time.sleep(delay)

    def events(self) -> Iterator[ChainEvent]:
        """Every new event, in chain order, across rounds."""
        for poll in self.polls():
            yield from poll.events
