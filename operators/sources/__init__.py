"""The source stage: every configured stream decoded in its own thread.

| module | what |
|---|---|
| ``frame_source`` | ``read_frames`` operator, ``FrameSource`` (Bytewax input, one partition per stream) |
| ``partition`` | ``StreamPartition``: decoder thread, bounded buffer, pause, reconnects |
| ``readers`` | ``open_reader(spec)``: the reader of each kind |
| ``video`` / ``image_list`` / ``gst`` | video files / image folders and CSV lists / GStreamer and RTSP |
| ``image_file`` | one image decoded safely (declared size checked first) |
| ``errors`` | ``BadFrame``: a frame skipped, counted and named |
"""
from .frame_source import FrameSource, read_frames
from .gst import GstReader, check_pipeline, gst_available
from .image_list import ImageListReader
from .readers import open_reader
from .video import VideoReader

__all__ = ["read_frames", "FrameSource", "open_reader", "VideoReader", "ImageListReader",
           "GstReader", "gst_available", "check_pipeline"]
