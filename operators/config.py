"""Flow configuration: the ``VERISEG_*`` variables (declared in :mod:`operators.settings`)
read once into a frozen :class:`Config`.

``bytewax.run`` passes no arguments to a flow, so the flows read their whole configuration
from the environment through :func:`load_config`.  Every bad value gives one line naming
the variable, what was expected and what was found; all bad values are reported together
in one :class:`ConfigError`.  ``python -m operators.config --markdown`` prints the
reference table; ``--write`` puts it into README.md and docs/dataflow.md.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import EnvSettingsSource

from model_store.graph_limits import MAX_INITIALIZER_BYTES, MAX_INPUT_BYTES, MAX_TENSOR_ELEMENTS, GraphLimits

from .keep_frames import KeepFrames
from .settings import PREFIX, FlowSettings, looks_like_path
from .source_spec import VIDEO_EXTS, SourceSpec, parse_sources, stream_id_of

__all__ = ["Config", "ConfigError", "SourceSpec", "load_config", "parse_sources",
           "REPO_ROOT", "DEFAULT_MODEL", "default_sample_clip", "ENV_DOC", "OTHER_VARS",
           "env_name"]

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"
DEFAULT_MODEL = MODELS_DIR / "carla-enet.vsb"


def env_name(field_name: str) -> str:
    return PREFIX + field_name.upper()


#: variable -> one-line description, from the declarations
ENV_DOC: dict[str, str] = {env_name(n): f.description or "" for n, f in FlowSettings.model_fields.items()}

#: read by other commands (chain keystore, tests, benchmarks), not by the flows
OTHER_VARS = frozenset({"VERISEG_KEYFILE", "VERISEG_KEYFILE_PASSWORD", "VERISEG_CARLA_DIR",
                        "VERISEG_MEASURE_REPEAT", "VERISEG_SOLCJS", "VERISEG_GST_CHILD"})


class ConfigError(ValueError):
    """One or more bad ``VERISEG_*`` values; ``str()`` is one line per bad value."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Config:
    sources: tuple[SourceSpec, ...]
    model: str                      # blob path or deployment name
    model_is_path: bool
    model_is_default: bool
    chain: str = "embedded"
    home: Path = Path("~/.veriseg").expanduser()
    registry: Optional[str] = None
    chain_id: Optional[int] = None  # None: the id pinned on first use (chain.connect)
    out: Path = Path("out")
    backend: str = "auto"           # auto | openvino | onnxruntime
    providers: str = "auto"
    require_gpu: bool = False
    openvino_hint: str = "throughput"  # throughput | latency
    openvino_device: str = "auto"   # auto | CPU | GPU[.n] | NPU | an OpenVINO virtual device
    precision: str = "card"         # card | fp32 | bf16 | fp16 (operators/backends/precision.py)
    threads: int = 0                # 0: all cores available
    batch: int = 0                  # 0: auto (4 on GPU providers, 1 on CPU)
    loop: bool = False
    max_frames: Optional[int] = None
    queue: int = 8
    pending: int = 64
    anchor_every: int = 100
    poll: float = 1.0
    masks: bool = True
    mask_size: str = "model"        # model | frame
    keep_frames: KeepFrames = KeepFrames()   # decoded frames kept for re-execution
    frame_digest: bool = True       # v3 leaves (False only in the frame_proof benchmark)
    video: bool = True
    jsonl: bool = True
    metrics_port: Optional[int] = None
    metrics_host: str = "127.0.0.1"
    metrics_linger_s: float = 20.0  # the metrics port stays up this long after the flow ends
    web: Optional[tuple[str, int]] = None   # (host, port) of the live view; None: off
    web_token: Optional[str] = None
    progress: str = "auto"
    preprocess: bool = True
    reconnect_max: float = 30.0
    stall: float = 10.0
    status_max_age: float = 0.0
    pending_deploy_max_s: float = 300.0   # the superseded model's grace while a deploy waits
    decrypt_key_file: Optional[Path] = None
    video_scale: float = 1.0
    max_pixels: int = 40_000_000
    max_input_bytes: int = MAX_INPUT_BYTES            # model_store.graph_limits: checked at load
    max_initializer_bytes: int = MAX_INITIALIZER_BYTES
    max_tensor_elements: int = MAX_TENSOR_ELEMENTS
    max_arena_bytes: int = 4 << 30                    # ONNX Runtime's CPU arena; 0: no cap
    aux_nice: int = 0               # niceness of the decoder and writer threads
    ort_spin: bool = False          # ONNX Runtime threads spin-wait
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def graph_limits(self) -> GraphLimits:
        """The bounds a model's graph is checked against at load (VERISEG_MAX_*)."""
        return GraphLimits(self.max_input_bytes, self.max_initializer_bytes, self.max_tensor_elements)

    @property
    def stream_ids(self) -> tuple[str, ...]:
        return tuple(s.stream_id for s in self.sources)


def default_sample_clip() -> Optional[Path]:
    """The sample clip committed in models/ (sample.* first, then any video file)."""
    if not MODELS_DIR.is_dir():
        return None
    vids = sorted(p for p in MODELS_DIR.iterdir() if p.suffix.lower() in VIDEO_EXTS and p.is_file())
    named = [p for p in vids if p.stem.lower().startswith("sample")]
    return (named or vids or [None])[0]


class _Environ(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping rather than ``os.environ``
    (tests and the benchmarks pass one); values are stripped and blank ones mean "unset".
    Only exact upper-case names count: ``veriseg_poll`` is no ``VERISEG_POLL``."""

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


def _problems(e: ValidationError, env: Mapping[str, str]) -> list[str]:
    lines: list[str] = []
    seen: set[str] = set()
    for err in e.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        if name in seen:      # a union may fail once per branch: one line per variable
            continue
        seen.add(name)
        var = env_name(name)
        if err["type"] == "veriseg":
            lines += [f"{var}: {m}" for m in err["msg"].splitlines()]
        else:
            f = FlowSettings.model_fields[name]
            lines.append(f"{var}: expected {expected(f, err['type'])}, got {env.get(var)!r}")
    return lines


def _unknown(env: Mapping[str, str]) -> list[str]:
    """A misspelt variable would silently keep its default: refuse it."""
    known = set(ENV_DOC) | OTHER_VARS
    lines = []
    for name in sorted(env):
        if name.startswith(PREFIX) and name not in known:
            near = difflib.get_close_matches(name, sorted(ENV_DOC), n=1, cutoff=0.7)
            hint = (f"did you mean {near[0]}?" if near
                    else "the flow's variables are listed in docs/dataflow.md")
            lines.append(f"{name}: unknown variable ({hint})")
    return lines


def _defaults(s: FlowSettings, problems: list[str]) -> tuple[tuple[SourceSpec, ...], str]:
    """The committed sample clip and blob when VERISEG_SOURCE / VERISEG_MODEL are unset."""
    sources, model = s.source, s.model
    if "source" not in s.model_fields_set:
        clip = default_sample_clip()
        if clip is None:
            problems.append(f"VERISEG_SOURCE: not set and no sample clip in {MODELS_DIR} "
                            "(expected models/sample.mp4 or another video file there)")
        else:
            sources = (SourceSpec(stream_id_of(clip), "video", str(clip)),)
    if "model" not in s.model_fields_set:
        model = str(DEFAULT_MODEL)
        if not DEFAULT_MODEL.is_file():
            problems.append(f"VERISEG_MODEL: blob file {model!r} does not exist (the trained blob "
                            "is committed as models/carla-enet.vsb)")
    return sources, model


def load_config(env: Optional[Mapping[str, str]] = None) -> Config:
    """Parse the ``VERISEG_*`` variables of ``env`` (default ``os.environ``)."""
    env = dict(os.environ if env is None else env)
    problems = _unknown(env)
    try:
        s = FlowSettings(**_Environ(FlowSettings, env)())
    except ValidationError as e:
        raise ConfigError(problems + _problems(e, env)) from None
    sources, model = _defaults(s, problems)
    if problems:
        raise ConfigError(problems)
    default = "model" not in s.model_fields_set
    # an unset VERISEG_HOME is the user's home at this call, not at import
    home = s.home if "home" in s.model_fields_set else Path("~/.veriseg").expanduser()
    return Config(
        sources=sources, model=model, model_is_path=default or looks_like_path(model),
        model_is_default=default, chain=s.chain, home=home, registry=s.registry,
        chain_id=s.chain_id, out=s.out, backend=s.backend, providers=s.providers,
        require_gpu=s.require_gpu, openvino_hint=s.openvino_hint,
        openvino_device=s.openvino_device, precision=s.precision, threads=s.threads, batch=s.batch or 0,
        loop=s.loop, max_frames=s.max_frames, queue=s.queue, pending=s.pending, anchor_every=s.anchor_every,
        poll=s.poll, masks=s.masks, mask_size=s.mask_size, keep_frames=s.keep_frames, video=s.video, jsonl=s.jsonl,
        metrics_port=s.metrics_port or None, metrics_host=s.metrics_host,
        metrics_linger_s=s.metrics_linger_s, web=s.web,
        web_token=s.web_token, progress=s.progress, preprocess=s.preprocess != "off",
        reconnect_max=s.reconnect_max, stall=s.stall, status_max_age=s.status_max_age,
        pending_deploy_max_s=s.pending_deploy_max_s,
        decrypt_key_file=s.decrypt_key, video_scale=s.video_scale, max_pixels=s.max_pixels,
        max_input_bytes=s.max_input_bytes, max_initializer_bytes=s.max_initializer_bytes,
        max_tensor_elements=s.max_tensor_elements, max_arena_bytes=s.max_arena_bytes,
        aux_nice=s.aux_nice, ort_spin=s.ort_spin,
        extra={k: v for k, v in env.items() if k.startswith(PREFIX)},
    )


if __name__ == "__main__":
    from .config_doc import main
    raise SystemExit(main())
