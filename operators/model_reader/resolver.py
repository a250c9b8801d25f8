"""Resolving the configured model at start: only a verified, registered, unrevoked model.

1. a blob path: its key (``model_store.verify``) must be registered and not revoked on the
   registry; the default run on a fresh embedded chain registers and deploys the committed
   blob (trust on first use) and says so; after that a changed default blob is refused; a
   blob whose deployment has moved on is refused (no rollback by file);
   a deployment name: ``reg.current(name)`` gives the key; the blob with that key is found
   through the key's registered URI or by scanning the model folders;
2. ``model_store.load(path, expected_key=key)`` re-hashes the very bytes it decompresses
   (verify *before* load, no time-of-check gap);
3. the ONNX Runtime session is built (warms the flow's session cache) and a
   ``ModelLoaded`` event is queued for every stream.

With the registry unreachable, a status verified online recently (``StatusCache``) may
start the flow when ``VERISEG_STATUS_MAX_AGE`` allows it.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import chain
import model_store
from model_store.display import shell_command
from model_store.util import first_line

from ..config import MODELS_DIR, Config
from ..frames import ModelEvent, ModelLoaded
from ..sessions import ScoreError
from ..telemetry import log
from .blob_locator import BlobLocator
from .errors import ChainDown, ModelRefused
from .status_cache import StatusCache

__all__ = ["ModelResolver", "connect_registry"]


def connect_registry(cfg: Config):
    try:
        return chain.connect(config=cfg)
    except chain.errors.ChainError as e:
        raise ModelRefused(f"VERISEG_CHAIN={cfg.chain}: cannot reach the model registry: "
                           f"{first_line(e)}") from None


class ModelResolver:
    """Resolves and verifies the configured model at start, and keeps the log of model
    events the reader partitions hand to the streams (``ModelWatcher`` follows on)."""

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
        dirs += [Path(p.strip()).expanduser() for p in cfg.model_dirs.split(os.pathsep) if p.strip()]
        dirs += [MODELS_DIR, cfg.home / "models"]
        self.locator = locator or BlobLocator(dirs, self.stats)
        self.updates: list[ModelEvent] = []
        self.cond = threading.Condition()
        self._uid = 0
        self.current: Optional[ModelLoaded] = None
        self.version = 0
        self.block = 0
        self.cache = StatusCache(cfg.home, f"{cfg.chain}|{cfg.registry or ''}|{cfg.model}")
        self.stop = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self.started = False
        self.sids = tuple(cfg.stream_ids)
        self.follow_name: Optional[str] = None   # blob-path mode: the deployment that supersedes it
        self.pending: Optional[tuple] = None   # (name, version, key): a deploy whose blob is not here yet
        self.pending_since = 0.0               # monotonic: when that deploy began to wait

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
        try:
            return fn()
        except chain.errors.ChainUnavailable as e:
            raise ChainDown(f"model registry unreachable while {what}: {first_line(e)}") from None

    def _verified_update(self, key: str, path: Path, name: str, version: int) -> ModelLoaded:
        try:
            card, onnx = model_store.load(str(path), expected_key=key, decrypt_key=self.decrypt_key,
                                          limits=self.cfg.graph_limits)
        except model_store.errors.BlobError as e:
            raise ModelRefused(f"model blob refused: {first_line(e)}") from None
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

    def _save_status(self, u: ModelLoaded, block: Optional[int] = None):
        self.cache.save(u.key, u.version, u.name, block or self.block)

    def _resolve_cached(self, why: str) -> ModelLoaded:
        ent = self.cache.load()
        max_age = self.cfg.status_max_age
        if not ent:
            raise ModelRefused(f"{why}; no verified status of {self.cfg.model!r} is cached in "
                               f"{self.cache.path}") from None
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
                                       f"(key {key.short})") from None
            except model_store.errors.BlobError as e:
                raise ModelRefused(f"VERISEG_MODEL: {first_line(e)}") from None
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
        cfg = self.cfg
        # the cursor first, so that no event after the checks below can be missed
        self.block = self._chain_call("reading the chain height", lambda: self.reg.block_number()) + 1
        if cfg.model_is_path:
            path = Path(cfg.model)
            try:
                key = model_store.verify(str(path))
            except model_store.errors.BlobError as e:
                raise ModelRefused(f"VERISEG_MODEL: {first_line(e)}") from None
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
                raise ModelRefused(f"VERISEG_MODEL: deployment {name!r}: {first_line(e)}") from None
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
        home = self.cfg.home
        card = model_store.read_header(str(path))
        registered = self._chain_call("reading registrations",
                                      lambda: self.reg.events(0, kinds=("Registered",)))[0]
        if registered:
            raise ModelRefused(
                f"VERISEG_MODEL: the default blob {path} (key {key.short}) is not registered on the "
                f"embedded chain in {home}, which already trusts other models: it changed since the "
                f"first run and is not trusted on your behalf; if you trust it: "
                f"{shell_command('python', '-m', 'chain', '--home', home, 'register', path)} && "
                f"{shell_command('python', '-m', 'chain', '--home', home, 'deploy', card.name, path)}")
        try:
            self.reg.register(key, card.name, path.resolve().as_uri())
        except chain.errors.KeyAlreadyRegistered:
            pass   # another process of this flow (-i/-a) registered it a moment ago
        except chain.errors.ChainError as e:
            raise ModelRefused(f"cannot register the default blob {path}: {first_line(e)}") from None
        try:
            self.reg.deploy(card.name, key)
        except chain.errors.ChainError as e:
            log.warning("could not deploy %r: %s", card.name, first_line(e))
        log.info("first run: registered the committed blob %s (key %s) on the embedded chain in %s "
                 "and deployed it as %r (trust on first use; any other blob there later is refused)",
                 path.name, key.short, home, card.name)
        self.block = self.reg.block_number() + 1

    def _check_superseded(self, key: str, path: Path):
        """A blob given by path must not be one a deployment has moved on from (no rollback
        by file): every deployment that ever pointed at this key is found by the key (not by
        the name it was registered under); if any now points elsewhere, refuse. Otherwise a
        deployment that points at it is followed (its registered name first): a newer deploy
        of that name hot-swaps (the pinned blob is then superseded)."""
        deps = self._chain_call(f"checking blob {path}", lambda: self.reg.deployments_of(key))
        moved = [d for d in deps if d.superseded]
        if moved:
            d = moved[0]
            raise ModelRefused(f"VERISEG_MODEL: blob {path} (key {key.short}) was superseded: deployment "
                               f"{d.name!r} is at v{d.current_version} (key {d.current_key.short}); no "
                               f"rollback (use {shell_command(f'VERISEG_MODEL={d.name}')} to "
                               "follow it)")
        try:
            name = self.reg.info(key)[0]
        except chain.errors.ChainUnavailable as e:
            raise ChainDown(f"model registry unreachable while checking blob {path}: {first_line(e)}") from None
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
            raise ChainDown(f"model registry unreachable while checking blob {path}: {first_line(e)}") from None
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
