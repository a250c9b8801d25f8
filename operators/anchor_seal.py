"""Seals on the anchor batches the flow writes, so that it re-sends only its own.

Batch files that never reached the chain (a crash, the node down at exit) are re-sent at
the next start.  Whoever can write the output folder could plant a batch there for a
forged mask, and the flow would sign it with its anchorer key.  So every batch file the
flow writes carries ``seal``: HMAC-SHA256, under a device secret kept in ``VERISEG_HOME``
(``anchor-seal.key``, 32 random bytes, mode 600, created on first use), over everything
that goes on chain (the model key and each leaf's stream, seq and digest: the root and
the seq range follow from them).  At start only batch files whose seal verifies are sent;
any other is refused with one line and counted (``anchors_refused``).  A person who can
write only the output folder cannot make a seal; one who can read ``VERISEG_HOME`` can
(the same trust as the embedded chain's journal and the status cache there).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import Optional

from chain.files import PathRefused, open_regular
from model_store.canonical import canonical_json

__all__ = ["SealError", "SECRET_FILE", "load_secret", "seal", "is_sealed", "write_sealed"]

SECRET_FILE = "anchor-seal.key"
_SIZE = 32


class SealError(RuntimeError):
    """The device secret cannot be used (one line: which file, why)."""


def load_secret(home: Path, out: Path) -> bytes:
    """The device secret in ``home``, created on first use; refused unless it is a
    32-byte regular file of this user that no one else can read or write, outside ``out``."""
    path = Path(home).expanduser() / SECRET_FILE
    try:
        if path.resolve().is_relative_to(Path(out).expanduser().resolve()):
            raise SealError(f"{path} is inside the output folder {out}: whoever writes the outputs "
                            "could seal batches (keep VERISEG_HOME outside VERISEG_OUT)")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(_SIZE))
        # never a blocking open: a FIFO in its place would hold the flow at start
        with open_regular(path, follow=False) as f:
            st = os.fstat(f.fileno())
            data = f.read(_SIZE + 1)
    except PathRefused:
        raise SealError(f"{path} must be a regular file (it is a FIFO, a device or a folder): "
                        "remove it, and the flow creates a new key") from None
    except OSError as e:
        raise SealError(f"{path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise SealError(f"{path} must be a file of this user that no one else can read or write "
                        f"(mode {stat.S_IMODE(st.st_mode):o}, owner uid {st.st_uid})")
    if len(data) != _SIZE:
        raise SealError(f"{path} holds {len(data)} bytes, expected {_SIZE}")
    return data


def _message(batch) -> bytes:
    return canonical_json({"v": 1, "model_key": batch.model_key,
                           "leaves": [[lf.stream, lf.seq, lf.digest.hex()] for lf in batch.leaves]},
                          ascii_only=True)


def seal(secret: bytes, batch) -> str:
    return hmac.new(secret, _message(batch), hashlib.sha256).hexdigest()


def is_sealed(secret: Optional[bytes], batch, raw: dict) -> bool:
    got = raw.get("seal")
    return bool(secret) and isinstance(got, str) and hmac.compare_digest(got, seal(secret, batch))


def write_sealed(path: Path, batch, secret: Optional[bytes]) -> Path:
    """``AnchorBatch.write(path, include_proofs=True)`` plus the seal (none without a secret)."""
    return batch.write(path, include_proofs=True, extra={"seal": seal(secret, batch)} if secret else None)
