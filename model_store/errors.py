"""Every way a blob can be refused, one exception type each.

Messages are one line: the file, what was expected, what was found, and what to do.
The CLI prints them as they are, so they must read well on their own.
"""

from __future__ import annotations

__all__ = [
    "BlobError",
    "BadMagic",
    "UnsupportedVersion",
    "Truncated",
    "OversizedHeader",
    "OversizedBlob",
    "LengthMismatch",
    "TrailingBytes",
    "KeyMismatch",
    "CorruptBody",
    "DecompressionLimitExceeded",
    "BadCard",
    "DecryptionFailed",
    "Unreadable",
]


class BlobError(Exception):
    """Base of every model_store refusal. `source` names the blob (a path or '<bytes>')."""

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        super().__init__(f"{source}: {message}")


class BadMagic(BlobError):
    """The file does not start with the VeriSeg blob magic."""


class UnsupportedVersion(BlobError):
    """The format version is one this build cannot read."""


class Truncated(BlobError):
    """The file ends before the lengths in its prefix and header say it should."""


class OversizedHeader(BlobError):
    """The declared header length is over the hard limit (a hostile or broken prefix)."""


class OversizedBlob(BlobError):
    """The file is larger than any blob can be (a hostile, sparse or wrong file); refused unread."""


class LengthMismatch(BlobError):
    """The header's declared sizes disagree with each other or with the body."""


class TrailingBytes(BlobError):
    """Bytes follow the end of the blob."""


class KeyMismatch(BlobError):
    """The blob's key is not the one expected (tampered, corrupt, or another model)."""


class CorruptBody(BlobError):
    """The compressed body does not decompress to what the header declares."""


class DecompressionLimitExceeded(CorruptBody):
    """The body expands past its declared raw size (a decompression bomb)."""


class BadCard(BlobError):
    """The header is not a valid model card."""


class DecryptionFailed(BlobError):
    """The body is encrypted and the secret given is missing or wrong."""


class Unreadable(BlobError):
    """The file exists but cannot be read (permissions, an I/O error, not a regular file)."""
