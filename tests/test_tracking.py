"""Tracking and the main-person track: ByteTrack identities, the IoU tracker, main-track choice, interpolation,
gap bridging and the longest visible span."""

import os
import tempfile

import numpy as np

from humove.detection.base import FrameDetections
from humove.tracking.bytetrack import ByteTrackTracker
from humove.tracking.iou import IouTracker
from humove.tracking.main_track import bridge_gaps, fill_boxes, longest_span, main_track, pick_main_track

# ultralytics (ByteTrack) writes a settings file on import: keep it out of the home folder
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="humove-yolo-"))


def crossing_people(frames: int = 40):
    """Two people walking past each other: A left→right (taller), B right→left, boxes overlapping mid-way."""
    detections = []
    for t in range(frames):
        a = [20 + 6 * t, 50, 80 + 6 * t, 210]
        b = [260 - 6 * t, 60, 315 - 6 * t, 200]
        order = [1, 0] if t % 2 else [0, 1]  # detector order must not matter
        boxes = np.array([[a, b][i] for i in order], np.float32)
        scores = np.array([[0.9, 0.85][i] for i in order], np.float32)
        detections.append(FrameDetections(boxes, scores))
    return detections


def identities(rows: np.ndarray) -> dict[str, set[int]]:
    """Track ids given to person A (its box's left edge moves right) and B, from the boxes' heights."""
    heights = rows[:, 5] - rows[:, 3]
    return {"A": set(rows[heights > 150, 1].astype(int)), "B": set(rows[heights <= 150, 1].astype(int))}


def test_bytetrack_keeps_identities_of_two_crossing_people():
    detections = crossing_people()
    rows = ByteTrackTracker().track(list(range(len(detections))), detections, frame_rate=16)
    ids = identities(rows)
    assert len(ids["A"]) == 1 and len(ids["B"]) == 1 and ids["A"] != ids["B"], ids
    assert len(rows) >= 2 * (len(detections) - 2)  # ByteTrack confirms a new track on its second frame
    # stored boxes are the detector's, not the Kalman estimates
    first_a = rows[(rows[:, 1] == min(ids["A"])) & (rows[:, 0] == 5)]
    np.testing.assert_allclose(first_a[0, 2:6], [50, 50, 110, 210])


def test_iou_tracker_links_boxes_and_starts_new_tracks():
    boxes = [np.array([[10 + 2 * t, 10, 50 + 2 * t, 90]], np.float32) for t in range(5)]
    detections = [FrameDetections(b, np.ones(1, np.float32)) for b in boxes]
    detections.append(FrameDetections(np.array([[200, 10, 240, 90]], np.float32), np.ones(1, np.float32)))
    rows = IouTracker().track(list(range(6)), detections, frame_rate=10)
    assert rows[:5, 1].tolist() == [1] * 5 and rows[5, 1] == 2  # far away: a new person


def test_iou_tracker_keeps_a_walking_person_from_a_lost_track_ahead_of_them():
    """Two people side by side (the demo's two walkers): B is seen once just ahead of A, then lost. When A walks
    into where B was last seen, that box overlaps A's next box more than A's own last box does; A must keep its
    identity (tracks seen on the last step are matched first, lost ones only to what is left, as ByteTrack does)."""
    a = [np.array([[10 * t, 0, 40 + 10 * t, 100]], np.float32) for t in range(6)]  # IoU 0.6 step to step
    b = np.array([[45, 0, 85, 100]], np.float32)
    detections = [FrameDetections(np.concatenate([a[0], b]), np.ones(2, np.float32))]
    detections += [FrameDetections(box, np.ones(1, np.float32)) for box in a[1:]]
    rows = IouTracker().track(list(range(6)), detections, frame_rate=10)
    assert rows[rows[:, 2] != 45, 1].tolist() == [1] * 6  # at step 4, A's box overlaps B's last one by 0.78


def test_main_track_is_the_one_with_most_frames_times_area():
    rows = np.array([
        [0, 1, 0, 0, 10, 10, 0.9], [1, 1, 0, 0, 10, 10, 0.9], [2, 1, 0, 0, 10, 10, 0.9],  # 3 × 100
        [0, 2, 0, 0, 15, 15, 0.9],                                                          # 1 × 225
    ], np.float32)
    assert pick_main_track(rows) == 1
    assert pick_main_track(rows[:0]) == -1


def test_main_track_interpolates_between_sampled_detections():
    rows = np.array([[0, 1, 0, 0, 10, 20, 0.8], [2, 1, 4, 0, 14, 20, 0.6], [6, 1, 0, 0, 10, 20, 0.9]], np.float32)
    track = main_track(rows, 1, num_frames=8, sampled=[0, 2, 4, 6])
    np.testing.assert_allclose(track.box[1], [2, 0, 12, 20])
    assert track.visible.tolist() == [True, True, True, False, False, False, True, True]  # 4 unseen: a hole
    assert np.isnan(track.box[4]).all() and track.score[1] == np.float32(0.6)


def test_trimming_bridges_small_gaps_and_keeps_the_longest_span():
    visible = np.array([1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1], bool)
    bridged = bridge_gaps(visible, max_gap=2)
    assert longest_span(bridged) == (0, 9)  # the 2-frame gap is bridged, the 5-frame one is not
    assert longest_span(bridge_gaps(visible, max_gap=0)) == (14, 21)
    assert longest_span(np.zeros(5, bool)) == (0, 0)
    assert not bridge_gaps(np.array([0, 0, 1, 1], bool), max_gap=5)[0]  # edges are never filled


def test_fill_boxes_interpolates_interior_holes():
    box = np.array([[0, 0, 10, 10], [np.nan] * 4, [4, 0, 14, 10]], np.float32)
    np.testing.assert_allclose(fill_boxes(box)[1], [2, 0, 12, 10])


def test_bytetrack_thresholds_come_from_the_person_config():
    import pytest
    from pydantic import ValidationError

    from humove.stages.person import PersonConfig, make_tracker

    default = make_tracker(PersonConfig())
    assert default.settings == {"track_high_thresh": 0.25, "track_low_thresh": 0.1, "new_track_thresh": 0.25,
                                "match_thresh": 0.8, "fuse_score": True}  # ultralytics' bytetrack.yaml values
    strict = make_tracker(PersonConfig(track_high_thresh=0.3, track_low_thresh=0.2, new_track_thresh=0.7,
                                       match_thresh=0.5, track_buffer_s=2.0))
    assert strict.settings["track_low_thresh"] == 0.2 and strict.settings["match_thresh"] == 0.5
    assert strict.buffer_s == 2.0
    # One person seen at score 0.5 on every frame: tracked by default, never started when new tracks need 0.7.
    walking = [FrameDetections(np.array([[20 + 2 * t, 50, 80 + 2 * t, 210]], np.float32), np.array([0.5], np.float32))
               for t in range(10)]
    assert len(default.track(list(range(10)), walking, frame_rate=16)) >= 9
    assert len(strict.track(list(range(10)), walking, frame_rate=16)) == 0
    with pytest.raises(ValidationError, match="track_low_thresh 0.5 is above track_high_thresh 0.3"):
        PersonConfig(track_low_thresh=0.5, track_high_thresh=0.3)
