"""The flow's configuration: :class:`Config`, the ``VERISEG_*`` variables of the flows.

``Config`` is the registry's :class:`chain.config.ChainConfig` plus the flow's own
variables, one pydantic-settings field each (type, default, bounds, meaning), frozen: the
flow receives this object.  :func:`load_config` reads it from the environment; every bad
value gives one line naming the variable, what was expected and what was found, all in one
:class:`ConfigError`, and a misspelt ``VERISEG_*`` name is refused with a did-you-mean.

Adding a variable is one field below (or in ``chain.config`` when the registry needs it)
and its test; ``python -m operators.config --write`` regenerates the tables in README.md
and docs/dataflow.md, which ``tests/operators/test_config_docs.py`` keeps in step.
"""
from __future__ import annotations

import difflib
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional

from pydantic import ValidationInfo, field_validator
from pydantic_settings import NoDecode

from chain.config import PREFIX, ChainConfig, ConfigError, internal, refuse, var, writable_folder
from model_store.graph_limits import MAX_INITIALIZER_BYTES, MAX_INPUT_BYTES, MAX_TENSOR_ELEMENTS, GraphLimits

from .keep_frames import KeepFrames
from .source_spec import VIDEO_EXTS, SourceSpec, parse_sources, stream_id_of

__all__ = ["Config", "ConfigError", "SourceSpec", "load_config", "parse_sources", "REPO_ROOT",
           "DEFAULT_MODEL", "default_sample_clip", "ENV_DOC", "OTHER_VARS", "looks_like_path"]

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"
DEFAULT_MODEL = MODELS_DIR / "carla-enet.vsb"

#: read by the test suite, not by the flows (the flow refuses any other unknown name)
OTHER_VARS = frozenset({"VERISEG_CARLA_DIR", "VERISEG_GST_CHILD"})

_HOST = re.compile(r"[A-Za-z0-9.:-]{1,253}")


def looks_like_path(model: str) -> bool:
    """A blob path rather than a deployment name on the registry."""
    return model.endswith(".vsb") or "/" in model or os.sep in model or Path(model).expanduser().exists()


def default_sample_clip() -> Optional[Path]:
    """The sample clip committed in models/ (sample.* first, then any video file)."""
    if not MODELS_DIR.is_dir():
        return None
    vids = sorted(p for p in MODELS_DIR.iterdir() if p.suffix.lower() in VIDEO_EXTS and p.is_file())
    named = [p for p in vids if p.stem.lower().startswith("sample")]
    return (named or vids or [None])[0]


def _sample_source() -> tuple[SourceSpec, ...]:
    clip = default_sample_clip()
    return () if clip is None else (SourceSpec(stream_id_of(clip), "video", str(clip)),)


def _lower(v: Any) -> Any:
    return v.strip().lower() if isinstance(v, str) else v


class Config(ChainConfig):
    """The flow's configuration.  Declaration order is the tables' order (the registry's
    variables first), and a field may read the ones declared before it (``web`` reads
    ``web_token``)."""

    source: Annotated[tuple[SourceSpec, ...], NoDecode] = var(
        doc="frames to score: PATH (video file) | dir:PATH | csv:PATH | gst:PIPELINE | rtsp://URL | "
        "/dev/videoN; several separated by ';', each optionally prefixed 'ID@' for its stream id "
        "(its folder under VERISEG_OUT: letters, digits, _ . -, not only dots; default: the "
        "file's name, or the kind when that is only dots)",
        default_factory=_sample_source, shown="the sample clip in models/", main=True)
    model: str = var(doc="blob path (.vsb) or a deployment name on the registry",
                     default_factory=lambda: str(DEFAULT_MODEL),
                     shown=DEFAULT_MODEL.relative_to(REPO_ROOT).as_posix(), main=True)
    decrypt_key: Optional[Path] = var(
        None, "secret file (32 bytes or 64 hex characters) that decrypts an encrypted blob body",
        shown="—", main=True)
    out: Path = var(Path("out"), "output folder", shown="./out", main=True)
    backend: Literal["auto", "openvino", "onnxruntime"] = var(
        "auto", "the runtime that scores (operators/backends): auto is ONNX Runtime when one of its "
        "NVIDIA providers loads, else OpenVINO on the CPU where installed, else ONNX Runtime CPU; "
        "logged with the reason. Every backend compiles the verified bytes in memory; OpenVINO's "
        "model cache is off (it would load a file by graph hash, unchecked), and OpenVINO refuses "
        "a graph that computes integers from the frame (it saturates and narrows them where "
        "ONNX does not): auto scores such a model on ONNX Runtime", main=True)
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
    batch: Optional[int] = var(None, "most frames one run scores, of one replayed file or of "
                               "several streams together (auto: 8 on an NVIDIA GPU provider, 1 on "
                               "the CPU, where a run of several frames is no faster a frame); a "
                               "live stream gives one frame a run", shown="auto", ge=1, le=256)
    batch_wait_ms: float = var(10.0, "longest the first frame of a run waits for the frames of "
                               "other streams to join it (only with VERISEG_BATCH above 1; a run "
                               "starts sooner once full)", ge=0, le=1000, allow_inf_nan=False,
                               expect="a number of milliseconds in 0..1000")
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

    frame_digest: bool = internal(True, "v3 leaves bind each frame's digest (off only in the "
                                  "frame_proof benchmark)")
    process_id: Optional[str] = internal(None, "Bytewax's BYTEWAX_PROCESS_ID: each process of a "
                                         "cluster run writes its own summary and metrics file")

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

    @field_validator("out", mode="before")
    @classmethod
    def _out(cls, v: Any) -> Path:
        return writable_folder(v)

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

    @field_validator("metrics_port")
    @classmethod
    def _metrics_port(cls, v: Optional[int]) -> Optional[int]:
        return v or None   # 0: off

    @property
    def model_is_default(self) -> bool:
        """VERISEG_MODEL unset: the committed blob."""
        return "model" not in self.model_fields_set

    @property
    def model_is_path(self) -> bool:
        return self.model_is_default or looks_like_path(self.model)

    @property
    def graph_limits(self) -> GraphLimits:
        """The bounds a model's graph is checked against at load (VERISEG_MAX_*)."""
        return GraphLimits(self.max_input_bytes, self.max_initializer_bytes, self.max_tensor_elements)

    @property
    def stream_ids(self) -> tuple[str, ...]:
        return tuple(s.stream_id for s in self.source)

    @classmethod
    def _parsed(cls, env: dict[str, str]) -> "Config":
        problems = _unknown(env)
        try:
            cfg = super()._parsed(env)
        except ConfigError as e:
            raise ConfigError(problems + e.problems) from None
        problems += cfg._missing_defaults()
        if problems:
            raise ConfigError(problems)
        return cfg.model_copy(update={"process_id": env.get("BYTEWAX_PROCESS_ID") or None})

    def _missing_defaults(self) -> list[str]:
        """The committed sample clip and blob stand in for VERISEG_SOURCE / VERISEG_MODEL."""
        problems = []
        if "source" not in self.model_fields_set and not self.source:
            problems.append(f"VERISEG_SOURCE: not set and no sample clip in {MODELS_DIR} "
                            "(expected models/sample.mp4 or another video file there)")
        if self.model_is_default and not DEFAULT_MODEL.is_file():
            problems.append(f"VERISEG_MODEL: blob file {self.model!r} does not exist (the trained "
                            f"blob is committed as models/{DEFAULT_MODEL.name})")
        return problems


#: variable -> one-line description, from the declarations
ENV_DOC: dict[str, str] = {name: f.description or "" for name, f in Config.variables().items()}


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


def load_config(env: Optional[Mapping[str, str]] = None, *,
                defaults: Optional[Mapping[str, str]] = None) -> Config:
    """The flow's configuration from ``env`` (default: the process environment); a flow
    with other defaults passes them as ``defaults`` (variable -> value; what ``env`` sets
    wins).  Raises ConfigError."""
    return Config.from_env(env, defaults=defaults)


if __name__ == "__main__":
    from .config_doc import main
    raise SystemExit(main())
