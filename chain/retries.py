"""When a chain call is tried again: the retry policies, on tenacity.

Only transient transport errors are retried (a refused connection, a timeout); a revert,
a refusal the registry decoded (any :class:`chain.errors.ChainError`) or a programming
error never is, since trying again cannot change its answer.  One policy per concern:

- :func:`retry` — one JSON-RPC exchange (a read, a transaction's preparation and send):
  a few attempts within a deadline, then one ``ChainUnavailable`` line;
- :func:`outage_policy` — a long-lived sender (the flow's anchor thread): waits out an
  outage of any length, backing off exponentially with jitter, until told to give up.

Whatever else a node answers (an RPC error the client does not know, an HTTP error, a
malformed answer) is named by :func:`node_failed`: one ``NodeError`` line naming the node
and the call, never a traceback.

A loop that is not a call to repeat (the event follower's rounds, a live source's
reconnects) waits by :class:`Backoff`: the same exponential schedule, kept between rounds.
"""
from __future__ import annotations

import threading
from typing import Callable, NamedTuple, Optional, TypeVar

from tenacity import (RetryCallState, Retrying, retry_if_exception, retry_if_exception_type,
                      stop_after_attempt, stop_before_delay, stop_never, wait_exponential,
                      wait_exponential_jitter)

from model_store.util import first_line

from . import errors

__all__ = ["Backoff", "is_transient", "is_node_error", "retry", "unavailable", "node_failed",
           "outage_policy"]

T = TypeVar("T")


def _transient_types() -> tuple[type[BaseException], ...]:
    import requests
    from web3.exceptions import ProviderConnectionError, RequestTimedOut, TimeExhausted
    return (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
            ProviderConnectionError, RequestTimedOut, TimeExhausted, ConnectionError, TimeoutError)


def is_transient(exc: BaseException) -> bool:
    """A transport failure that may not happen again; never a ChainError (revert, refusal)."""
    return not isinstance(exc, errors.ChainError) and isinstance(exc, _transient_types())


def is_node_error(exc: BaseException) -> bool:
    """An answer of the node (or of the HTTP server in front of it) that the client does
    not know; not a programming error of the client."""
    import requests
    from web3.exceptions import Web3Exception
    return not isinstance(exc, errors.ChainError) and isinstance(
        exc, (Web3Exception, requests.exceptions.RequestException))


def node_failed(endpoint: str, what: str, exc: BaseException) -> errors.NodeError:
    """One line for a node error the client does not know, naming the node and the call."""
    return errors.NodeError(
        f"chain node {endpoint} failed while {what} ({type(exc).__name__}: "
        f"{first_line(exc, 160)}); check the node's logs and that the URL is its Ethereum "
        "JSON-RPC endpoint")


def retry(fn: Callable[[], T], *, attempts: int = 3, base_delay: float = 0.2,
          max_delay: float = 2.0, deadline: Optional[float] = None,
          on_error: Optional[Callable[[BaseException], errors.ChainError]] = None) -> T:
    """Call ``fn``; on a transient error retry with exponential backoff and jitter, at most
    ``attempts`` times and never sleeping past ``deadline`` seconds in total.  The last
    transient error is converted by ``on_error`` (default: ChainUnavailable); any other
    error propagates at once."""
    stop = stop_after_attempt(attempts)
    if deadline is not None:
        stop = stop | stop_before_delay(deadline)
    policy = Retrying(stop=stop, retry=retry_if_exception(is_transient), reraise=True,
                      wait=wait_exponential_jitter(multiplier=base_delay, max=max_delay,
                                                   jitter=base_delay / 2))
    try:
        return policy(fn)
    except Exception as exc:  # noqa: BLE001 - only the transient ones are converted
        if not is_transient(exc):
            raise
        if on_error is not None:
            raise on_error(exc) from exc
        raise errors.ChainUnavailable(f"chain unavailable: {first_line(exc, 160)}") from exc


def unavailable(endpoint: str, what: str) -> Callable[[BaseException], errors.ChainError]:
    """A converter of transport errors into a one-line ChainUnavailable."""
    def conv(exc: BaseException) -> errors.ChainError:
        reason = first_line(exc, 160)
        return errors.ChainUnavailable(
            f"chain node {endpoint} unavailable while {what} ({type(exc).__name__}: "
            f"{reason}); check that the node runs and the URL is right")
    return conv


def outage_policy(give_up: threading.Event, *, initial: float = 0.5, max_delay: float = 30.0,
                  before_sleep: Optional[Callable[[RetryCallState], None]] = None) -> Retrying:
    """Retry ``ChainUnavailable`` (the client's word for a transport failure that outlived
    :func:`retry`) until it passes or ``give_up`` is set; waiting is cut short by
    ``give_up``, so a closing sender does not sleep out its backoff."""
    def stop(state: RetryCallState) -> bool:
        return give_up.is_set() or stop_never(state)

    return Retrying(stop=stop, retry=retry_if_exception_type(errors.ChainUnavailable),
                    wait=wait_exponential_jitter(multiplier=initial, max=max_delay, jitter=initial),
                    sleep=give_up.wait, before_sleep=before_sleep, reraise=True)


class _Attempt(NamedTuple):
    attempt_number: int   # all a tenacity wait reads of its call state


class Backoff:
    """The delays of a loop that keeps failing: ``initial``, doubling up to ``maximum``
    (tenacity's exponential wait); :meth:`reset` after a success starts over.

        backoff = Backoff(0.5, 30.0)
        stop.wait(backoff.next())     # 0.5, 1, 2, ... 30, 30
        backoff.reset()               # it worked: the next failure waits 0.5 again
    """

    def __init__(self, initial: float, maximum: float):
        self._wait = wait_exponential(multiplier=initial, max=maximum)
        self.failures = 0

    def next(self) -> float:
        """The delay after one more failure."""
        self.failures += 1
        return self._wait(_Attempt(self.failures))

    def reset(self) -> None:
        self.failures = 0
