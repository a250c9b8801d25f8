"""Typed web3 client of the ``ModelRegistry`` contract: the names of its modules in one place.

    from chain import connect
    reg = connect()                                  # embedded chain under VERISEG_HOME
    reg = connect("http://127.0.0.1:8545", registry="0x...", keyfile="key.json")

``chain.connection`` reaches a registry (``connect``, ``deploy_registry``, key files),
``chain.pins`` keeps the chain id pins, ``chain.registry`` is the ``Registry`` and its reads,
``chain.transactions`` its writes, ``chain.events`` its event log, and ``chain.values`` the
keys, roles and records they pass around.
"""

from .connection import connect, deploy_registry, http_web3, load_keyfile  # noqa: F401
from .events import EVENT_KINDS, LOG_CHUNK  # noqa: F401
from .pins import PINS_FILE, read_pin, record_pin  # noqa: F401
from .registry import Registry  # noqa: F401
from .retries import is_transient, retry, unavailable  # noqa: F401
from .transactions import EMBEDDED_GAS  # noqa: F401
from .values import (ANCHORER, PUBLISHER, ROLE_NAMES, ROLES, AnchorRecord, ChainEvent,  # noqa: F401
                     KeyDeployment, KeyStatus, parse_key, stream_hash)
