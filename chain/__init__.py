"""The trust layer: on-chain model registry, embedded chain, result anchoring."""

from . import errors
from .connection import connect, deploy_registry
from .registry import Registry
from .values import ChainEvent, KeyDeployment, KeyStatus, parse_key

__all__ = ["connect", "deploy_registry", "Registry", "KeyStatus", "ChainEvent", "errors",
           "parse_key", "KeyDeployment"]
