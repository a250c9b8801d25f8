"""Errors raised by :mod:`chain`. Every one derives from :class:`ChainError`.

Reverts of the ``ModelRegistry`` contract arrive as eth-tester's ``TransactionFailed``
(embedded chain) or web3's ``ContractLogicError`` / ``ContractCustomError`` (a node); both
are decoded by the 4-byte selector of the contract's custom error and mapped to one class
here, so callers never see the transport. Messages are one line: what was refused and
what to do about it.
"""

from __future__ import annotations


class ChainError(Exception):
    """Base class of every chain error."""


# ------------------------------------------------------------------ contract refusals
class ContractRefusal(ChainError):
    """The registry contract refused a call (a custom error). ``.error`` is its name,
    ``.args_`` its decoded arguments."""

    error = "Unknown"

    def __init__(self, message: str, *, error: str | None = None, args: tuple = ()):
        super().__init__(message)
        if error is not None:
            self.error = error
        self.args_ = tuple(args)


class Unauthorized(ContractRefusal):
    """The sending account lacks the role (or is not the owner)."""


class UnknownRole(ContractRefusal):
    pass


class InvalidArgument(ContractRefusal):
    """Zero key, empty name, zero address, firstSeq > lastSeq."""


class KeyAlreadyRegistered(ContractRefusal):
    pass


class UnknownKey(ContractRefusal):
    pass


class KeyRevoked(ContractRefusal):
    pass


class RollbackRefused(ContractRefusal):
    """Deploying a key that the deployment name used before (no rollback)."""


StaleVersion = RollbackRefused


class AlreadyCurrent(ContractRefusal):
    """The key already is the deployment's current key."""


class UnknownDeployment(ContractRefusal):
    pass


class RootAlreadyAnchored(ContractRefusal):
    pass


class UnknownRevert(ContractRefusal):
    """A revert whose data matches no custom error of the contract."""


# ------------------------------------------------------------------ client side
class ChainUnavailable(ChainError):
    """The node cannot be reached, timed out, or a transaction was not mined in time."""


class NodeIncompatible(ChainError):
    """The node serves the registry's code but cannot run it: its EVM lacks an opcode the
    code uses (a node before the fork the code was compiled for)."""


class NodeError(ChainError):
    """The node answered a call with an error the client does not know (an RPC error, an
    HTTP error, a malformed answer); the message names the node and the call."""


class NoAccount(ChainError):
    """A write was attempted without an account (no key file configured)."""


class InsufficientFunds(ChainError):
    """The signing account cannot pay for gas."""


class KeyfileError(ChainError):
    """The key file is missing, unreadable or the password is wrong."""


class RegistryNotConfigured(ChainError):
    """No registry address for a real node (``--registry`` / ``VERISEG_REGISTRY``)."""


class RegistryNotFound(ChainError):
    """No contract code at the configured registry address."""


class RegistryCodeMismatch(ChainError):
    """The code at the registry address is not the committed ModelRegistry runtime
    bytecode (another contract, an old version, or a node that lies)."""


class ChainIdMismatch(ChainError):
    """The node reports another chain id than the one pinned for the registry."""


class JournalError(ChainError):
    """The embedded chain's journal is corrupt or does not replay to the same result."""


class InvalidKey(ChainError):
    """A key string is not 64 hex characters."""


class ProofInputError(ChainError):
    """A frame proof cannot start from what it was given (no mask and no results line, a
    blob of another model, no retained frame to re-score)."""


class AnchorVerificationFailed(ChainError):
    """``anchor-verify`` found a check that does not hold; ``.check`` names it."""

    def __init__(self, message: str, *, check: str):
        super().__init__(message)
        self.check = check


class BatchFormatError(ChainError):
    """An anchor batch file is not valid."""


# custom error name in the contract -> exception class
CONTRACT_ERRORS: dict[str, type[ContractRefusal]] = {
    "NotOwner": Unauthorized,
    "NotPendingOwner": Unauthorized,
    "MissingRole": Unauthorized,
    "UnknownRole": UnknownRole,
    "ZeroAddress": InvalidArgument,
    "ZeroKey": InvalidArgument,
    "EmptyName": InvalidArgument,
    "BadSeqRange": InvalidArgument,
    "KeyAlreadyRegistered": KeyAlreadyRegistered,
    "UnknownKey": UnknownKey,
    "KeyRevoked": KeyRevoked,
    "AlreadyCurrent": AlreadyCurrent,
    "RollbackRefused": RollbackRefused,
    "UnknownDeployment": UnknownDeployment,
    "RootAlreadyAnchored": RootAlreadyAnchored,
}

__all__ = [name for name, obj in list(globals().items())
           if isinstance(obj, type) and issubclass(obj, Exception)] + ["CONTRACT_ERRORS"]
