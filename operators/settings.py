"""Every ``VERISEG_*`` variable of the flows, declared once: type, default, bounds, meaning.

One pydantic-settings field per variable gives its parsing and validation here, the
one-line messages (:mod:`operators.config` words them from these declarations), the
did-you-mean for unknown names and the reference tables in README.md and docs/dataflow.md
(``python -m operators.config --markdown``).  ``shown`` is the default as the tables print
it; ``main`` puts the variable in README's short table; ``expect`` words a value's shape
where the type and bounds do not say it.
"""
from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from model_store.graph_limits import MAX_INITIALIZER_BYTES, MAX_INPUT_BYTES, MAX_TENSOR_ELEMENTS

from .keep_frames import KeepFrames
from .source_spec import SourceSpec, parse_sources

__all__ = ["FlowSettings", "PREFIX", "looks_like_path", "refuse"]

PREFIX = "VERISEG_"
_HOST = re.compile(r"[A-Za-z0-9.:-]{1,253}")


def var(default: Any = None, doc: str = "", *, shown: Optional[str] = None,
        expect: Optional[str] = None, main: bool = False, **kw) -> Any:
    """One variable's declaration: ``Field`` with the table's extras."""
    extra = {k: v for k, v in (("shown", shown), ("expect", expect), ("main", main)) if v}
    return Field(default, description=doc, json_schema_extra=extra or None, **kw)


def refuse(message: str) -> PydanticCustomError:
    """A value refused with our own words (the text after ``VARIABLE: ``)."""
    return PydanticCustomError("veriseg", message)


def looks_like_path(model: str) -> bool:
    """A blob path rather than a deployment name on the registry."""
    return model.endswith(".vsb") or "/" in model or os.sep in model or Path(model).expanduser().exists()


def _folder(raw: Any) -> Path:
    """A folder the flow creates: its nearest existing ancestor must be a writable folder."""
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


def _lower(v: Any) -> Any:
    return v.strip().lower() if isinstance(v, str) else v


class FlowSettings(BaseSettings):
    """The flows' configuration.  Declaration order is the tables' order, and a field may
    read the ones declared before it (``home`` reads ``chain``, ``web`` reads ``web_token``)."""

    # defaults are not validated: an unset VERISEG_HOME is not checked, nor the committed
    # blob and clip (operators.config says when those are missing)
    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, protected_namespaces=(),
                                      validate_default=False,
                                      arbitrary_types_allowed=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings: PydanticBaseSettingsSource,
                                   env_settings, dotenv_settings, file_secret_settings):
        """Only what :func:`operators.config.load_config` passes, which reads the environment
        it is given through pydantic-settings' env source; never also ``os.environ``."""
        return (init_settings,)

    source: Annotated[tuple[SourceSpec, ...], NoDecode] = var(
        (), "frames to score: PATH (video file) | dir:PATH | csv:PATH | gst:PIPELINE | rtsp://URL | "
        "/dev/videoN; several separated by ';', each optionally prefixed 'ID@' for its stream id "
        "(its folder under VERISEG_OUT: letters, digits, _ . -, not only dots; default: the "
        "file's name, or the kind when that is only dots)",
        shown="the sample clip in models/", main=True)
    model: str = var("", "blob path (.vsb) or a deployment name on the registry",
                     shown="models/carla-enet.vsb", main=True)
    decrypt_key: Optional[Path] = var(
        None, "secret file (32 bytes or 64 hex characters) that decrypts an encrypted blob body",
        shown="—", main=True)
    chain: str = var("embedded", "embedded | http(s):// JSON-RPC URL of the registry's chain "
                     "(with VERISEG_REGISTRY and VERISEG_KEYFILE)", main=True,
                     pattern=r"^(?:embedded$|https?://[^\s/]+)",
                     expect="'embedded' or an http(s):// JSON-RPC URL")
    home: Path = var(Path("~/.veriseg").expanduser(),
                     "state folder of the embedded chain", shown="~/.veriseg", main=True)
    registry: Optional[str] = var(None, "ModelRegistry contract address 0x... (needed with a "
                                  "JSON-RPC URL)", shown="the one the chain knows",
                                  pattern=r"^0x[0-9a-fA-F]{40}$",
                                  expect="a contract address 0x + 40 hex digits")
    chain_id: Optional[int] = var(None, "the chain id the registry must be on, decimal or 0x hex "
                                  "(passed to chain.connect)", shown="the one pinned at first use",
                                  gt=0, lt=1 << 64,
                                  expect="a chain id (a whole number > 0, decimal or 0x hex)")
    out: Path = var(Path("out"), "output folder", shown="./out", main=True)
    backend: Literal["auto", "openvino", "onnxruntime"] = var(
        "auto", "the runtime that scores (operators/backends): auto is ONNX Runtime when one of its "
        "NVIDIA providers loads, else OpenVINO on the CPU where installed, else ONNX Runtime CPU; "
        "logged with the reason. Every backend compiles the verified bytes in memory; OpenVINO's "
        "model cache is off (it would load a file by graph hash, unchecked)", main=True)
    providers: Literal["auto", "tensorrt", "cuda", "cpu"] = var(
        "auto", "ONNX Runtime providers (auto: TensorRT > CUDA > CPU, GPU ones only when an NVIDIA "
        "driver loads); TensorRT engines are cached per blob key in VERISEG_HOME/trt-cache/<key>",
        main=True)
    require_gpu: bool = var(False, "1: refuse to run unless a GPU provider actually loaded",
                            shown="0", main=True)
    openvino_hint: Literal["throughput", "latency"] = var(
        "throughput", "OpenVINO's performance hint: throughput (a stream per core pair, the most "
        "frames a second on a busy CPU) or latency (one stream on every core, the shortest wait "
        "a frame); either way two or more runs are in flight, in frame order (bench perf)")
    openvino_device: str = var(
        "auto", "the OpenVINO device: auto (a discrete, then an integrated Intel GPU when OpenVINO "
        "lists one, else the CPU; the next when one refuses the model), or CPU, GPU, GPU.1, NPU, "
        "HETERO:GPU,CPU ... used alone", pattern=r"^(?i:auto|[a-z]+(\.[0-9]+)?(:[a-z0-9.,]+)?)$",
        expect="auto, or an OpenVINO device name (CPU, GPU, GPU.1, NPU, HETERO:GPU,CPU)")
    precision: Literal["card", "fp32", "bf16", "fp16"] = var(
        "card", "arithmetic precision every backend runs (operators/backends/precision.py): card "
        "(the precision of the model's float weights, fp32 for the shipped blobs; the same class "
        "maps on every CPU), or fp32, bf16, fp16: faster where the device computes it natively, "
        "refused with one line where it does not. Stated in every results line's profile",
        main=True)
    threads: int = var(0, "ONNX Runtime intra-op threads, OpenVINO inference threads (0: the CPU "
                       "cores available to the process)", ge=0, le=1024)
    batch: Optional[int] = var(None, "largest micro-batch for file replay (auto: 4 on a GPU "
                               "provider, 1 on CPU where batching measured slower; live sources "
                               "always 1)", shown="auto", ge=1, le=256)
    loop: bool = var(False, "1: loop file sources forever", shown="0")
    max_frames: Optional[int] = var(None, "stop each stream after N frames", shown="no limit", ge=1)
    queue: int = var(8, "decoded frames buffered per source", ge=1, le=10000)
    pending: int = var(64, "frames of a live stream that may wait for a valid model before the "
                       "oldest are dropped (file replay pauses instead)", ge=0, le=100_000)
    anchor_every: int = var(100, "anchor a Merkle root of the results every N frames per stream "
                            "(0: off); a batch also closes when the model key changes",
                            main=True, ge=0, le=1_000_000)
    poll: float = var(1.0, "seconds between registry event polls", gt=0, le=3600,
                      allow_inf_nan=False)
    pending_deploy_max_s: float = var(
        300.0, "seconds the superseded model keeps scoring while a newer deploy waits for its "
        "blob; then it stops (frames wait as with no valid model) until the blob arrives",
        ge=0, le=30 * 86400, allow_inf_nan=False)
    status_max_age: float = var(0.0, "seconds a model status verified online stays usable when "
                                "the registry is unreachable at start (0: refuse to start)",
                                main=True, ge=0, le=30 * 86400, allow_inf_nan=False)
    masks: bool = var(True, "1/0: write class-map PNGs", shown="1", main=True)
    mask_size: Literal["model", "frame"] = var(
        "model", "class-map PNGs at the model's picture size (model: the cheapest) or at the "
        "source frame's own size (frame: as dataset labels are)", main=True)
    keep_frames: Annotated[KeepFrames, NoDecode] = var(
        KeepFrames(), "keep decoded frames losslessly (<stream>/frames/<seq>.<order>.vsf) so anyone can "
        "re-run the model on them (anchor-verify --rescore): off | all | every:N | budget:MB "
        "(the oldest kept frames of a stream are deleted past MB) | every:N,budget:MB",
        shown="off", main=True)
    video: bool = var(True, "1/0: write the colour overlay video", shown="1", main=True)
    jsonl: bool = var(True, "1/0: write per-frame JSON lines", shown="1", main=True)
    video_scale: float = var(1.0, "size of the overlay video relative to the model input "
                             "(0.5 cuts its encoding cost ~3x)", gt=0, le=1, allow_inf_nan=False,
                             expect="a number in (0, 1]")
    metrics_port: Optional[int] = var(None, "serve Prometheus metrics on "
                                      "http://VERISEG_METRICS_HOST:PORT/metrics (0: off); "
                                      "out/metrics.prom is always written", shown="off",
                                      main=True, ge=0, le=65535)
    metrics_host: str = var("127.0.0.1", "address the metrics port binds (0.0.0.0: every "
                            "interface, for a scraper on another machine)",
                            pattern=r"^[A-Za-z0-9.:-]{1,253}$",
                            expect="a host name or IP address")
    metrics_linger_s: float = var(20.0, "seconds the metrics port stays up after the flow "
                                  "ends, so a scraper reads the final counts (0: close at once); "
                                  "keep it above the scrape interval", main=True, ge=0,
                                  le=3600, allow_inf_nan=False)
    web_token: Optional[str] = var(None, "token a viewer must present (at least 16 characters); "
                                   "required when VERISEG_WEB binds beyond loopback", shown="—")
    web: Annotated[Optional[tuple[str, int]], NoDecode] = var(
        None, "serve the live view on [HOST:]PORT (HOST defaults to 127.0.0.1; a non-loopback "
        "HOST needs VERISEG_WEB_TOKEN)", shown="off", main=True)
    progress: Literal["auto", "1", "0"] = var("auto", "progress line on stderr (auto: a terminal "
                                              "and file replay)")
    preprocess: Literal["auto", "off"] = var("auto", "resize/colour-convert frames to the model "
                                             "input (off: frames must already match)")
    reconnect_max: float = var(30.0, "largest reconnect backoff for live sources, seconds",
                               gt=0, le=86400, allow_inf_nan=False)
    stall: float = var(10.0, "reconnect a live source that sent no frame for this many seconds",
                       gt=0, le=86400, allow_inf_nan=False)
    model_dirs: str = var("", f"extra folders ('{os.pathsep}'-separated) searched for the blob "
                          "of a deployed key", shown="—")
    ort_spin: bool = var(False, "1: let ONNX Runtime threads spin-wait (0: they would burn the "
                         "CPU the decoder and writers need)", shown="0")
    aux_nice: int = var(0, "niceness added to the decoder and writer threads so they run in the "
                        "gaps of inference", ge=0, le=19)
    max_pixels: int = var(40_000_000, "largest frame (width x height) an image file may declare; "
                          "larger ones are skipped, counted and named before decoding (8K is "
                          "33 MP)", ge=1, le=1 << 30)
    max_input_bytes: int = var(MAX_INPUT_BYTES, "largest input tensor a model may make of one "
                               "frame (batch x height x width x 3 x element size); a larger "
                               "model is refused at load, named", shown="268435456 (256 MiB)",
                               ge=1, le=1 << 40)
    max_initializer_bytes: int = var(MAX_INITIALIZER_BYTES, "largest total of the tensors a "
                                     "model stores (initializers, Constant nodes); a larger "
                                     "model is refused at load, named",
                                     shown="1073741824 (1 GiB)", ge=1, le=1 << 40)
    max_tensor_elements: int = var(MAX_TENSOR_ELEMENTS, "largest tensor a model may shape from "
                                   "a constant (ConstantOfShape, Expand, Reshape, Tile, Resize, "
                                   "Upsample), in elements; a larger one refuses the model at "
                                   "load, named", shown="268435456", ge=1, le=1 << 50)
    max_arena_bytes: int = var(4 << 30, "cap of ONNX Runtime's CPU memory arena, shared by the "
                               "flow's sessions: a run that needs more fails and its frames are "
                               "counted (0: no cap); OpenVINO has no such cap",
                               shown="4294967296 (4 GiB)", ge=0, le=1 << 44)

    # -- the values whose shape a type cannot say --------------------------------------
    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        problems: list[str] = []
        specs = parse_sources(v, problems)
        if problems:
            raise refuse("\n".join(p.removeprefix("VERISEG_SOURCE: ") for p in problems))
        return specs

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if looks_like_path(v):
            p = Path(v).expanduser()
            if not p.is_file():
                raise refuse(f"blob file {v!r} does not exist")
            return str(p.resolve())
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", v):
            raise refuse(f"expected a .vsb path or a deployment name (letters, digits, _ . : -), "
                         f"got {v!r}")
        return v

    @field_validator("decrypt_key", mode="before")
    @classmethod
    def _decrypt_key(cls, v: Any) -> Any:
        if v is not None and not Path(str(v)).expanduser().is_file():
            raise refuse(f"secret file {str(v)!r} does not exist")
        return None if v is None else Path(str(v)).expanduser()

    @field_validator("home", mode="before")
    @classmethod
    def _home(cls, v: Any, info: ValidationInfo) -> Path:
        # only the embedded chain keeps its state there
        return _folder(v) if info.data.get("chain") == "embedded" else Path(str(v)).expanduser()

    @field_validator("out", mode="before")
    @classmethod
    def _out(cls, v: Any) -> Path:
        return _folder(v)

    @field_validator("chain_id", mode="before")
    @classmethod
    def _chain_id(cls, v: Any) -> Any:
        try:
            return int(v, 0) if isinstance(v, str) else v
        except ValueError:
            return v

    @field_validator("backend", "providers", "mask_size", "openvino_hint", "precision", mode="before")
    @classmethod
    def _choice(cls, v: Any) -> Any:
        return _lower(v)

    @field_validator("openvino_device", mode="before")
    @classmethod
    def _device(cls, v: Any) -> Any:
        """auto in any case is ours; a device name is OpenVINO's, upper case (``AUTO:GPU,CPU``
        is OpenVINO's own AUTO device)."""
        if not isinstance(v, str):
            return v
        v = v.strip()
        return "auto" if v.lower() in ("auto", "") else v.upper()

    @field_validator("progress", mode="before")
    @classmethod
    def _progress(cls, v: Any) -> Any:
        v = _lower(v)
        return {"true": "1", "yes": "1", "on": "1", "false": "0", "no": "0", "off": "0"}.get(v, v)

    @field_validator("preprocess", mode="before")
    @classmethod
    def _preprocess(cls, v: Any) -> Any:
        v = _lower(v)
        return {"on": "auto", "1": "auto", "0": "off"}.get(v, v)

    @field_validator("batch", mode="before")
    @classmethod
    def _batch(cls, v: Any) -> Any:
        return None if _lower(v) == "auto" else v

    @field_validator("keep_frames", mode="before")
    @classmethod
    def _keep_frames(cls, v: Any) -> Any:
        if isinstance(v, KeepFrames):
            return v
        try:
            return KeepFrames.parse(v)
        except ValueError as e:
            raise refuse(str(e)) from None

    @field_validator("web_token", mode="before")
    @classmethod
    def _web_token(cls, v: Any) -> Any:
        if v is not None and len(str(v)) < 16:   # the token itself is never echoed
            raise refuse("expected at least 16 characters (e.g. the output of `openssl rand -hex 16`)")
        return v

    @field_validator("web", mode="before")
    @classmethod
    def _web(cls, v: Any, info: ValidationInfo) -> Any:
        if not isinstance(v, str):
            return v
        if v.lower() in ("", "0", "off"):
            return None
        host, _, port_s = v.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        port = int(port_s) if port_s.isdigit() else -1
        if not 0 < port < 65536 or not _HOST.fullmatch(host):
            raise refuse(f"expected [HOST:]PORT (e.g. 127.0.0.1:8080), got {v!r}")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback and info.data.get("web_token") is None:
            raise refuse(f"{host!r} is reachable from other machines: set VERISEG_WEB_TOKEN "
                         "(16+ characters) or bind 127.0.0.1")
        return host, port

    @field_validator("model_dirs")
    @classmethod
    def _model_dirs(cls, v: str) -> str:
        for d in v.split(os.pathsep):
            if d.strip() and not Path(d.strip()).expanduser().is_dir():
                raise refuse(f"{d.strip()!r} is not an existing folder (expected folders "
                             f"separated by '{os.pathsep}')")
        return v
