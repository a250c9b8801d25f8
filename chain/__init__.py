"""The trust layer: on-chain model registry, embedded chain, result anchoring."""
