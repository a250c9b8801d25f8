"""Result anchoring: a Merkle tree over per-frame result digests, one root per batch.

The leaf and tree (with their format spec) are in ``chain.merkle``, the batch and its file
in ``chain.anchor_batch``, the batching rule in ``chain.anchor_batcher`` and the check of
one frame in ``chain.anchor_verify``; this module names them in one place.

Only the 32-byte root goes on chain (``ModelRegistry.anchor``, with the stream's hash
``keccak256(stream_id UTF-8)``, the seq range and the model key; the contract records the
sender); the leaves (and optionally the proofs) stay off chain in a batch JSON file.
"""

from .anchor_batch import BATCH_FORMAT, BATCH_VERSION, AnchorBatch, Leaf  # noqa: F401
from .anchor_batcher import AnchorBatcher, SendHook  # noqa: F401
from .anchor_verify import Verification, read_mask, verify_frame  # noqa: F401
from .frame_digest import frame_digest  # noqa: F401
from .merkle import (LEAF_DOMAIN, LEAF_DOMAIN_V1, LEAF_DOMAIN_V2, LEAF_PREFIX, NODE_PREFIX, MerkleTree,  # noqa: F401
                     Proof, leaf_digest, node_digest, proof_from_json, proof_to_json, ts_micros,
                     verify_proof)

__all__ = ["leaf_digest", "frame_digest", "ts_micros", "node_digest", "MerkleTree", "verify_proof", "Leaf", "AnchorBatch",
           "AnchorBatcher", "Verification",
           "read_mask", "verify_frame", "proof_to_json", "proof_from_json"]
