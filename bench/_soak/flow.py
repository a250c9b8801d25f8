"""The soak's flow process: ``dataflows.segment``'s build, whose sources end (as a file ends)
once the script creates the stop file named in ``SOAK_STOP_FILE``."""
from __future__ import annotations

import os

from bench._environment import soak_stop_file

STREAM = "soak"


class _StopAware:
    """A frame reader that ends (returns None, as at the end of a file) once the stop file
    exists; everything else is the wrapped reader's."""

    def __init__(self, inner, stop_file: str):
        self.inner, self.stop_file = inner, stop_file

    def __getattr__(self, k):
        return getattr(self.inner, k)

    def read(self, *a):
        if os.path.exists(self.stop_file):
            return None
        return self.inner.read(*a)


def soak_flow():
    """The flow ``dataflows.segment`` builds, whose sources end when the stop file exists."""
    from dataflows.segment import build_flow
    from operators.startup import flow_from_env
    from operators.sources import open_reader
    stop_file = soak_stop_file()

    def factory(spec, **kw):
        r = open_reader(spec, **kw)
        return _StopAware(r, stop_file) if stop_file else r
    return flow_from_env(lambda: build_flow(reader_factory=factory))
