"""Merkle anchoring: leaf encoding, trees, proofs (no chain needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain import errors
from chain.anchoring import (AnchorBatch, AnchorBatcher, MerkleTree, leaf_digest, node_digest,
                             proof_from_json, proof_to_json, verify_proof)

K = "ab" * 32


def _leaves(n):
    return [leaf_digest("s", i, K, np.full((2, 2), i % 13, np.uint8)) for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 70), st.data())
def test_every_proof_verifies_and_a_wrong_one_does_not(n, data):
    leaves = _leaves(n)
    tree = MerkleTree(leaves)
    i = data.draw(st.integers(0, n - 1))
    proof = tree.proof(i)
    assert verify_proof(leaves[i], proof, tree.root)
    assert proof_from_json(proof_to_json(proof)) == proof
    assert len(proof) <= max(1, (n - 1).bit_length())
    if n > 1:
        j = data.draw(st.integers(0, n - 1).filter(lambda j: j != i))
        assert not verify_proof(leaves[j], proof, tree.root)  # another leaf, same proof
        forged = list(proof)
        k = data.draw(st.integers(0, len(forged) - 1))
        sib, left = forged[k]
        forged[k] = (bytes([sib[0] ^ 1]) + sib[1:], left)
        assert not verify_proof(leaves[i], forged, tree.root)
        forged[k] = (sib, not left)
        assert not verify_proof(leaves[i], forged, tree.root)
    assert not verify_proof(leaves[i], proof, bytes(32))


def test_tree_shapes():
    a, b, c = _leaves(3)
    assert MerkleTree([a]).root == a
    assert MerkleTree([a, b]).root == node_digest(a, b)
    assert MerkleTree([a, b, c]).root == node_digest(node_digest(a, b), c)  # c promoted
    # no duplication: n and n+1 leaves with a repeated last leaf differ
    assert MerkleTree([a, b, c]).root != MerkleTree([a, b, c, c]).root
    with pytest.raises(ValueError):
        MerkleTree([])


def test_leaf_encoding_is_unambiguous_and_binds_every_field():
    cm = np.arange(12, dtype=np.uint8).reshape(3, 4)
    base = leaf_digest("cam0", 7, K, cm)
    assert len(base) == 32
    assert base == leaf_digest("cam0", 7, "0x" + K.upper(), cm.copy())
    variants = [
        leaf_digest("cam1", 7, K, cm), leaf_digest("cam0", 8, K, cm),
        leaf_digest("cam0", 7, "cd" * 32, cm), leaf_digest("cam0", 7, K, cm.reshape(4, 3)),
        leaf_digest("cam0", 7, K, cm.reshape(12)), leaf_digest("cam07", 7, K, cm),
        leaf_digest("cam", 7, K, cm),
    ]
    cm2 = cm.copy()
    cm2[2, 3] = 0
    variants.append(leaf_digest("cam0", 7, K, cm2))
    assert len({base, *variants}) == len(variants) + 1
    # domain separation: a leaf never equals an inner node over the same bytes
    a, b = _leaves(2)
    assert node_digest(a, b) not in _leaves(2)
    # (H, W, 1) is the same class map as (H, W); other dtypes are refused
    assert leaf_digest("s", 1, K, cm[..., None]) == leaf_digest("s", 1, K, cm)
    with pytest.raises(TypeError):
        leaf_digest("s", 1, K, cm.astype(np.int32))


def test_v2_leaf_binds_ts_and_pos_and_differs_from_v1():
    cm = np.arange(12, dtype=np.uint8).reshape(3, 4)
    v1 = leaf_digest("cam0", 7, K, cm)
    base = leaf_digest("cam0", 7, K, cm, ts=1.5, pos="a.avi#7")
    variants = [leaf_digest("cam0", 7, K, cm, ts=1.500001, pos="a.avi#7"),
                leaf_digest("cam0", 7, K, cm, ts=1.5, pos="a.avi#8"),
                leaf_digest("cam0", 7, K, cm, ts=1.5), leaf_digest("cam0", 7, K, cm, pos="a.avi#7"),
                leaf_digest("cam0", 7, K, cm, ts=0.0), leaf_digest("cam0", 7, K, cm, pos=""), v1]
    assert len({base, *variants}) == len(variants) + 1
    # the ts is bound to the microsecond the results line states (6 decimals)
    assert leaf_digest("cam0", 7, K, cm, ts=round(1.5 + 1e-7, 6), pos="a.avi#7") == base
    recs = [("cam0", i, cm, 10.0 + i, f"a.avi#{i}") for i in range(3)]
    b = AnchorBatch.build(K, recs)
    assert b.leaves[1].digest == leaf_digest("cam0", 1, K, cm, ts=11.0, pos="a.avi#1")
    assert [lf.ts for lf in b.leaves] == [10.0, 11.0, 12.0]


def test_batch_round_trip_and_format_errors(tmp_path):
    recs = [("cam0", i, np.full((3, 3), i, np.uint8)) for i in range(5, 12)]
    b = AnchorBatch.build(K, recs)
    assert (b.first_seq, b.last_seq) == (5, 11)
    p = b.write(tmp_path / "b.json", include_proofs=True)
    b2, raw = AnchorBatch.read(p)
    assert b2.root == b.root and raw["leaf_count"] == 7 and len(raw["proofs"]) == 7
    claimed = AnchorBatch.build(K, [(s, n, cm, 1.25, "x#1") for s, n, cm in recs])
    back, _ = AnchorBatch.read(claimed.write(tmp_path / "c.json"))
    assert back.leaves == claimed.leaves and back.root == claimed.root
    assert raw["chain"] is None and raw["model_key"] == K
    for bad, msg in [("{", "not JSON"), (json.dumps({"format": "x"}), "not a VeriSeg"),
                     (json.dumps({**raw, "version": 9}), "version 9"),
                     (json.dumps({**raw, "leaves": []}), "malformed")]:
        (tmp_path / "x.json").write_text(bad)
        with pytest.raises(errors.BatchFormatError, match=msg):
            AnchorBatch.read(tmp_path / "x.json")


def test_batcher_splits_on_size_and_model_change(tmp_path):
    bt = AnchorBatcher(tmp_path, every=3)
    cm = np.zeros((2, 2), np.uint8)
    outs = [bt.add("c", i, K, cm) for i in range(4)]
    assert outs[2] is not None and outs[0] is None and len(bt.written) == 1
    assert bt.add("c", 4, "cd" * 32, cm) is not None       # model changed: flush seq 3
    assert bt.flush() is not None and bt.flush() is None
    keys = [json.loads(p.read_text())["model_key"] for p in bt.written]
    assert keys == [K, K, "cd" * 32]
    spans = [(json.loads(p.read_text())["first_seq"], json.loads(p.read_text())["last_seq"])
             for p in bt.written]
    assert spans == [(0, 2), (3, 3), (4, 4)]


def test_batcher_hands_closed_batches_to_a_send_hook_and_resumes_an_open_one():
    """The flow's sink batches through a send hook (it writes and sends its own files) and
    keeps the open batch in its snapshot."""
    sent = []
    cm = np.zeros((2, 2), np.uint8)
    bt = AnchorBatcher(every=3, send=lambda b: sent.append(b) or f"batch-{len(sent)}")
    assert [bt.add("c", i, K, cm, ts=i / 10, pos=f"f#{i}") for i in range(4)] == [None, None, "batch-1", None]
    assert bt.add("d", 4, K, cm) == "batch-2"               # another stream closes seq 3
    state = bt.open_batch()
    assert state == {"model_key": K, "leaves": [{"stream": "d", "seq": 4,
                                                 "digest": leaf_digest("d", 4, K, cm).hex()}]}
    resumed = AnchorBatcher(every=3, send=sent.append, resume=json.loads(json.dumps(state)))
    resumed.add_leaf(K, AnchorBatch.build(K, [("d", 5, cm)]).leaves[0])
    resumed.flush()
    assert [[lf.seq for lf in b.leaves] for b in sent] == [[0, 1, 2], [3], [4, 5]]
    assert sent[0].leaves[1].ts == 0.1 and sent[0].leaves[1].pos == "f#1"
    with pytest.raises(ValueError):
        AnchorBatcher(every=3)                               # nowhere to go
