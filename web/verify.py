"""The audit page's verify action: ``anchor-verify``'s checks on one frame of a run, each
reported passed, failed (with its message) or not run.

The checks are ``chain.cli.prove_frame``'s (the same code, not a copy), on exactly the
results line the page shows (``RunIndex.frame_line``) and the mask it names, read through
the page's file root (``chain.files.FileRoot``); this module names the states.
"""
from __future__ import annotations

from typing import Optional

from model_store.util import one_line

from chain.files import PathRefused
from .run_index import Batch, RunIndex

__all__ = ["CHECKS", "verify_frame"]

#: anchor-verify's checks in the order ``chain.cli.prove_frame`` runs them (the names are
#: ``AnchorVerificationFailed.check``; tests/test_web_http.py fails when chain/ raises one
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
)


def verify_frame(index: RunIndex, registry, b: Batch, seq: int, *,
                 blob: Optional[str] = None) -> dict:
    """anchor-verify on frame ``seq`` of batch ``b`` (``registry``: a connected ``chain``
    client; ``blob``: the model's blob for its class names): each check's state."""
    from chain.cli import CliError, prove_frame
    from chain.errors import AnchorVerificationFailed, BatchFormatError, ChainError
    failed, message, line = None, "", None
    try:
        # the line the page shows; its mask and the batch are regular files under OUT_DIR
        # (read without following a symlink or waiting on a FIFO)
        shown = index.frame_line(b.stream, seq)
        if not index.files.is_file(b.file):
            raise BatchFormatError(f"{b.file} is not a regular file under OUT_DIR")
        v = prove_frame(lambda: registry, index.out / b.file, b.stream, seq,
                        result=index.results_file(b.stream), line=shown, blob=blob)
        line = v.line()
    except AnchorVerificationFailed as e:
        failed, message = e.check, one_line(e)
    except BatchFormatError as e:
        failed, message = "batch", one_line(e)
    except (ChainError, CliError, OSError, ValueError, PathRefused) as e:
        failed, message = "error", f"could not verify: {one_line(e)}"
    states, seen = [], failed is None
    for name, label in CHECKS:
        if name == failed:
            states.append({"check": name, "label": label, "state": "failed"})
            seen = True
        else:
            states.append({"check": name, "label": label,
                           "state": "not run" if (seen and failed) or failed == "error"
                           else "passed"})
    return {"ok": failed is None, "stream": b.stream, "seq": seq, "batch": b.id,
            "line": line, "failed": failed, "message": message[:2000], "checks": states}
