"""The trust layer: on-chain model registry, embedded chain, result anchoring."""

from . import errors
from .client import (ChainEvent, KeyDeployment, KeyStatus, Registry, connect, deploy_registry,
                     normalize_key)

__all__ = ["connect", "deploy_registry", "Registry", "KeyStatus", "ChainEvent", "errors",
           "normalize_key", "KeyDeployment"]
