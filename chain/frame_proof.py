"""One frame proven against its anchor, for every caller (``anchor-verify``, the audit
page, the benchmarks): its class map against its batch and the chain, then its results
line, and on request the model re-run on the frame the device kept.

    v = prove_frame(connect, "out/cam/anchors/batch-000001.json", "cam", 7, result="out/cam/results.jsonl")
    v, rescored = prove_and_rescore(connect, batch, "cam", 7, result=results)
"""
from __future__ import annotations

from pathlib import Path

from .anchor_verify import read_mask, verify_frame
from .blob_index import blob_of, card_of
from .errors import AnchorVerificationFailed, ProofInputError
from .rescore import rescore_frame
from .results import ResultsFile, verify_result_line
from .retained_frame import find_frame
from .values import parse_key

__all__ = ["prove_frame", "prove_and_rescore", "ProofInputError"]


def prove_frame(connect, batch, stream: str, seq: int, *, mask=None, result=None, blob=None,
                line=None):
    """The frame's class map (``mask``, else the one its ``result`` line names) against its
    batch and the chain, then that line. ``result``: a path or a ``chain.results.ResultsFile``
    (the page's, under its file root); ``line``: its ``(line number, record)`` the caller
    already read (what the page shows), else the frame's one line there. ``connect()`` gives
    the registry (called once the mask is read). Returns the Verification; raises
    AnchorVerificationFailed whose ``.check`` names the first check that failed (in this
    order: result_missing and result_ambiguous when the mask comes from the line, mask,
    then verify_frame's, then verify_result_line's)."""
    return _prove(connect, batch, stream, seq, mask=mask, result=result, blob=blob, line=line)[0]


def prove_and_rescore(connect, batch, stream: str, seq: int, *, mask=None, result=None, blob=None,
                      line=None, frame=None):
    """:func:`prove_frame`, then the model re-run on the retained frame (``frame``, else the
    one kept next to ``result``) by ``chain.rescore.rescore_frame``. Returns (Verification,
    Rescore) whatever the rescore found (``Rescore.check()`` refuses a mismatch); raises
    AnchorVerificationFailed as prove_frame does, then rescore_unavailable, frame_missing or
    frame_mismatch."""
    v, class_map, reg = _prove(connect, batch, stream, seq, mask=mask, result=result, blob=blob,
                               line=line)
    if frame is None:
        if result is None:
            raise ProofInputError("--rescore needs --frame FRAME, or --result RESULTS.jsonl whose "
                                  "folder keeps the frame (frames/<seq>.<order>.vsf)")
        folder = Path(str(result)).parent     # a path, or the page's ResultsFile
        frame = find_frame(folder, seq)
        if frame is None:
            raise AnchorVerificationFailed(
                f"frame missing: {folder / 'frames'} keeps no frame {seq:06d} of "
                f"stream '{stream}'; the device did not keep it (VERISEG_KEEP_FRAMES) or it was "
                "rotated out: pass --frame FRAME if you hold it", check="frame_missing")
    path = blob_of(reg, v.model_key, blob)
    if path is None:
        raise AnchorVerificationFailed(
            f"rescore unavailable: the blob of model {parse_key(v.model_key).short}… is not at its registered "
            "URI nor recorded by register here; pass --blob BLOB", check="rescore_unavailable")
    return v, rescore_frame(v, class_map, path, frame)


def _class_names(reg, key: str, blob: str | None = None):
    card = card_of(reg, key, blob)
    return None if card is None else [c.name for c in card.classes]


def _prove(connect, batch, stream: str, seq: int, *, mask=None, result=None, blob=None, line=None):
    results = None
    if result is not None:
        results = result if isinstance(result, ResultsFile) else ResultsFile.at(result)
    if mask is None:
        if results is None:
            raise ProofInputError("anchor-verify needs --mask PNG, or --result RESULTS.jsonl whose "
                                  "line names the mask")
        # the frame's one line names its mask, relative to the results file and under its folder
        line = line or results.line(stream, seq)
        class_map = results.mask(line[1])
    else:
        class_map = read_mask(mask)
    reg = connect()
    v = verify_frame(batch, stream, seq, class_map, registry=reg)
    if results is not None:
        verify_result_line(results, v, class_map, _class_names(reg, v.model_key, blob), line=line)
    return v, class_map, reg
