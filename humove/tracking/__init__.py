"""Multi-person tracking over per-frame detections (ByteTrack via ultralytics, or a small IoU tracker), and the
main-person track: selection by count and area, interpolation, and the longest continuously visible span."""

from humove.tracking.base import Tracker, detection_rows
from humove.tracking.main_track import MainTrack, bridge_gaps, longest_span, main_track, pick_main_track

__all__ = ["MainTrack", "Tracker", "bridge_gaps", "detection_rows", "longest_span", "main_track", "pick_main_track"]
