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
    "Undrivable",
    "NotOnnx",
    "Ambiguous",
    "NotSelfContained",
    "ExternalData",
    "CustomOps",
    "TooManyInputs",
    "UnsupportedInput",
    "UnsupportedDtype",
    "NotPerPixel",
    "ClassCountMismatch",
    "CardContradictsGraph",
    "OverLimit",
    "resourced",
]


class BlobError(Exception):
    """Base of every model_store refusal. `source` names the blob (a path or '<bytes>')."""

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        self.message = message
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


# --- models the flow cannot drive (refused at pack, at verify and at load) -------------------
#
# The card says how a frame becomes the input tensor and how the output becomes a class map
# (model_store.drive_spec.DriveSpec). A model whose graph or card falls outside that is refused
# with one of these, naming the model, instead of failing on every frame later.


class Undrivable(BlobError):
    """The model is intact but the flow cannot drive it (base of the refusals below)."""


class NotOnnx(Undrivable):
    """The body is not an ONNX model protobuf."""


class Ambiguous(Undrivable):
    """The model says a thing twice (a singular protobuf field, an opset domain, a function):
    what runs would depend on which copy a reader takes, or on how it merges them."""


class NotSelfContained(Undrivable):
    """The graph needs something outside the blob (base of ExternalData and CustomOps)."""


class ExternalData(NotSelfContained):
    """A tensor keeps its data in an external file: a runtime would read a path the graph names."""


class CustomOps(NotSelfContained):
    """A node is in an operator domain ONNX Runtime has no built-in kernels for (a custom-op library)."""


class TooManyInputs(Undrivable):
    """The graph takes more than one input; the flow feeds exactly one image."""


class UnsupportedInput(Undrivable):
    """The input is not a 4-D, 3-channel image tensor (NCHW or NHWC)."""


class UnsupportedDtype(Undrivable):
    """An input or output element type the flow has no conversion for."""


class NotPerPixel(Undrivable):
    """The output is not a per-pixel map (a classifier's [1, 1000], a detector's boxes)."""


class ClassCountMismatch(Undrivable):
    """The output's class axis and the card's class list have different lengths."""


class CardContradictsGraph(Undrivable):
    """The card's inputs or outputs are not the graph's (a hand-edited card, another graph)."""


class OverLimit(Undrivable):
    """The model declares more than a limit allows (its input, its stored tensors, a tensor
    shaped by a constant): `model_store.graph_limits`."""


def resourced(exc: BlobError, source: str) -> BlobError:
    """The same refusal, naming `source` (a file) instead of where it was found ('<card>')."""
    return type(exc)(source, exc.message)
