"""A frame's results line: what the flow writes to ``results.jsonl`` and what
``python -m chain anchor-verify --result`` checks, computed in one place.

    rec = frame_record("cam0", 7, key, class_map, ts=ts, pos="clip.avi#7", class_names=names,
                       batch=1, mask="masks/000007.png", frame=frame_digest(image, "BGR"),
                       profile=runner_profile)
    line = dict(rec.line, latency_ms=...)   # diagnostics go after the computed fields
    batcher.add_leaf(key, rec.anchor_leaf)  # the Merkle leaf the line names

The line's ``leaf`` is ``chain.merkle.leaf_digest`` of the frame (v3: it binds the ts and
pos the line states, as rounded in the line, the decoded frame's digest the line states as
``frame`` and the execution profile it states as ``profile``) and its ``shares`` the
fraction of pixels per class (5 decimals, absent classes left out). The verifier recomputes both from the proven
class map with the same functions, so a line the sink wrote always verifies.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from model_store.util import one_line

from . import errors
from .anchor_batch import Leaf
from .anchor_verify import MAX_MASK_BYTES, Verification, decode_mask
from .files import FileRoot, PathRefused
from .merkle import leaf_digest, ts_micros
from .profile import ExecutionProfile
from .values import parse_key

__all__ = ["RESULT_BOUND", "RESULT_DERIVED", "RESULT_DIAGNOSTICS", "FrameRecord", "ResultsFile",
           "class_shares", "frame_of", "frame_record", "one_frame_line", "parse_line",
           "result_lines", "verify_result_line"]

TS_DECIMALS = 6      # a line states ts to the microsecond: what the v2 leaf binds
SHARE_DECIMALS = 5

#: What a ``results.jsonl`` line may carry. Bound: covered by the proven leaf. Derived:
#: recomputed from the proven class map. Diagnostics: how the frame was processed (timings,
#: micro-batch size), which claim nothing about the result. Any other field is refused.
RESULT_BOUND = ("stream", "seq", "model_key", "ts", "pos", "frame", "profile")
RESULT_DERIVED = ("leaf", "shares", "mask")
RESULT_DIAGNOSTICS = ("latency_ms", "batch")


def _as_map(class_map) -> np.ndarray:
    arr = np.asarray(class_map)
    return arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr


_EXACT_FLOAT32 = 1 << 24     # integers a float32 holds exactly


def class_shares(class_map, class_names: Optional[Sequence[str]]) -> dict:
    """Class name -> fraction of the class map's pixels (5 decimals); classes absent from
    the map are left out, ids past ``class_names`` are named by their number."""
    arr = _as_map(class_map)
    if arr.dtype == np.uint8 and arr.ndim == 2 and arr.size < _EXACT_FLOAT32:
        # 4x faster than bincount on a 512² map (0.11 vs 0.50 ms, idle 2-core EPYC); its
        # float32 counts are exact below 2^24 pixels
        counts = cv2.calcHist([np.ascontiguousarray(arr)], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    else:
        counts = np.bincount(arr.ravel(), minlength=len(class_names or ()))
    total = max(1, arr.size)
    return {(class_names[i] if class_names and i < len(class_names) else str(i)):
            round(int(c) / total, SHARE_DECIMALS)
            for i, c in enumerate(counts.tolist()) if c}


@dataclass(frozen=True)
class FrameRecord:
    """A frame's results line (the computed fields, in the order they are written) and the
    Merkle leaf it names (None when the frame is not anchored)."""

    line: dict
    leaf: Optional[bytes]

    @property
    def anchor_leaf(self) -> Leaf:
        """The leaf as an anchor batch holds it (stream, seq, digest and the claims it binds)."""
        if self.leaf is None:
            raise ValueError("this record was built without a leaf (with_leaf=False)")
        frame, profile = self.line.get("frame"), self.line.get("profile")
        return Leaf(self.line["stream"], self.line["seq"], self.leaf, self.line["ts"], self.line["pos"],
                    None if frame is None else bytes.fromhex(frame),
                    None if profile is None else ExecutionProfile.from_dict(profile))


def frame_record(stream: str, seq: int, model_key: str, class_map, *, ts: float,
                 pos: Optional[str], class_names: Optional[Sequence[str]],
                 batch: Optional[int] = None, mask: Optional[str] = None,
                 frame: Optional[bytes] = None, profile: Optional[ExecutionProfile] = None,
                 with_shares: bool = True, with_leaf: bool = True) -> FrameRecord:
    """The results line of one scored frame and its leaf. ``mask`` is the class-map PNG's
    path relative to the results file; ``batch`` the micro-batch size (a diagnostic);
    ``frame`` (the decoded frame's digest, ``chain.frame_digest``) and ``profile`` (how the
    mask was computed) make the leaf a v3 leaf, which binds both."""
    key = parse_key(model_key)
    ts = round(float(ts), TS_DECIMALS)   # the leaf binds the ts as the line states it
    line = {"stream": str(stream), "seq": int(seq), "ts": ts, "pos": pos, "model_key": key}
    if frame is not None and profile is not None:
        line["frame"] = bytes(frame).hex()
        line["profile"] = profile.as_dict()
    else:
        frame = profile = None   # a v3 leaf binds both or neither
    if batch is not None:
        line["batch"] = batch
    if mask is not None:
        line["mask"] = mask
    if with_shares:
        line["shares"] = class_shares(class_map, class_names)
    leaf = None
    if with_leaf:
        leaf = leaf_digest(stream, seq, key, _as_map(class_map), ts=ts, pos=pos, frame=frame,
                           profile=profile)
        line["leaf"] = leaf.hex()
    return FrameRecord(line, leaf)


def frame_of(rec) -> Optional[tuple[str, int]]:
    """The (stream, seq) a parsed results line is about; None for anything else. The one
    rule by which ``anchor-verify`` and the audit page pick a frame's line."""
    if not isinstance(rec, dict):
        return None
    stream, seq = rec.get("stream"), rec.get("seq")
    if not isinstance(stream, str) or not isinstance(seq, int) or isinstance(seq, bool):
        return None
    return stream, seq


MAX_LINE_BYTES = 1 << 20   # a line is ~400 bytes; a longer one is no frame's


def parse_line(raw: bytes):
    """A raw ``results.jsonl`` line parsed (None: torn, garbled, not UTF-8 or over
    ``MAX_LINE_BYTES``)."""
    if len(raw) > MAX_LINE_BYTES:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


class ResultsFile:
    """A ``results.jsonl`` read through a ``FileRoot`` (``name`` relative to its root): the
    lines of a frame, and the mask a line names, relative to the file's folder and under
    the same root (no absolute or climbing path, no symlink, regular files only, never a
    blocking open)."""

    def __init__(self, files: FileRoot, name: str):
        self.files, self.name = files, name

    @classmethod
    def at(cls, path: str | os.PathLike) -> "ResultsFile":
        """The results file at an operator's ``path``: its folder is the root its masks
        must stay under (the path itself may be a symlink: the operator's choice)."""
        p = Path(path).resolve()
        try:
            return cls(FileRoot(p.parent), p.name)
        except OSError as exc:
            raise errors.AnchorVerificationFailed(f"results file {path} cannot be read "
                                                  f"({one_line(exc)})", check="result_missing") from None

    def __str__(self) -> str:
        return str(self.files.root / self.name)

    def lines(self, stream: str, seq: int) -> list:
        """``(line number, record)`` of every line for (stream, seq); raises
        AnchorVerificationFailed (check ``result_missing``) when there is none or the file
        cannot be read."""
        found = []
        try:
            with self.files.open(self.name) as f:
                for n, raw in enumerate(f, 1):
                    rec = parse_line(raw)
                    if frame_of(rec) == (stream, seq):
                        found.append((n, rec))
        except (OSError, PathRefused) as exc:
            raise errors.AnchorVerificationFailed(f"results file {self} cannot be read "
                                                  f"({one_line(exc)})", check="result_missing") from None
        if not found:
            raise errors.AnchorVerificationFailed(
                f"result missing: {self} has no line for stream '{stream}' seq {seq}",
                check="result_missing")
        return found

    def line(self, stream: str, seq: int) -> tuple[int, dict]:
        """The one line for (stream, seq): two are refused (check ``result_ambiguous``),
        since a reader could be shown one and the verifier check the other."""
        return one_frame_line(self.lines(stream, seq), str(self), stream, seq)

    def mask_name(self, rec: dict) -> str:
        """The name, relative to the root, of the mask the line ``rec`` names."""
        mask = rec.get("mask")
        if not isinstance(mask, str) or not mask:
            raise errors.AnchorVerificationFailed(f"the line of stream '{rec.get('stream')}' seq "
                                                  f"{rec.get('seq')} in {self} names no mask",
                                                  check="mask")
        return posixpath.join(posixpath.dirname(self.name), mask)

    def mask(self, rec: dict) -> np.ndarray:
        """The class map the line ``rec`` names (check ``mask`` when it is refused)."""
        name = self.mask_name(rec)
        try:
            data = self.files.read(name, MAX_MASK_BYTES)
        except (OSError, PathRefused) as exc:
            raise errors.AnchorVerificationFailed(
                f"mask refused: {one_line(exc)} (a line's mask must be a regular file under "
                f"{self.files.root}, named relative to its results file)", check="mask") from None
        return decode_mask(data, str(self.files.root / name))


def one_frame_line(found: list, where: str, stream: str, seq: int) -> tuple[int, dict]:
    """The only ``(line number, record)`` of ``found``; result_ambiguous when there are more."""
    if len(found) > 1:
        raise errors.AnchorVerificationFailed(
            f"result ambiguous: {where} has {len(found)} lines for stream '{stream}' seq {seq} "
            f"(lines {', '.join(str(n) for n, _ in found[:5])}); a frame has one line",
            check="result_ambiguous")
    return found[0]


def result_lines(results_path: str | os.PathLike, stream: str, seq: int) -> list:
    """``(line number, record)`` of every ``results.jsonl`` line for (stream, seq) at an
    operator's path (see ``ResultsFile.lines``)."""
    return ResultsFile.at(results_path).lines(stream, seq)


def _claim_equal(name: str, got, want) -> bool:
    if name == "ts":
        try:
            return ts_micros(got) == ts_micros(want)
        except (TypeError, ValueError):
            return False
    if name == "profile":
        return isinstance(got, dict) and got == want
    return isinstance(got, str) and got == want


def verify_result_line(results, v: Verification, class_map, class_names=None, *,
                       line: Optional[tuple[int, dict]] = None) -> dict:
    """Check the ``results.jsonl`` line of a frame that :func:`verify_frame` proved: every
    field it carries must be bound by the proven leaf (stream, seq, model key, ts, pos,
    frame, profile),
    recomputed from the proven class map (leaf, required; shares, exact by class name;
    mask, the same class map), or a known diagnostic (latency_ms, batch). ``class_names``
    (the card's, by class id) are needed to check shares: without them a line carrying
    shares is refused. Returns the line; raises AnchorVerificationFailed whose ``.check``
    is one of: result_missing, result_ambiguous, result_model_key_mismatch, result_leaf_missing,
    result_leaf_mismatch, result_claim_mismatch, result_unbound_field,
    result_shares_unverifiable, result_shares_mismatch, result_mask_mismatch.

    ``results``: a ``ResultsFile`` or an operator's path; ``line``: the ``(line number,
    record)`` already read from it (the one the caller showed), else its one line for the
    frame."""
    p = results if isinstance(results, ResultsFile) else ResultsFile.at(results)
    found = [line] if line is not None else [p.line(v.stream, v.seq)]
    leaf = v.leaf or leaf_digest(
        v.stream, v.seq, v.model_key, class_map, ts=v.ts, pos=v.pos,
        frame=None if v.frame is None else bytes.fromhex(v.frame),
        profile=None if v.profile is None else ExecutionProfile.from_dict(v.profile)).hex()
    want = class_shares(class_map, class_names)
    known = set(RESULT_BOUND) | set(RESULT_DERIVED) | set(RESULT_DIAGNOSTICS)
    for n, rec in found:
        where = f"{p} line {n} (stream '{v.stream}' seq {v.seq})"

        def fail(check: str, msg: str):
            raise errors.AnchorVerificationFailed(f"{msg.replace('@', where)}", check=check)
        try:
            key = parse_key(str(rec.get("model_key")))
        except Exception:  # noqa: BLE001 - any unparsable key is a mismatch
            key = str(rec.get("model_key"))
        if key != v.model_key:
            fail("result_model_key_mismatch", f"result model key mismatch: @ says model "
                 f"{rec.get('model_key')}, the chain anchored this result for {v.model_key}")
        # the leaf is what ties the line to the anchor: a line without one proves nothing
        if "leaf" not in rec:
            fail("result_leaf_missing", "result leaf missing: @ carries no leaf, so nothing "
                 "binds it to the anchored result; the line was altered (or written without "
                 "anchoring)")
        if rec["leaf"] != leaf:
            fail("result_leaf_mismatch", f"result leaf mismatch: @ records leaf "
                 f"{str(rec['leaf'])[:16]}…, the proven result is {leaf[:16]}…")
        for name in ("ts", "pos", "frame", "profile"):
            if name not in rec:
                continue   # claiming less than the leaf binds is fine
            bound = getattr(v, name)
            if bound is None:
                fail("result_claim_mismatch", f"result claim mismatch: @ claims {name} "
                     f"{json.dumps(rec[name])[:80]} but the anchored leaf binds no {name}; "
                     "the claim is unproven")
            if not _claim_equal(name, rec[name], bound):
                fail("result_claim_mismatch", f"result claim mismatch: @ claims {name} "
                     f"{json.dumps(rec[name])[:80]}, the anchored leaf binds "
                     f"{json.dumps(bound)[:80]}")
        extra = sorted(k for k in rec if k not in known)
        if extra:
            fail("result_unbound_field", f"result unbound field: @ carries {', '.join(extra)}, "
                 "which no anchor covers; the line was altered")
        if "shares" in rec:
            got = rec["shares"]
            if not class_names:
                fail("result_shares_unverifiable", "result shares unverifiable: the class names "
                     f"of model {parse_key(v.model_key).short}… are unknown (its registered URI is not a local "
                     "blob), so @'s shares cannot be checked; pass --blob BLOB")
            if got != want:
                fail("result_shares_mismatch", "result shares mismatch: @ has class shares "
                     f"{json.dumps(got, sort_keys=True)[:200]}, the proven class map gives "
                     f"{json.dumps(want, sort_keys=True)[:200]}")
        if "mask" in rec:
            try:
                same = np.array_equal(p.mask(rec), _as_map(class_map))
            except errors.AnchorVerificationFailed:
                same = False
            if not same:
                fail("result_mask_mismatch", f"result mask mismatch: @ names mask "
                     f"{json.dumps(rec['mask'])[:200]}, which is missing, refused or not the "
                     "proven class map")
    return found[0][1]
