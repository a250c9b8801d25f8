"""Following the registry after start: hot swaps and revocations, through outages.

A background thread polls ``reg.events(from_block)``: a ``Deployed`` event of the
followed deployment with a higher version hot-swaps the model (verified again, session
built off the scoring thread; a deploy whose blob has not arrived is kept and retried each
poll, the superseded model scoring meanwhile for at most VERISEG_PENDING_DEPLOY_MAX_S, then
stopped: the chain says a newer model is current); a ``Revoked`` event marks the key
revoked in the flow's set at once and queues a revoke event, so scoring with it stops.
Chain outages are retried with backoff while the verified model keeps scoring.  Any
unexpected error stops scoring and the flow (fail safe).
"""
from __future__ import annotations

import threading
import time
from typing import Optional

import chain
from chain.follower import EventFollower
from model_store.blob_key import BlobKey
from model_store.util import first_line

from ..frames import ModelRevoked
from ..telemetry import log
from .errors import BlobNotHere, ChainDown, ModelRefused
from .resolver import ModelResolver

__all__ = ["ModelWatcher"]


class ModelWatcher(ModelResolver):
    """Resolves, verifies and follows the model; feeds events to every stream."""

    # -- following ----------------------------------------------------------------------
    def start(self):
        with self.cond:
            if self.started:
                return
            self.started = True
        self.thread = threading.Thread(target=self._follow, daemon=True, name="veriseg-model-reader")
        self.thread.start()

    def close(self):
        self.stop.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=5)

    def _follow(self):
        try:
            self._follow_events()
        except BaseException as e:  # noqa: BLE001 - fail safe: never a silent thread death
            self._fail_safe(e)

    def _fail_safe(self, e: BaseException):
        """The follower cannot go on: revocations would no longer be seen, so every key
        counts as revoked from now on (scoring stops) and the flow ends with one line."""
        msg = (f"model reader stopped ({type(e).__name__}: {first_line(e)}): scoring stops, "
               "revocations can no longer be followed")
        why = "fail safe: the model reader stopped"
        self.revoked.halt(why)
        if self.current is not None:
            self._publish(ModelRevoked(self.current.key, self._next_uid(), reason=why))
            self.current = None
        self.stats.error = msg
        log.error("%s", msg)
        self.flow_stop.set()

    def _follow_events(self):
        # chain.follower owns polling and outage backoff; any registry error is an outage
        # here (the verified model keeps scoring), anything else stops the flow (fail safe)
        follower = EventFollower(
            self.reg, self.block, poll_interval=self.cfg.poll, max_delay=30.0, stop=self.stop,
            retry_on=(chain.errors.ChainError,),
            on_outage=lambda e: log.warning("model registry unreachable (%s): keep scoring with "
                                            "the verified model, retrying", first_line(e)),
            on_reconnect=lambda down: log.info("model registry reachable again after %.1fs", down))
        self.follower = follower   # its down_since tells the live view the chain is away
        last_saved = time.monotonic()
        for poll in follower.polls():
            if self.sids and self.streams.all_done(self.sids):
                return
            if not poll.reachable:
                continue
            if self.cfg.status_max_age > 0 and self.current is not None and not poll.events \
                    and time.monotonic() - last_saved > 30:
                self._save_status(self.current, poll.next_block)   # still valid: refresh it
                last_saved = time.monotonic()
            for ev in poll.events:
                try:
                    self._on_event(ev)
                except ChainDown as e:
                    log.warning("model reader: %s (will retry)", e)
                    follower.rewind(ev.block)   # the node went away while handling it
                    break
                except ModelRefused as e:
                    log.error("model reader: %s", e)
                    self.stats.models_refused.append({"key": getattr(ev, "key", None),
                                                      "reason": str(e)})
                except chain.errors.ChainError as e:
                    log.warning("model reader: %s (will retry)", first_line(e))
                    follower.rewind(ev.block)   # retry from this event's block
                    break
            self.block = follower.block
            if self.pending is not None:
                self._retry_pending()

    def _set_pending(self, p: Optional[tuple]):
        if p is None or self.pending is None or self.pending[1] != p[1]:
            self.pending_since = time.monotonic()   # a newer deploy: its own wait
        self.pending = p
        self.stats.deploy_pending = ({"name": p[0], "version": p[1], "key": p[2], "since": time.time()}
                                if p else {})

    def _retry_pending(self):
        """A deploy whose blob had not arrived: tried again each poll until it is here; the
        superseded model stops once it waited VERISEG_PENDING_DEPLOY_MAX_S."""
        name, version, key = self.pending
        try:
            self._deploy(name, version, key)
        except (BlobNotHere, ChainDown, chain.errors.ChainError):
            self._stop_superseded_after_max_wait()
            return   # not here yet, or the node is away: next poll
        except ModelRefused as e:
            log.error("model reader: %s", e)
            self.stats.models_refused.append({"key": key, "reason": str(e)})
            self._set_pending(None)

    def _stop_superseded_after_max_wait(self):
        waited = time.monotonic() - self.pending_since
        old = self.current
        if old is None or old.key == self.pending[2] or waited < self.cfg.pending_deploy_max_s:
            return
        name, version, key = self.pending
        why = (f"deployment {name!r} v{version} (key {key.short}) is current on chain but its blob "
               f"did not arrive within VERISEG_PENDING_DEPLOY_MAX_S={self.cfg.pending_deploy_max_s:g}")
        log.warning("%s: the superseded model %s stops scoring; frames wait as with no valid "
                    "model until the blob arrives", why, old.key.short)
        self.stats.deploy_pending_timeouts += 1
        self.current = None   # each stream drops its session on the event
        self._publish(ModelRevoked(old.key, self._next_uid(), reason=why, superseded=True))

    def _on_event(self, ev):
        kind, key = ev.kind, BlobKey(ev.key)
        if kind == "Revoked":
            if key in self.revoked and not (self.current and self.current.key == key):
                return
            self.revoked.add(key, ev.reason or "")
            self.stats.revoked.append({"key": key, "reason": ev.reason, "block": ev.block, "at": time.time()})
            self._publish(ModelRevoked(key, self._next_uid(), reason=ev.reason or ""))
            if self.current and self.current.key == key:
                log.warning("model %s revoked on chain (%s): scoring stops until a valid model is "
                            "deployed", key.short, ev.reason or "no reason given")
                self.current = None
            self.sessions.drop(key)
            if self.pending and self.pending[2] == key:
                log.warning("deployment %r v%d: its key %s was revoked before its blob arrived: "
                            "no longer waiting for it", self.pending[0], self.pending[1], key.short)
                self._set_pending(None)
            return
        followed = self.follow_name if self.cfg.model_is_path else self.cfg.model
        if kind != "Deployed" or not followed or ev.deployment != followed:
            return
        version = int(ev.version or 0)
        if version == self.version and self.current is not None and self.current.key == key:
            return   # seen already (an event replayed after a retry)
        if version <= self.version:
            log.warning("deployment %r: ignoring version %d (in use: %d; no rollback)",
                        ev.deployment, version, self.version)
            return
        if key in self.revoked:
            raise ModelRefused(f"deployment {ev.deployment!r} v{version}: key {key.short} is revoked")
        self._check_status(key, f"deployment {ev.deployment!r} v{version}")
        if self.pending and self.pending[1] > version:
            return   # an older deploy than the one already waiting for its blob
        try:
            self._deploy(ev.deployment, version, key)
        except BlobNotHere as e:
            # keep it and retry each poll: the blob may still be on its way to this edge
            self._set_pending((ev.deployment, version, key))
            old = self.current.key.short if self.current else "none"
            log.warning("%s yet: still scoring with the superseded model %s until it arrives "
                        "(retried each poll)", e, old)

    def _deploy(self, name: str, version: int, key: str):
        path = self._locate(key)
        if path is None:
            raise BlobNotHere(f"deployment {name!r} v{version}: no blob with key {key} in "
                              f"{', '.join(str(d) for d in self.locator.dirs)}")
        u = self._verified_update(key, path, name, version)
        # re-check right before handing it over: verified *at that moment*
        self._check_status(key, f"deployment {name!r} v{version}")
        self.version = version
        self.current = u
        if self.pending and self.pending[1] <= version:
            self._set_pending(None)
        self.stats.models_loaded.append({"key": key, "name": name, "version": version,
                                    "path": str(path), "at": time.time()})
        log.info("deployment %r v%d: hot-swapping to model %s", name, version, key.short)
        self._publish(u)
