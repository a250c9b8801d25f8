"""Reading the registry's event logs: in chain order, in LOG_CHUNK-block requests, decoded
to ChainEvent (a mixin of ``chain.registry.Registry``, on its ``_read`` / ``_call``)."""

from __future__ import annotations

import threading
from typing import Callable, Iterator

from .values import ChainEvent, KeyDeployment, parse_key

EVENT_KINDS = ("Registered", "Deployed", "Revoked", "Anchored", "RoleGranted", "RoleRevoked",
               "OwnershipTransferStarted", "OwnershipTransferred")
LOG_CHUNK = 5_000  # blocks per eth_getLogs request


def _jsonable(v):
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    return v


class RegistryEvents:
    """The event side of a Registry."""

    def events(self, from_block: int = 0, kinds: tuple[str, ...] | None = ("Deployed", "Revoked"),
               to_block: int | None = None) -> tuple[list[ChainEvent], int]:
        """Registry events from ``from_block`` on, in chain order, and the block to ask
        from next time. ``kinds=None`` returns every event kind."""
        latest = self.block_number() if to_block is None else to_block
        if from_block > latest:
            return [], from_block
        wanted = set(EVENT_KINDS if kinds is None else kinds)
        topics = [t for t, n in self._topic_to_event.items() if n in wanted]
        out = [ev for ev in self._logs([topics], from_block, latest) if ev.kind in wanted]
        return out, latest + 1

    def _logs(self, topics: list, from_block: int, to_block: int) -> list[ChainEvent]:
        """Decoded registry logs matching ``topics`` (eth_getLogs positions), in chain order,
        read in LOG_CHUNK-block requests.  One request per chunk for all the wanted event
        kinds (web3's ``contract.events.X.get_logs`` asks once per kind), decoded by web3's
        ``process_log``."""
        def read(start: int, end: int) -> list:
            flt = {"fromBlock": start, "toBlock": end, "address": self.address, "topics": topics}
            logs = self._read(lambda: self.w3.eth.get_logs(flt), "reading events")
            return [self._decode_log(lg) for lg in logs]
        return self._chunked(read, from_block, to_block)

    def _filtered(self, kind: str, filters: dict, from_block: int, to_block: int) -> list[ChainEvent]:
        """``kind`` events whose indexed arguments match ``filters``: web3's
        ``contract.events.X.get_logs(argument_filters=...)``, in LOG_CHUNK-block requests."""
        event = getattr(self.contract.events, kind)

        def read(start: int, end: int) -> list:
            got = self._read(lambda: event.get_logs(argument_filters=filters, from_block=start,
                                                    to_block=end), "reading events")
            return [self._event(ev) for ev in got]
        return self._chunked(read, from_block, to_block)

    @staticmethod
    def _chunked(read: Callable[[int, int], list], from_block: int, to_block: int) -> list[ChainEvent]:
        out: list[ChainEvent] = []
        for start in range(from_block, to_block + 1, LOG_CHUNK):
            out += [ev for ev in read(start, min(to_block, start + LOG_CHUNK - 1)) if ev is not None]
        out.sort(key=lambda e: (e.block, e.log_index))
        return out

    def deployments_of(self, key: str, from_block: int = 0) -> list[KeyDeployment]:
        """Every deployment name that ever pointed at ``key``, found by the key (the
        ``Deployed`` event's indexed key topic), never by the name the key was registered
        under, each with its current key and version; in the order they first pointed at it.
        A rollback check refuses a key that any of them has moved on from (``superseded``)."""
        k = parse_key(key)
        latest = self.block_number()
        evs = self._filtered("Deployed", {"key": k.bytes}, from_block, latest)
        last: dict[str, ChainEvent] = {}
        for ev in evs:
            if ev.deployment is not None and ev.key == k:
                last[ev.deployment] = ev   # keeps first-seen order, the latest event
        out = []
        for name, ev in last.items():
            cur, version = self.current(name)
            out.append(KeyDeployment(name, int(ev.version or 0), ev.block, k, cur, version))
        return out

    def _decode_log(self, lg) -> ChainEvent | None:
        topic0 = bytes(lg["topics"][0]) if lg["topics"] else b""
        name = self._topic_to_event.get(topic0)
        if name is None:
            return None
        return self._event(getattr(self.contract.events, name)().process_log(lg))

    @staticmethod
    def _event(ev) -> ChainEvent:
        """A ChainEvent from web3's decoded event data."""
        a = {k: _jsonable(v) for k, v in dict(ev["args"]).items()}
        key = a.get("key") or a.get("modelKey")
        return ChainEvent(kind=ev["event"], block=int(ev["blockNumber"]), log_index=int(ev["logIndex"]),
                          tx_hash=bytes(ev["transactionHash"]).hex(), key=key,
                          deployment=a.get("deployment"),
                          version=int(a["version"]) if "version" in a else None,
                          reason=a.get("reason"), args=a)

    def follow(self, deployment: str, from_block: int = 0, *, poll_interval: float = 1.0,
               stop: threading.Event | None = None, max_outage: float = 60.0
               ) -> Iterator[ChainEvent]:
        """Yield ``Deployed`` events of ``deployment`` and every ``Revoked`` event from
        ``from_block`` on, in order, polling the chain; ends when ``stop`` is set. Node
        outages are retried with backoff; longer than ``max_outage`` s raises
        ChainUnavailable. (``chain.follower.EventFollower`` gives every round.)"""
        from .follower import EventFollower
        follower = EventFollower(self, from_block, poll_interval=poll_interval, stop=stop,
                                 max_outage=max_outage)
        for ev in follower.events():
            if ev.kind == "Revoked" or ev.deployment == deployment:
                yield ev
