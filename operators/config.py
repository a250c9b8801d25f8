"""Flow configuration: every ``VERISEG_*`` variable parsed once into a frozen dataclass.

``bytewax.run`` passes no arguments to a flow, so the flows read their whole configuration
from the environment through :func:`load_config`.  Every bad value gives one line naming
the variable, what was expected and what was found; all bad values are reported together
in one :class:`ConfigError`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from .source_spec import VIDEO_EXTS, SourceSpec, parse_sources, stream_id_of

__all__ = ["Config", "ConfigError", "SourceSpec", "load_config", "parse_sources",
           "REPO_ROOT", "DEFAULT_MODEL", "default_sample_clip", "ENV_DOC"]

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"
DEFAULT_MODEL = MODELS_DIR / "carla-enet.vsb"
#: variable -> one-line description (the config reference in docs/dataflow.md mirrors this)
ENV_DOC: dict[str, str] = {
    "VERISEG_SOURCE": "frames to score: PATH (video file) | dir:PATH | csv:PATH | gst:PIPELINE | "
                      "rtsp://URL | /dev/videoN; several separated by ';', each optionally "
                      "prefixed 'ID@' for its stream id (default: the sample clip in models/)",
    "VERISEG_MODEL": "blob path (.vsb) or a deployment name on the registry "
                     "(default models/carla-enet.vsb)",
    "VERISEG_DECRYPT_KEY": "secret file (32 bytes or 64 hex) that decrypts an encrypted blob body",
    "VERISEG_CHAIN": "embedded | http(s)://JSON-RPC URL (default embedded)",
    "VERISEG_HOME": "state folder of the embedded chain (default ~/.veriseg)",
    "VERISEG_REGISTRY": "ModelRegistry contract address 0x... (default: the one the chain knows)",
    "VERISEG_CHAIN_ID": "the chain id the registry must be on, decimal or 0x hex (default: the one "
                        "pinned at first use; read by chain.connect)",
    "VERISEG_OUT": "output folder (default ./out)",
    "VERISEG_BACKEND": "auto | openvino | onnxruntime: the runtime that scores (auto: ONNX Runtime "
                       "on an NVIDIA GPU, OpenVINO on a CPU where it is installed, else ONNX Runtime)",
    "VERISEG_PROVIDERS": "auto | tensorrt | cuda | cpu (auto: TensorRT > CUDA > CPU)",
    "VERISEG_REQUIRE_GPU": "1: refuse to run unless a GPU provider loaded (default 0)",
    "VERISEG_THREADS": "ONNX Runtime intra-op threads (default: CPU cores available)",
    "VERISEG_BATCH": "largest micro-batch for file replay (default auto: 4 on a GPU provider, 1 on "
                     "CPU where batching measured slower; live sources always use 1)",
    "VERISEG_LOOP": "1: loop file sources forever (default 0)",
    "VERISEG_MAX_FRAMES": "stop each stream after N frames (default: no limit)",
    "VERISEG_QUEUE": "decoded frames buffered per source (default 8)",
    "VERISEG_PENDING": "frames of a live stream that may wait for a valid model before the oldest "
                       "are dropped (default 64)",
    "VERISEG_ANCHOR_EVERY": "anchor a Merkle root of the results every N frames (default 100; 0 off)",
    "VERISEG_POLL": "seconds between registry event polls (default 1.0)",
    "VERISEG_STATUS_MAX_AGE": "seconds a model status verified online stays usable when the registry "
                              "is unreachable at start (default 0: refuse to start)",
    "VERISEG_MASKS": "1/0: write class-map PNGs (default 1)",
    "VERISEG_MASK_SIZE": "model | frame: class-map PNGs at the model's picture size (default; the "
                         "cheapest) or at the source frame's own size, as dataset labels are",
    "VERISEG_VIDEO": "1/0: write the colour overlay video (default 1)",
    "VERISEG_JSONL": "1/0: write per-frame JSON lines (default 1)",
    "VERISEG_VIDEO_SCALE": "size of the overlay video relative to the model input, 0 < s <= 1 "
                           "(default 1; 0.5 cuts its encoding cost ~3x)",
    "VERISEG_METRICS_PORT": "serve Prometheus metrics over HTTP on this port (default off)",
    "VERISEG_WEB": "serve the live view on [HOST:]PORT (default off; HOST defaults to 127.0.0.1, "
                   "and a non-loopback HOST needs VERISEG_WEB_TOKEN)",
    "VERISEG_WEB_TOKEN": "token a viewer must present (at least 16 characters); required when "
                         "VERISEG_WEB binds beyond loopback",
    "VERISEG_PROGRESS": "auto | 1 | 0: progress line on stderr for file replay (default auto)",
    "VERISEG_PREPROCESS": "auto | off: resize/colour-convert frames to the model input (default auto)",
    "VERISEG_RECONNECT_MAX": "largest reconnect backoff for live sources, seconds (default 30)",
    "VERISEG_STALL": "reconnect a live source that sent no frame for this many seconds (default 10)",
    "VERISEG_MODEL_DIRS": "extra folders (':'-separated) searched for the blob of a deployed key",
    "VERISEG_ORT_SPIN": "1: let ONNX Runtime threads spin-wait (default 0: they would burn the CPU "
                        "the decoder and writers need)",
    "VERISEG_AUX_NICE": "niceness added to the decoder and writer threads so they run in the gaps "
                        "of inference (default 0)",
    "VERISEG_MAX_PIXELS": "largest frame (width x height) an image file may declare; larger ones are "
                          "skipped before decoding (default 40000000; 8K is 33 MP)",
}

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
    video: bool = True
    jsonl: bool = True
    metrics_port: Optional[int] = None
    web: Optional[tuple[str, int]] = None   # (host, port) of the live view; None: off
    web_token: Optional[str] = None
    progress: str = "auto"
    preprocess: bool = True
    reconnect_max: float = 30.0
    stall: float = 10.0
    status_max_age: float = 0.0
    decrypt_key_file: Optional[Path] = None
    video_scale: float = 1.0
    max_pixels: int = 40_000_000
    extra: Mapping[str, str] = field(default_factory=dict)

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


def _bool(env, name, default, problems) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    problems.append(f"{name}: expected 1/0 (true/false, yes/no, on/off), got {raw!r}")
    return default


def _int(env, name, default, problems, lo=None, hi=None, allow_none=False):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    if allow_none and raw.strip().lower() in ("none", "off", "0") and lo is not None and lo > 0:
        return None
    try:
        v = int(raw.strip())
    except ValueError:
        problems.append(f"{name}: expected a whole number, got {raw!r}")
        return default
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        problems.append(f"{name}: expected a whole number {rng}, got {raw!r}")
        return default
    return v


def _float(env, name, default, problems, lo=0.0, hi=86400.0):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        v = float(raw.strip())
    except ValueError:
        problems.append(f"{name}: expected a number of seconds, got {raw!r}")
        return default
    # an upper bound too: a wait of 1e308 s overflows threading's timeouts mid-run
    if not (v > lo) or v != v or v > hi:
        bound = "seconds >= 0" if lo < 0 else f"a number > {lo:g}"
        problems.append(f"{name}: expected {bound} and <= {hi:g}, got {raw!r}")
        return default
    return v


def _unknown(env, problems) -> None:
    """A misspelt variable would silently keep its default: refuse it."""
    import difflib
    known = set(ENV_DOC) | OTHER_VARS
    for name in sorted(env):
        if name.startswith("VERISEG_") and name not in known:
            near = difflib.get_close_matches(name, sorted(ENV_DOC), n=1, cutoff=0.7)
            hint = (f"did you mean {near[0]}?" if near
                    else "the flow's variables are listed in docs/dataflow.md")
            problems.append(f"{name}: unknown variable ({hint})")


def _folder(env, name, problems) -> None:
    """A folder the flow creates: its nearest existing ancestor must be a writable folder."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return
    p = Path(raw).expanduser().absolute()
    if p.exists():
        if not p.is_dir():
            problems.append(f"{name}: {raw!r} exists and is not a folder")
        return
    for a in p.parents:
        if a.exists():
            if not a.is_dir():
                problems.append(f"{name}: {raw!r} cannot be created: {str(a)!r} is not a folder")
            elif not os.access(a, os.W_OK | os.X_OK):
                problems.append(f"{name}: {raw!r} cannot be created: {str(a)!r} is not writable")
            return


def _scale(env, problems) -> float:
    raw = (env.get("VERISEG_VIDEO_SCALE") or "").strip()
    if not raw:
        return 1.0
    try:
        v = float(raw)
    except ValueError:
        v = -1.0
    if not 0 < v <= 1:
        problems.append(f"VERISEG_VIDEO_SCALE: expected a number in (0, 1], got {raw!r}")
        return 1.0
    return v


def _chain_id(env, problems) -> Optional[int]:
    raw = (env.get("VERISEG_CHAIN_ID") or "").strip()
    if not raw:
        return None
    try:
        v = int(raw, 0)
    except ValueError:
        v = 0
    if not 0 < v < 1 << 64:
        problems.append(f"VERISEG_CHAIN_ID: expected a chain id (a whole number > 0, decimal or "
                        f"0x hex), got {raw!r}")
        return None
    return v


def _web(env, problems) -> tuple[Optional[tuple[str, int]], Optional[str]]:
    """``VERISEG_WEB`` as (host, port) and its token; beyond loopback only with a token."""
    import ipaddress
    raw = (env.get("VERISEG_WEB") or "").strip()
    token = (env.get("VERISEG_WEB_TOKEN") or "").strip() or None
    if token is not None and len(token) < 16:
        problems.append("VERISEG_WEB_TOKEN: expected at least 16 characters (e.g. the output of "
                        "`openssl rand -hex 16`)")
        token = None
    if not raw or raw.lower() in ("0", "off"):
        return None, token
    host, _, port_s = raw.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_s)
    except ValueError:
        port = -1
    if not 0 < port < 65536 or not re.fullmatch(r"[A-Za-z0-9.:-]{1,253}", host):
        problems.append(f"VERISEG_WEB: expected [HOST:]PORT (e.g. 127.0.0.1:8080), got {raw!r}")
        return None, token
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and token is None:
        problems.append(f"VERISEG_WEB: {host!r} is reachable from other machines: set VERISEG_WEB_TOKEN "
                        "(16+ characters) or bind 127.0.0.1")
        return None, token
    return (host, port), token


def _batch(env, problems) -> int:
    raw = (env.get("VERISEG_BATCH") or "").strip().lower()
    if raw in ("", "auto"):
        return 0
    return _int(env, "VERISEG_BATCH", 0, problems, lo=1, hi=256)


def load_config(env: Optional[Mapping[str, str]] = None) -> Config:
    """Parse the ``VERISEG_*`` variables of ``env`` (default ``os.environ``)."""
    env = dict(os.environ if env is None else env)
    problems: list[str] = []

    raw_src = env.get("VERISEG_SOURCE", "").strip()
    if raw_src:
        sources = parse_sources(raw_src, problems)
    else:
        clip = default_sample_clip()
        if clip is None:
            problems.append(f"VERISEG_SOURCE: not set and no sample clip in {MODELS_DIR} "
                            "(expected models/sample.mp4 or another video file there)")
            sources = ()
        else:
            sources = (SourceSpec(stream_id_of(clip), "video", str(clip)),)

    raw_model = env.get("VERISEG_MODEL", "").strip()
    model_is_default = not raw_model
    model = raw_model or str(DEFAULT_MODEL)
    looks_like_path = (model_is_default or model.endswith(".vsb") or "/" in model
                       or os.sep in model or Path(model).expanduser().exists())
    if looks_like_path:
        p = Path(model).expanduser()
        if not p.is_file():
            problems.append(f"VERISEG_MODEL: blob file {model!r} does not exist"
                            + (" (the trained blob is committed as models/carla-enet.vsb)"
                               if model_is_default else ""))
        model = str(p.resolve()) if p.exists() else str(p)
    elif not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", model):
        problems.append(f"VERISEG_MODEL: expected a .vsb path or a deployment name "
                        f"(letters, digits, _ . : -), got {raw_model!r}")

    chain = env.get("VERISEG_CHAIN", "embedded").strip() or "embedded"
    if chain != "embedded" and not re.match(r"^https?://[^\s/]+", chain):
        problems.append(f"VERISEG_CHAIN: expected 'embedded' or an http(s):// JSON-RPC URL, got {chain!r}")

    home = Path(env.get("VERISEG_HOME", "").strip() or "~/.veriseg").expanduser()
    registry = env.get("VERISEG_REGISTRY", "").strip() or None
    if registry is not None and not re.fullmatch(r"0x[0-9a-fA-F]{40}", registry):
        problems.append(f"VERISEG_REGISTRY: expected a contract address 0x + 40 hex digits, got {registry!r}")
    chain_id = _chain_id(env, problems)

    out = Path(env.get("VERISEG_OUT", "").strip() or "out").expanduser()
    _folder(env, "VERISEG_OUT", problems)
    if chain == "embedded":
        _folder(env, "VERISEG_HOME", problems)
    for d in (env.get("VERISEG_MODEL_DIRS") or "").split(os.pathsep):
        if d.strip() and not Path(d.strip()).expanduser().is_dir():
            problems.append(f"VERISEG_MODEL_DIRS: {d.strip()!r} is not an existing folder "
                            f"(expected folders separated by '{os.pathsep}')")

    providers = (env.get("VERISEG_PROVIDERS", "auto").strip() or "auto").lower()
    if providers not in ("auto", "tensorrt", "cuda", "cpu"):
        problems.append(f"VERISEG_PROVIDERS: expected auto, tensorrt, cuda or cpu, got {providers!r}")

    mask_size = (env.get("VERISEG_MASK_SIZE", "model").strip() or "model").lower()
    if mask_size not in ("model", "frame"):
        problems.append(f"VERISEG_MASK_SIZE: expected model or frame, got {mask_size!r}")

    backend = (env.get("VERISEG_BACKEND", "auto").strip() or "auto").lower()
    if backend not in ("auto", "openvino", "onnxruntime"):
        problems.append(f"VERISEG_BACKEND: expected auto, openvino or onnxruntime, got {backend!r}")

    progress = (env.get("VERISEG_PROGRESS", "auto").strip() or "auto").lower()
    if progress in ("true", "yes", "on"):
        progress = "1"
    if progress in ("false", "no", "off"):
        progress = "0"
    if progress not in ("auto", "1", "0"):
        problems.append(f"VERISEG_PROGRESS: expected auto, 1 or 0, got {progress!r}")

    pre = (env.get("VERISEG_PREPROCESS", "auto").strip() or "auto").lower()
    if pre not in ("auto", "off", "on", "1", "0"):
        problems.append(f"VERISEG_PREPROCESS: expected auto or off, got {pre!r}")

    port = _int(env, "VERISEG_METRICS_PORT", None, problems, lo=0, hi=65535)
    web, web_token = _web(env, problems)
    dkey = (env.get("VERISEG_DECRYPT_KEY") or "").strip() or None
    if dkey is not None and not Path(dkey).expanduser().is_file():
        problems.append(f"VERISEG_DECRYPT_KEY: secret file {dkey!r} does not exist")
    _bool(env, "VERISEG_ORT_SPIN", False, problems)      # read where the session is built
    _int(env, "VERISEG_AUX_NICE", 0, problems, lo=0, hi=19)
    _unknown(env, problems)
    cfg = Config(
        sources=sources,
        model=model,
        model_is_path=looks_like_path,
        model_is_default=model_is_default,
        chain=chain,
        home=home,
        registry=registry,
        chain_id=chain_id,
        out=out,
        backend=backend,
        providers=providers,
        require_gpu=_bool(env, "VERISEG_REQUIRE_GPU", False, problems),
        threads=_int(env, "VERISEG_THREADS", 0, problems, lo=0, hi=1024),
        batch=_batch(env, problems),
        loop=_bool(env, "VERISEG_LOOP", False, problems),
        max_frames=_int(env, "VERISEG_MAX_FRAMES", None, problems, lo=1),
        queue=_int(env, "VERISEG_QUEUE", 8, problems, lo=1, hi=10000),
        pending=_int(env, "VERISEG_PENDING", 64, problems, lo=0, hi=100000),
        anchor_every=_int(env, "VERISEG_ANCHOR_EVERY", 100, problems, lo=0, hi=1_000_000),
        poll=_float(env, "VERISEG_POLL", 1.0, problems, hi=3600.0),
        masks=_bool(env, "VERISEG_MASKS", True, problems),
        mask_size=mask_size,
        video=_bool(env, "VERISEG_VIDEO", True, problems),
        jsonl=_bool(env, "VERISEG_JSONL", True, problems),
        metrics_port=port if port else None,
        web=web,
        web_token=web_token,
        progress=progress,
        preprocess=pre not in ("off", "0"),
        reconnect_max=_float(env, "VERISEG_RECONNECT_MAX", 30.0, problems),
        stall=_float(env, "VERISEG_STALL", 10.0, problems),
        decrypt_key_file=Path(dkey).expanduser() if dkey else None,
        video_scale=_scale(env, problems),
        max_pixels=_int(env, "VERISEG_MAX_PIXELS", 40_000_000, problems, lo=1, hi=1 << 30),
        status_max_age=_float(env, "VERISEG_STATUS_MAX_AGE", 0.0, problems, lo=-1e-9,
                              hi=30 * 86400.0)
        if (env.get("VERISEG_STATUS_MAX_AGE") or "").strip() not in ("", "0") else 0.0,
        extra={k: v for k, v in env.items() if k.startswith("VERISEG_")},
    )
    if problems:
        raise ConfigError(problems)
    return cfg
