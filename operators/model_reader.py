"""The model-reader window: only verified, registered, unrevoked models reach the score.

``ModelWatcher`` resolves the configured model once at flow build time (so a bad model
refuses to start with one line, before Bytewax runs):

1. a blob path: its key (``model_store.verify``) must be registered and not revoked on the
   registry; the default run on a fresh embedded chain registers and deploys the committed
   blob (trust on first use) and says so; after that a changed default blob is refused;
   a deployment name: ``reg.current(name)`` gives the key; the blob with that key is found
   through the key's registered URI or by scanning the model folders;
2. ``model_store.load(path, expected_key=key)`` re-hashes the very bytes it decompresses
   (verify *before* load, no time-of-check gap);
3. the ONNX Runtime session is built (warms the score's session cache) and a
   ``ModelLoaded`` event is queued for every stream.

Then a background thread polls ``reg.events(from_block)``: a ``Deployed`` event of the
followed deployment with a higher version hot-swaps the model (verified again, session
built off the scoring thread); a ``Revoked`` event marks the key revoked in the flow's
set at once and queues a revoke update, so scoring with it stops.  Chain
outages are retried with backoff while the verified model keeps scoring.

``ModelReaderSource`` is the Bytewax input: one partition per stream id, emitting
``(stream_id, ModelLoaded | ModelRevoked)``; a partition ends when its stream's frame source has ended in
this process (Bytewax places same-named partitions of the two inputs on the same worker).
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable, Optional
from urllib.parse import unquote, urlparse

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream, operator
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from .config import MODELS_DIR, Config
from .context import FlowContext
from .frames import ModelEvent, ModelLoaded, ModelRevoked
from .sessions import ScoreError
from .telemetry import log

__all__ = ["verified_models", "ModelRefused", "ChainDown", "BlobNotHere", "ModelWatcher", "ModelReaderSource", "BlobLocator", "connect_registry"]


class ModelRefused(RuntimeError):
    """The configured model may not score (one line: what, why, what to do)."""


class ChainDown(ModelRefused):
    """The registry could not be reached while resolving the model."""


class BlobNotHere(ModelRefused):
    """A deployed key whose blob is in none of the model folders (yet)."""


STATUS_CACHE = "status-cache.json"


def connect_registry(cfg: Config):
    import chain
    try:
        return chain.connect(chain=cfg.chain, home=cfg.home, registry=cfg.registry)
    except chain.errors.ChainError as e:
        raise ModelRefused(f"VERISEG_CHAIN={cfg.chain}: cannot reach the model registry: "
                           f"{_one_line(e)}") from None


def _one_line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:300]


class BlobLocator:
    """Finds the blob file holding a key: its registered URI, then the model folders."""

    def __init__(self, dirs: Iterable[Path], stats=None):
        self.stats = stats   # counts the files that are no readable blob
        self.dirs = []
        for d in dirs:
            d = Path(d).expanduser()
            if d not in self.dirs:
                self.dirs.append(d)
        self._keys: dict[tuple, str] = {}

    def _key_of(self, path: Path) -> Optional[str]:
        import model_store
        try:
            st = path.stat()
        except OSError:
            return None
        sig = (str(path), st.st_size, st.st_mtime_ns)
        if sig not in self._keys:
            self._keys[sig] = ""
            try:   # raises only BlobError, whatever the file holds (hostile headers included)
                self._keys[sig] = model_store.verify(str(path))
            except model_store.errors.BlobError as e:
                if self.stats is not None:   # skip it; the scan goes on
                    self.stats.bad_model_file(_one_line(e))
        return self._keys[sig] or None

    def find(self, key: str, uri: str = "") -> Optional[Path]:
        cands = []
        if uri:
            p = urlparse(uri)
            if p.scheme in ("file", ""):
                cands.append(Path(unquote(p.path if p.scheme else uri)).expanduser())
        for d in self.dirs:
            if d.is_dir():
                cands.extend(sorted(d.glob("*.vsb")))
        for c in cands:
            if c.is_file() and self._key_of(c) == key:
                return c
        return None


class ModelWatcher:
    """Resolves, verifies and follows the model; feeds updates to every stream."""

    def __init__(self, ctx, registry=None, *, decrypt_key: Optional[bytes] = None,
                 locator: Optional[BlobLocator] = None):
        cfg: Config = ctx.config
        self.cfg = cfg
        # the flow's shared parts (operators.context.FlowContext)
        self.stats, self.sessions, self.revoked = ctx.stats, ctx.sessions, ctx.revoked
        self.streams = ctx.streams
        self.flow_stop = ctx.stop   # set when the follower fails: the sources end
        self._reg = registry
        self.decrypt_key = decrypt_key
        dirs = []
        if cfg.model_is_path:
            dirs.append(Path(cfg.model).parent)
        extra = cfg.extra.get("VERISEG_MODEL_DIRS", "")
        dirs += [Path(p) for p in extra.split(os.pathsep) if p.strip()]
        dirs += [MODELS_DIR, cfg.home / "models"]
        self.locator = locator or BlobLocator(dirs, self.stats)
        self.updates: list[ModelEvent] = []
        self.cond = threading.Condition()
        self._uid = 0
        self.current: Optional[ModelLoaded] = None
        self.version = 0
        self.block = 0
        self.stop = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self.started = False
        self.sids = tuple(cfg.stream_ids)
        self.follow_name: Optional[str] = None   # blob-path mode: the deployment that supersedes it
        self.pending: Optional[tuple] = None   # (name, version, key): a deploy whose blob is not here yet

    @property
    def reg(self):
        if self._reg is None:
            self._reg = connect_registry(self.cfg)
        return self._reg

    # -- resolution -------------------------------------------------------------------
    def _next_uid(self) -> int:
        self._uid += 1
        return self._uid

    def _chain_call(self, what: str, fn: Callable):
        import chain
        try:
            return fn()
        except chain.errors.ChainUnavailable as e:
            raise ChainDown(f"model registry unreachable while {what}: {_one_line(e)}") from None

    def _verified_update(self, key: str, path: Path, name: str, version: int) -> ModelLoaded:
        import model_store
        try:
            card, onnx = model_store.load(str(path), expected_key=key, decrypt_key=self.decrypt_key)
        except model_store.errors.BlobError as e:
            raise ModelRefused(f"model blob refused: {_one_line(e)}") from None
        u = ModelLoaded(key, self._next_uid(), name=name, version=version, card=card,
                        onnx=onnx, source=str(path))
        try:
            self.sessions.get(u)   # build (and fail fast: REQUIRE_GPU, bad graph) off the score thread
        except ScoreError as e:
            raise ModelRefused(str(e)) from None
        return u

    def _check_status(self, key: str, what: str):
        st = self._chain_call(f"checking {what}", lambda: self.reg.status(key))
        if not st.registered:
            raise ModelRefused(f"{what}: key {key} is not registered on the model registry "
                               f"({self.cfg.chain}); register it first (python -m chain register)")
        if st.revoked:
            self.revoked.add(key, st.reason)
            raise ModelRefused(f"{what}: key {key} is revoked on the model registry "
                               f"({st.reason or 'no reason given'})")
        return st

    def resolve(self) -> ModelLoaded:
        """Verify the configured model now; raises ModelRefused with one line.

        With the registry unreachable, a status verified online at most
        ``VERISEG_STATUS_MAX_AGE`` seconds ago (cached in ``VERISEG_HOME``) lets the flow
        start; the follower catches up on events from the cached block once the node is
        back. With the default 0 an unreachable registry refuses the start."""
        try:
            u = self._resolve_online()
        except ChainDown as e:
            if self.cfg.status_max_age <= 0:
                raise ModelRefused(f"{e} (set VERISEG_STATUS_MAX_AGE to start from a recently "
                                   "verified status)") from None
            u = self._resolve_cached(str(e))
        else:
            self._save_status(u)
        self.current = u
        self._publish(u)
        self.stats.models_loaded.append({"key": u.key, "name": u.name, "version": u.version,
                                    "path": u.source, "at": time.time()})
        log.info("model %s verified (key %s%s) from %s", getattr(u.card, "name", "?"), u.key,
                 f", {u.name} v{u.version}" if u.version else "", u.source)
        return u

    # -- status cache -----------------------------------------------------------------
    def _cache_path(self) -> Path:
        return self.cfg.home / STATUS_CACHE

    def _cache_id(self) -> str:
        return f"{self.cfg.chain}|{self.cfg.registry or ''}|{self.cfg.model}"

    def _load_cache(self) -> dict:
        import json
        try:
            d = json.loads(self._cache_path().read_text())
            return d if isinstance(d, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_status(self, u: ModelLoaded, block: Optional[int] = None):
        import json
        d = self._load_cache()
        d[self._cache_id()] = {"key": u.key, "version": u.version, "name": u.name,
                               "checked_at": time.time(), "block": block or self.block}
        try:
            self.cfg.home.mkdir(parents=True, exist_ok=True)
            tmp = self._cache_path().with_suffix(".tmp")
            tmp.write_text(json.dumps(d, indent=1))
            os.replace(tmp, self._cache_path())
        except OSError as e:
            log.warning("cannot write the status cache %s: %s", self._cache_path(), e)

    def _resolve_cached(self, why: str) -> ModelLoaded:
        import model_store
        ent = self._load_cache().get(self._cache_id())
        max_age = self.cfg.status_max_age
        if not ent:
            raise ModelRefused(f"{why}; no verified status of {self.cfg.model!r} is cached in "
                               f"{self._cache_path()}") from None
        age = time.time() - float(ent.get("checked_at", 0))
        if not 0 <= age <= max_age:
            raise ModelRefused(f"{why}; the cached status of {self.cfg.model!r} is {age:.0f} s old "
                               f"(VERISEG_STATUS_MAX_AGE={max_age:g})") from None
        key = ent["key"]
        if key in self.revoked:
            raise ModelRefused(f"{why}; the cached key {key} is revoked") from None
        if self.cfg.model_is_path:
            path = Path(self.cfg.model)
            try:
                if model_store.verify(str(path)) != key:
                    raise ModelRefused(f"{why}; {path} is not the blob whose status was cached "
                                       f"(key {key[:12]})") from None
            except model_store.errors.BlobError as e:
                raise ModelRefused(f"VERISEG_MODEL: {_one_line(e)}") from None
        else:
            path = self.locator.find(key)
            if path is None:
                raise ModelRefused(f"{why}; no blob with the cached key {key} in "
                                   f"{', '.join(str(d) for d in self.locator.dirs)}") from None
        self.block = int(ent.get("block") or 0)
        self.version = int(ent.get("version") or 0)
        log.warning("%s: starting from the status verified %.0f s ago (VERISEG_STATUS_MAX_AGE=%g); "
                    "revocations are applied when the registry is back", why, age, max_age)
        self.stats.error = None
        return self._verified_update(key, path, ent.get("name") or str(path), self.version)

    def _resolve_online(self) -> ModelLoaded:
        import chain
        import model_store
        cfg = self.cfg
        # the cursor first, so that no event after the checks below can be missed
        self.block = self._chain_call("reading the chain height", lambda: self.reg.block_number()) + 1
        if cfg.model_is_path:
            path = Path(cfg.model)
            try:
                key = model_store.verify(str(path))
            except model_store.errors.BlobError as e:
                raise ModelRefused(f"VERISEG_MODEL: {_one_line(e)}") from None
            st = self._chain_call("checking the blob", lambda: self.reg.status(key))
            if not st.registered and cfg.model_is_default and cfg.chain == "embedded":
                self._trust_on_first_use(key, path)
            self._check_status(key, f"blob {path}")
            self._check_superseded(key, path)
            u = self._verified_update(key, path, str(path), self.version)
        else:
            name = cfg.model
            try:
                key, version = self._chain_call(f"resolving deployment {name!r}",
                                                lambda: self.reg.current(name))
            except chain.errors.UnknownDeployment:
                raise ModelRefused(f"VERISEG_MODEL: deployment {name!r} is unknown to the model "
                                   f"registry ({cfg.chain})") from None
            except chain.errors.ChainError as e:
                raise ModelRefused(f"VERISEG_MODEL: deployment {name!r}: {_one_line(e)}") from None
            self._check_status(key, f"deployment {name!r}")
            path = self._locate(key)
            if path is None:
                raise ModelRefused(f"deployment {name!r} points at key {key} but no blob with that "
                                   f"key is in {', '.join(str(d) for d in self.locator.dirs)}")
            self.version = version
            u = self._verified_update(key, path, name, version)
        return u

    def _trust_on_first_use(self, key: str, path: Path):
        """The default run on a fresh embedded chain registers and deploys the committed blob
        (trust on first use). Later, a blob in models/ that is not registered was swapped in
        (a pull, or someone who can write that folder): never trusted on the user's behalf."""
        import chain
        import model_store
        home = self.cfg.home
        card = model_store.read_header(str(path))
        registered = self._chain_call("reading registrations",
                                      lambda: self.reg.events(0, kinds=("Registered",)))[0]
        if registered:
            raise ModelRefused(
                f"VERISEG_MODEL: the default blob {path} (key {key[:12]}) is not registered on the "
                f"embedded chain in {home}, which already trusts other models: it changed since the "
                f"first run and is not trusted on your behalf; if you trust it: python -m chain "
                f"--home {home} register {path} && python -m chain --home {home} deploy "
                f"{card.name} {path}")
        try:
            self.reg.register(key, card.name, path.resolve().as_uri())
        except chain.errors.KeyAlreadyRegistered:
            pass   # another process of this flow (-i/-a) registered it a moment ago
        except chain.errors.ChainError as e:
            raise ModelRefused(f"cannot register the default blob {path}: {_one_line(e)}") from None
        try:
            self.reg.deploy(card.name, key)
        except chain.errors.ChainError as e:
            log.warning("could not deploy %r: %s", card.name, _one_line(e))
        log.info("first run: registered the committed blob %s (key %s) on the embedded chain in %s "
                 "and deployed it as %r (trust on first use; any other blob there later is refused)",
                 path.name, key[:12], home, card.name)
        self.block = self.reg.block_number() + 1

    def _check_superseded(self, key: str, path: Path):
        """A blob given by path must not be one a deployment has moved on from (no rollback
        by file): every deployment that ever pointed at this key is found by the key (not by
        the name it was registered under); if any now points elsewhere, refuse. Otherwise a
        deployment that points at it is followed (its registered name first): a newer deploy
        of that name hot-swaps (the pinned blob is then superseded)."""
        import chain
        deps = self._chain_call(f"checking blob {path}", lambda: self.reg.deployments_of(key))
        moved = [d for d in deps if d.superseded]
        if moved:
            d = moved[0]
            raise ModelRefused(f"VERISEG_MODEL: blob {path} (key {key[:12]}) was superseded: deployment "
                               f"{d.name!r} is at v{d.current_version} (key {d.current_key[:12]}); no "
                               f"rollback (use VERISEG_MODEL={d.name} to follow it)")
        try:
            name = self.reg.info(key)[0]
        except chain.errors.ChainUnavailable as e:
            raise ChainDown(f"model registry unreachable while checking blob {path}: {_one_line(e)}") from None
        except chain.errors.ChainError:
            return
        if deps:
            d = next((d for d in deps if d.name == name), deps[0])
            self.follow_name, self.version = d.name, d.current_version
            return
        if not name:
            return
        try:
            _, version = self.reg.current(name)
        except chain.errors.ChainUnavailable as e:
            raise ChainDown(f"model registry unreachable while checking blob {path}: {_one_line(e)}") from None
        except chain.errors.ChainError:
            return   # never deployed under its name: a registered candidate
        self.version = version   # a candidate never deployed: newer deploys do not replace it
        self.follow_name = None

    def _locate(self, key: str) -> Optional[Path]:
        uri = ""
        try:
            uri = self.reg.info(key)[1]
        except Exception:  # noqa: BLE001 - the URI is only a hint
            pass
        return self.locator.find(key, uri)

    def _publish(self, u: ModelEvent):
        with self.cond:
            self.updates.append(u)
            if isinstance(u, ModelLoaded):   # bounded memory over many hot swaps: older bytes go
                loads = [i for i, x in enumerate(self.updates)
                         if isinstance(x, ModelLoaded) and x.onnx is not None]
                for i in loads[:-2]:
                    self.updates[i] = dataclasses.replace(self.updates[i], onnx=None)
            self.cond.notify_all()

    def start_index(self) -> int:
        """Where a new reader partition starts: the latest model (older history is moot)."""
        with self.cond:
            for i in range(len(self.updates) - 1, -1, -1):
                if isinstance(self.updates[i], ModelLoaded):
                    return i
            return 0

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
        msg = (f"model reader stopped ({type(e).__name__}: {_one_line(e)}): scoring stops, "
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
        import chain
        delay = self.cfg.poll
        outage = None
        last_saved = time.monotonic()
        while not self.stop.wait(delay):
            if self.sids and self.streams.all_done(self.sids):
                return
            try:
                evs, nxt = self.reg.events(self.block)
            except chain.errors.ChainError as e:
                if outage is None:
                    outage = time.monotonic()
                    log.warning("model registry unreachable (%s): keep scoring with the verified "
                                "model, retrying", _one_line(e))
                delay = min(delay * 2, 30.0)
                continue
            if outage is not None:
                log.info("model registry reachable again after %.1fs", time.monotonic() - outage)
                outage = None
            if self.cfg.status_max_age > 0 and self.current is not None and not evs \
                    and time.monotonic() - last_saved > 30:
                self._save_status(self.current, nxt)   # still valid: refresh the cached status
                last_saved = time.monotonic()
            delay = self.cfg.poll
            for ev in evs:
                try:
                    self._on_event(ev)
                except ChainDown as e:
                    log.warning("model reader: %s (will retry)", e)
                    nxt = ev.block   # the node went away while handling it: retry this block
                    break
                except ModelRefused as e:
                    log.error("model reader: %s", e)
                    self.stats.models_refused.append({"key": getattr(ev, "key", None), "reason": str(e)})
                except chain.errors.ChainError as e:
                    log.warning("model reader: %s (will retry)", _one_line(e))
                    nxt = ev.block   # retry from this event's block
                    break
            self.block = nxt
            if self.pending is not None:
                self._retry_pending()

    def _set_pending(self, p: Optional[tuple]):
        self.pending = p
        self.stats.deploy_pending = ({"name": p[0], "version": p[1], "key": p[2], "since": time.time()}
                                if p else {})

    def _retry_pending(self):
        """A deploy whose blob had not arrived: tried again each poll until it is here."""
        import chain
        name, version, key = self.pending
        try:
            self._deploy(name, version, key)
        except (BlobNotHere, ChainDown, chain.errors.ChainError):
            return   # not here yet, or the node is away: next poll
        except ModelRefused as e:
            log.error("model reader: %s", e)
            self.stats.models_refused.append({"key": key, "reason": str(e)})
            self._set_pending(None)

    def _on_event(self, ev):
        kind, key = ev.kind, (ev.key or "").lower()
        if kind == "Revoked":
            if key in self.revoked and not (self.current and self.current.key == key):
                return
            self.revoked.add(key, ev.reason or "")
            self.stats.revoked.append({"key": key, "reason": ev.reason, "block": ev.block, "at": time.time()})
            self._publish(ModelRevoked(key, self._next_uid(), reason=ev.reason or ""))
            if self.current and self.current.key == key:
                log.warning("model %s revoked on chain (%s): scoring stops until a valid model is "
                            "deployed", key[:12], ev.reason or "no reason given")
                self.current = None
            self.sessions.drop(key)
            if self.pending and self.pending[2] == key:
                log.warning("deployment %r v%d: its key %s was revoked before its blob arrived: "
                            "no longer waiting for it", self.pending[0], self.pending[1], key[:12])
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
            raise ModelRefused(f"deployment {ev.deployment!r} v{version}: key {key[:12]} is revoked")
        self._check_status(key, f"deployment {ev.deployment!r} v{version}")
        if self.pending and self.pending[1] > version:
            return   # an older deploy than the one already waiting for its blob
        try:
            self._deploy(ev.deployment, version, key)
        except BlobNotHere as e:
            # keep it and retry each poll: the blob may still be on its way to this edge
            self._set_pending((ev.deployment, version, key))
            old = self.current.key[:12] if self.current else "none"
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
        log.info("deployment %r v%d: hot-swapping to model %s", name, version, key[:12])
        self._publish(u)


class _ReaderPartition(StatefulSourcePartition):
    def __init__(self, watcher: ModelWatcher, sid: str):
        self.w = watcher
        self.sid = sid
        self.i = watcher.start_index()
        self.awake = None
        watcher.start()

    def next_batch(self):
        with self.w.cond:
            new = self.w.updates[self.i:]
            self.i = len(self.w.updates)
        if new:
            self.awake = None
            return [(self.sid, u) for u in new]
        if self.w.streams.done(self.sid):
            if self.w.sids and self.w.streams.all_done(self.w.sids):
                self.w.stop.set()   # the follower thread ends with the last stream
            raise StopIteration()
        self.awake = datetime.now(timezone.utc) + timedelta(milliseconds=20)
        return []

    def next_awake(self):
        return self.awake

    def snapshot(self):
        return None   # on resume the watcher re-verifies and re-emits the model in use

    def close(self):
        pass


class ModelReaderSource(FixedPartitionedSource):
    def __init__(self, watcher: ModelWatcher, stream_ids: Iterable[str]):
        self.watcher = watcher
        self.sids = list(stream_ids)

    def list_parts(self):
        return list(self.sids)

    def build_part(self, step_id, for_part, resume_state):
        return _ReaderPartition(self.watcher, for_part)


@operator
def verified_models(step_id: str, flow: Dataflow, ctx: FlowContext) -> Stream:
    """``(stream_id, ModelLoaded | ModelRevoked)``: the model verified at start, then every
    verified hot swap and revocation the watcher follows, one partition per stream (Bytewax
    places it on the worker of that stream's frames, so the events meet them in order)."""
    return op.input("follow", flow, ModelReaderSource(ctx.watcher, ctx.config.stream_ids))
