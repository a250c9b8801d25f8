"""The ``VERISEG_*`` variables: where the project reads its environment.

:class:`ChainConfig` declares the variables of the registry (its chain, state folder,
signing key) as one pydantic-settings field each: type, default, bounds and meaning.
``operators.config.Config`` extends it with the flow's own.  Everything else is handed a
configuration; :meth:`ChainConfig.from_env` is the one read of the environment, and every
bad value in it comes back as one line naming the variable, in one :class:`ConfigError`.

Adding a variable is one field here (or in ``operators.config``) and its test; the
reference tables in README.md and docs/dataflow.md are generated from the fields
(``python -m operators.config --write``).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = ["ChainConfig", "ConfigError", "PREFIX", "DEFAULT_HOME", "default_home", "var",
           "internal", "refuse", "writable_folder", "env_name", "expected"]

PREFIX = "VERISEG_"
DEFAULT_HOME = "~/.veriseg"


def default_home() -> Path:
    """The state folder when VERISEG_HOME is unset (the user's home at this call)."""
    return Path(DEFAULT_HOME).expanduser()


def env_name(field_name: str) -> str:
    return PREFIX + field_name.upper()


def var(default: Any = None, doc: str = "", *, shown: Optional[str] = None,
        expect: Optional[str] = None, main: bool = False, **kw) -> Any:
    """One variable's declaration: ``Field`` with the reference table's extras: ``shown``
    is the default as the table prints it, ``main`` puts it in README's short table,
    ``expect`` words a value's shape where the type and bounds do not say it."""
    extra = {k: v for k, v in (("shown", shown), ("expect", expect), ("main", main)) if v}
    if "default_factory" in kw:
        return Field(description=doc, json_schema_extra=extra or None, **kw)
    return Field(default, description=doc, json_schema_extra=extra or None, **kw)


def internal(default: Any, doc: str) -> Any:
    """A value the code that runs a flow sets (a benchmark, Bytewax's process id): no
    variable of its own, not in the tables."""
    return Field(default, description=doc, json_schema_extra={"internal": True})


def refuse(message: str) -> PydanticCustomError:
    """A value refused with our own words (the text after ``VARIABLE: ``)."""
    return PydanticCustomError("veriseg", message)


def writable_folder(raw: Any) -> Path:
    """A folder the project creates: its nearest existing ancestor must be a writable folder."""
    p = Path(str(raw)).expanduser()
    a = p.absolute()
    if a.exists():
        if not a.is_dir():
            raise refuse(f"{str(raw)!r} exists and is not a folder")
        return p
    for up in a.parents:
        if up.exists():
            if not up.is_dir():
                raise refuse(f"{str(raw)!r} cannot be created: {str(up)!r} is not a folder")
            if not os.access(up, os.W_OK | os.X_OK):
                raise refuse(f"{str(raw)!r} cannot be created: {str(up)!r} is not writable")
            break
    return p


class ConfigError(ValueError):
    """One or more bad ``VERISEG_*`` values; ``str()`` is one line per bad value."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class _Environ(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (tests pass one); values
    are stripped and blank ones mean "unset".  Only exact upper-case names count:
    ``veriseg_poll`` is no ``VERISEG_POLL``."""

    def __init__(self, settings_cls, environ: Mapping[str, str]):
        self._given = {k.lower(): v.strip() for k, v in environ.items()
                       if k.startswith(PREFIX) and k == k.upper() and v.strip()}
        super().__init__(settings_cls, case_sensitive=False)

    def _load_env_vars(self) -> Mapping[str, Optional[str]]:
        return self._given


# -- one line per bad value, worded from the declaration ----------------------------------
def _bounds(f: FieldInfo) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in f.metadata:
        for cls, key in ((Ge, "ge"), (Gt, "gt"), (Le, "le"), (Lt, "lt")):
            if isinstance(m, cls):
                out[key] = getattr(m, key)
    return out


def _base_type(f: FieldInfo) -> Any:
    """``int`` for ``Optional[int]``, the Literal itself for a Literal."""
    t = f.annotation
    if get_origin(t) is Literal:
        return t
    args = [a for a in get_args(t) if a is not type(None)]
    return args[0] if args and get_origin(t) is not Literal else t


def expected(f: FieldInfo, error_type: str = "") -> str:
    """What a variable accepts, in words (the messages and the reference table)."""
    extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
    if "expect" in extra:
        return str(extra["expect"])
    t, b = _base_type(f), _bounds(f)
    if get_origin(t) is Literal:
        choices = [str(c) for c in get_args(t)]
        return ", ".join(choices[:-1]) + f" or {choices[-1]}"
    if t is bool:
        return "1/0 (true/false, yes/no, on/off)"
    if t is int:
        if error_type.startswith("int_") or not b:
            return "a whole number"
        return f"a whole number in {b['ge']}..{b['le']}" if "le" in b else f"a whole number >= {b['ge']}"
    if t is float:
        if error_type == "float_parsing":
            return "a number of seconds"
        low = f"seconds >= {b['ge']:g}" if "ge" in b else f"a number > {b['gt']:g}"
        return f"{low} and <= {b['le']:g}"
    return "a " + getattr(t, "__name__", str(t))


def _problems(fields: Mapping[str, FieldInfo], e: ValidationError, env: Mapping[str, str]) -> list[str]:
    lines: list[str] = []
    seen: set[str] = set()
    for err in e.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        if name in seen:      # a union may fail once per branch: one line per variable
            continue
        seen.add(name)
        var_ = env_name(name)
        if err["type"] == "veriseg":
            lines += [f"{var_}: {m}" for m in err["msg"].splitlines()]
        else:
            lines.append(f"{var_}: expected {expected(fields[name], err['type'])}, "
                         f"got {env.get(var_)!r}")
    return lines


class ChainConfig(BaseSettings):
    """The registry's configuration.  Declaration order is the tables' order, and a field
    may read the ones declared before it (``home`` reads ``chain``)."""

    # defaults are not validated: an unset VERISEG_HOME is not checked
    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, protected_namespaces=(),
                                      validate_default=False, arbitrary_types_allowed=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings: PydanticBaseSettingsSource,
                                   env_settings, dotenv_settings, file_secret_settings):
        """Only the values given: ``ChainConfig()`` is the defaults, and :meth:`from_env`
        passes the environment it reads."""
        return (init_settings,)

    chain: str = var("embedded", "embedded | http(s):// JSON-RPC URL of the registry's chain "
                     "(with VERISEG_REGISTRY and VERISEG_KEYFILE)", main=True,
                     pattern=r"^(?:embedded$|https?://[^\s/]+)",
                     expect="'embedded' or an http(s):// JSON-RPC URL")
    home: Path = var(doc="state folder of the embedded chain, the chain id pins, the blob "
                     "index and the TensorRT cache", default_factory=default_home,
                     shown=DEFAULT_HOME, main=True)
    registry: Optional[str] = var(None, "ModelRegistry contract address 0x... (needed with a "
                                  "JSON-RPC URL)", shown="the one the chain knows",
                                  pattern=r"^0x[0-9a-fA-F]{40}$",
                                  expect="a contract address 0x + 40 hex digits")
    chain_id: Optional[int] = var(None, "the chain id the registry must be on, decimal or 0x hex",
                                  shown="the one pinned at first use", gt=0, lt=1 << 64,
                                  expect="a chain id (a whole number > 0, decimal or 0x hex)")
    keyfile: Optional[Path] = var(None, "encrypted JSON keystore that signs on a node "
                                  "(`python -m chain keystore new`)", shown="—")
    keyfile_password: Optional[SecretStr] = var(None, "the key file's password (else "
                                                "--password-file or a prompt where one asks)",
                                                shown="—")
    web_token: Optional[str] = var(None, "token a viewer of the live view or the audit page "
                                   "must present (at least 16 characters); required when either "
                                   "binds beyond loopback", shown="—", repr=False)
    solcjs: Optional[str] = var(None, "the solcjs that compiles the contract "
                                "(`python -m chain.compile`)",
                                shown=".tools/node_modules/.bin/solcjs, else the PATH's")

    @field_validator("home", mode="before")
    @classmethod
    def _home(cls, v: Any, info: ValidationInfo) -> Path:
        # only the embedded chain keeps its state there
        return writable_folder(v) if info.data.get("chain") == "embedded" else Path(str(v)).expanduser()

    @field_validator("keyfile", mode="before")
    @classmethod
    def _keyfile(cls, v: Any) -> Any:
        if v is not None and not Path(str(v)).expanduser().is_file():
            raise refuse(f"key file {str(v)!r} does not exist (make one with `python -m chain "
                         "keystore new`)")
        return None if v is None else Path(str(v)).expanduser()

    @field_validator("solcjs")
    @classmethod
    def _solcjs(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and shutil.which(v) is None:
            raise refuse(f"{v!r} is neither an executable file nor a command on the PATH")
        return v

    @field_validator("chain_id", mode="before")
    @classmethod
    def _chain_id(cls, v: Any) -> Any:
        try:
            return int(v, 0) if isinstance(v, str) else v
        except ValueError:
            return v

    @field_validator("web_token", mode="before")
    @classmethod
    def _web_token(cls, v: Any) -> Any:
        if v is not None and len(str(v)) < 16:   # the token itself is never echoed
            raise refuse("expected at least 16 characters (e.g. the output of `openssl rand -hex 16`)")
        return v

    @property
    def password(self) -> Optional[str]:
        """VERISEG_KEYFILE_PASSWORD in clear (None when unset)."""
        return None if self.keyfile_password is None else self.keyfile_password.get_secret_value()

    @classmethod
    def variables(cls) -> dict[str, FieldInfo]:
        """Variable name -> its declaration, in the tables' order (internal switches left out)."""
        return {env_name(n): f for n, f in cls.model_fields.items()
                if not (isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("internal"))}

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None, *,
                 defaults: Optional[Mapping[str, str]] = None):
        """The configuration from ``env`` (default: the process environment); ``defaults``
        (variable -> value) stand in for variables ``env`` leaves unset or blank.  Raises
        ConfigError with one line per bad value."""
        given = os.environ if env is None else env
        defaults = defaults or {}
        return cls._parsed({**defaults, **{k: v for k, v in given.items()
                                           if v.strip() or k not in defaults}})

    @classmethod
    def _parsed(cls, env: dict[str, str]):
        """``env``'s variables as this configuration (a subclass adds its own checks)."""
        try:
            return cls(**_Environ(cls, env)())
        except ValidationError as e:
            raise ConfigError(_problems(cls.model_fields, e, env)) from None

    def overridden(self, **changes: Any):
        """This configuration with ``changes`` that are not None (command-line flags)."""
        return self.model_copy(update={k: v for k, v in changes.items() if v is not None})
