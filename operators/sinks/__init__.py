"""The sink stage: every stream's masks, results lines, overlay video and anchor batches,
and the flow's metrics and summary.

| module | what |
|---|---|
| ``result_sink`` | ``write_results`` operator, ``ResultSink`` (one partition per stream) |
| ``partition`` | ``ResultPartition``: the writer thread of one stream (mask, line, leaf) |
| ``overlay`` | ``OverlayVideo``, the class colours |
| ``mjpeg_avi`` | ``MjpegAvi``: the overlay's MJPG AVI file, frames encoded by libjpeg-turbo |
| ``anchors`` | ``AnchorSender`` (in order, retried), batches left unsent at the last run |
| ``metrics`` | ``metrics.prom`` (and HTTP), progress line, ``summary.json`` |
"""
from .anchors import AnchorSender
from .metrics import MetricsPublisher, process_suffix, write_summary
from .overlay import ClassColours, classes_of
from .result_sink import ResultSink, result_sink, write_results

__all__ = ["write_results", "result_sink", "ResultSink", "MetricsPublisher", "AnchorSender",
           "ClassColours", "classes_of", "process_suffix", "write_summary"]
