"""What the benchmarks read from their environment: the product's variables are read by
``chain.config`` alone; these are the harness's own.

- the environment of a child flow: this process's without its ``VERISEG_*`` variables, so
  that a child's configuration is exactly what the benchmark sets;
- ``VERISEG_CARLA_DIR``: the CARLA frames (as for the test suite);
- ``SOAK_STOP_FILE``: the file whose creation ends the soak's flow process.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

from chain.config import PREFIX

__all__ = ["child_environment", "carla_dir_setting", "SOAK_STOP", "soak_stop_file"]

SOAK_STOP = "SOAK_STOP_FILE"


def child_environment(values: Optional[Mapping[str, str]] = None, *,
                      path_first: Optional[Path] = None) -> dict[str, str]:
    """This process's environment without ``VERISEG_*``, then ``values``; ``path_first`` goes
    in front of PYTHONPATH (the checkout a child imports)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    if path_first is not None:
        env["PYTHONPATH"] = str(path_first) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(values or {})
    return env


def carla_dir_setting() -> Optional[str]:
    return os.environ.get("VERISEG_CARLA_DIR") or None


def soak_stop_file() -> str:
    return os.environ.get(SOAK_STOP) or ""
