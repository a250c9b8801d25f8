"""The audit page's verify action: ``anchor-verify``'s checks on one frame of a run, each
reported passed, failed (with its message) or not run.

The checks are ``chain.frame_proof.prove_frame``'s (the same code, not a copy), on exactly the
results line the page shows (``RunIndex.frame_line``) and the mask it names, read through
the page's file root (``chain.files.FileRoot``); this module names the states.
"""
from __future__ import annotations

import base64
from typing import Optional

from model_store.util import one_line

from chain.errors import AnchorVerificationFailed, BatchFormatError, ChainError
from chain.files import PathRefused
from chain.frame_proof import prove_and_rescore, prove_frame
from chain.rescore import disagreement_png
from chain.retained_frame import frame_names, read_frame
from .run_index import Batch, RunIndex

__all__ = ["CHECKS", "RESCORE_CHECKS", "verify_frame"]

#: anchor-verify's checks in the order ``chain.frame_proof.prove_frame`` runs them (the names are
#: ``AnchorVerificationFailed.check``; tests/web/test_http.py fails when chain/ raises one
#: that is missing here)
CHECKS = (
    ("result_missing", "the frame has a results line"),
    ("result_ambiguous", "the frame has only one results line"),
    ("mask", "its mask is a readable class map"),
    ("batch", "the batch file is a valid anchor batch"),
    ("leaf_missing", "the frame is in the batch"),
    ("leaf_mismatch", "the mask hashes to the batch's leaf"),
    ("proof_invalid", "the Merkle proof leads to the batch root"),
    ("root_not_anchored", "the root is anchored on chain"),
    ("model_key_mismatch", "the chain anchored it for the batch's model key"),
    ("seq_out_of_range", "the frame is in the anchored seq range"),
    ("stream_mismatch", "the chain anchored it for this stream"),
    ("anchor_history_incomplete", "the node returned the stream's whole anchor history"),
    ("conflicting_anchor", "no other anchor claims another result for the frame"),
    ("result_model_key_mismatch", "the line names the anchored model key"),
    ("result_leaf_missing", "the line carries its leaf"),
    ("result_leaf_mismatch", "the line's leaf is the proven leaf"),
    ("result_claim_mismatch", "the line's ts and pos are the anchored ones"),
    ("result_unbound_field", "the line carries no unanchored field"),
    ("result_shares_unverifiable", "the model's class names are known"),
    ("result_shares_mismatch", "the line's class shares match the mask"),
    ("result_mask_mismatch", "the line names the proven mask"),
    # the re-score action's own (chain.frame_proof.prove_and_rescore); verify does not list them
    ("frame_missing", "the device kept the frame"),
    ("frame_mismatch", "the kept frame is the one the leaf binds"),
    ("rescore_unavailable", "the model can be re-run on it"),
    ("rescore_mismatch", "re-running the model gives the anchored mask"),
)
RESCORE_CHECKS = ("frame_missing", "frame_mismatch", "rescore_unavailable", "rescore_mismatch")


def _kept_frame(index: RunIndex, stream: str, seq: int) -> Optional[str]:
    """The frame the device kept for (stream, seq), relative to OUT_DIR, when it is a
    regular file there (chain.retained_frame's names)."""
    for name in (f"{stream}/frames/{n}" for n in frame_names(seq)):
        if index.files.is_file(name):
            return name
    return None


def verify_frame(index: RunIndex, registry, b: Batch, seq: int, *,
                 blob: Optional[str] = None, rescore: bool = False) -> dict:
    """anchor-verify on frame ``seq`` of batch ``b`` (``registry``: a connected ``chain``
    client; ``blob``: the model's blob for its class names): each check's state. With
    ``rescore`` also ``anchor-verify --rescore``: the model re-run on the kept frame, its
    counts (``rescore``) and the disagreement picture (``picture``, a PNG data URL)."""
    failed, message, line, rescored, picture = None, "", None, None, None
    try:
        # the line the page shows; its mask and the batch are regular files under OUT_DIR
        # (read without following a symlink or waiting on a FIFO)
        shown = index.frame_line(b.stream, seq)
        if not index.files.is_file(b.file):
            raise BatchFormatError(f"{b.file} is not a regular file under OUT_DIR")
        results = index.results_file(b.stream)
        if not rescore:
            v = prove_frame(lambda: registry, index.out / b.file, b.stream, seq,
                            result=results, line=shown, blob=blob)
        else:
            kept = _kept_frame(index, b.stream, seq)
            if kept is None:
                v = prove_frame(lambda: registry, index.out / b.file, b.stream, seq,
                                result=results, line=shown, blob=blob)
                raise AnchorVerificationFailed(f"frame missing: the device kept no frame {seq} of "
                                               f"stream '{b.stream}' (VERISEG_KEEP_FRAMES)",
                                               check="frame_missing")
            v, r = prove_and_rescore(lambda: registry, index.out / b.file, b.stream, seq,
                                     result=results, line=shown, blob=blob, frame=index.out / kept)
            rescored, picture = r.as_dict(), _picture(index.out / kept, r)
            line = f"{v.line()}; {r.line()}"
            r.check()
        line = v.line() if line is None else line
    except AnchorVerificationFailed as e:
        failed, message = e.check, one_line(e)
    except BatchFormatError as e:
        failed, message = "batch", one_line(e)
    except (ChainError, OSError, ValueError, PathRefused) as e:
        failed, message = "error", f"could not verify: {one_line(e)}"
    states, seen = [], failed is None
    for name, label in CHECKS:
        if name in RESCORE_CHECKS and not rescore:
            continue   # the verify action lists the checks it runs
        if name == failed:
            states.append({"check": name, "label": label, "state": "failed"})
            seen = True
        else:
            states.append({"check": name, "label": label,
                           "state": "not run" if (seen and failed) or failed == "error"
                           else "passed"})
    out = {"ok": failed is None, "stream": b.stream, "seq": seq, "batch": b.id,
           "line": line, "failed": failed, "message": message[:2000], "checks": states}
    if rescored is not None:
        out.update(rescore=rescored, picture=picture)
    return out


def _picture(frame, r) -> str:
    """The disagreement picture as a PNG data URL."""
    image, colour = read_frame(frame)
    return "data:image/png;base64," + base64.b64encode(disagreement_png(image, colour, r)).decode()
