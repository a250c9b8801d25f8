"""Facts about the machine a benchmark ran on, stored beside every result."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

RESULTS = Path(__file__).parent / "results"


def info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    flags: list = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not flags:
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                # int8 pays only with VNNI / AMX (69-82 vs 52-58 FPS on a CPU with AVX512-VNNI)
                have = set(line.split(":", 1)[1].split())
                flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in have]
                break
    except OSError:
        pass
    versions = {}
    for mod in ("numpy", "onnxruntime", "openvino", "nncf", "torch", "bytewax", "zstandard", "blake3", "web3"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # absent or without __version__: leave it out
            pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_flags": flags,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def save(name: str, results: Any, folder: Optional[str] = None) -> Path:
    """``results`` with the machine's facts in ``folder`` (default bench/results)/``name``.json."""
    folder = Path(folder) if folder else RESULTS
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"machine": info(), "results": results}, indent=2) + "\n")
    return path


def busy() -> list[str]:
    """Other processes using the CPU right now (name and %CPU), e.g. a training run."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu"], capture_output=True,
                             text=True, timeout=5).stdout.splitlines()[1:]
    except (OSError, subprocess.SubprocessError):
        return []
    me = {os.getpid()}
    res = []
    for line in out[:8]:
        parts = line.split(None, 2)
        if len(parts) == 3 and int(parts[0]) not in me and float(parts[1]) >= 20:
            res.append(f"{parts[1]}% {parts[2][:90]}")
    return res


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server a benchmark starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
