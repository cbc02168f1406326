"""Keypoint interface, SMPL mapping, and the mediapipe backend's contract (no person in view)."""

import numpy as np
import pytest

from humove.keypoints.base import COCO_WHOLEBODY, MEDIAPIPE_POSE, KeypointTrack
from humove.schemas.motion import SMPL_JOINT_NAMES


@pytest.mark.parametrize("layout", [MEDIAPIPE_POSE, COCO_WHOLEBODY])
def test_layouts_map_named_points_to_the_same_smpl_joints(layout):
    kp, smpl, weight = layout.smpl_indices()
    for k, j in zip(kp, smpl, strict=True):
        point, joint = layout.names[k], SMPL_JOINT_NAMES[j]
        side = point.split("_")[0]
        assert joint.startswith(side), (point, joint)
    assert len(set(smpl.tolist())) == len(smpl) >= 12
    assert COCO_WHOLEBODY.num_keypoints == 133 and MEDIAPIPE_POSE.num_keypoints == 33


def test_track_to_smpl_targets_and_shape_errors():
    frames = 3
    xy = np.random.default_rng(0).uniform(0, 100, (frames, 33, 2)).astype(np.float32)
    scores = np.ones((frames, 33), np.float32)
    track = KeypointTrack(MEDIAPIPE_POSE, xy, scores, (100, 100))
    out_xy, conf, world, mask = track.smpl_targets()
    assert out_xy.shape == (frames, 24, 2) and world is None and mask.sum() == 14
    left_elbow = SMPL_JOINT_NAMES.index("left_elbow")
    np.testing.assert_array_equal(out_xy[:, left_elbow], xy[:, MEDIAPIPE_POSE.names.index("left_elbow")])
    assert conf[:, SMPL_JOINT_NAMES.index("head")].max() == 0  # not observed
    with pytest.raises(ValueError, match="scores shape"):
        KeypointTrack(MEDIAPIPE_POSE, xy, scores[:, :17], (100, 100))
    with pytest.raises(ValueError, match="xy shape"):
        KeypointTrack(MEDIAPIPE_POSE, xy[:2], scores, (100, 100))


def test_mediapipe_backend_runs_offline_and_reports_nobody_on_empty_frames():
    pytest.importorskip("mediapipe")
    from humove.keypoints.mediapipe_pose import MediaPipePoseDetector, square_crop_box

    frames = np.full((2, 120, 160, 3), 200, np.uint8)
    boxes = np.array([[40, 10, 100, 110], [500, 500, 600, 600]], np.float32)  # the second is off-screen
    with MediaPipePoseDetector() as detector:
        track = detector.detect_track(frames, boxes)
        with pytest.raises(ValueError, match="boxes"):
            detector.detect_track(frames, boxes[:1])
    assert track.xy.shape == (2, 33, 2) and track.world.shape == (2, 33, 3)
    assert track.scores.max() == 0.0  # a flat grey image holds no person
    assert square_crop_box(np.array([40, 10, 100, 110]), (120, 160), 1.2) == (10, 0, 130, 120)


def test_mediapipe_finds_a_drawn_person_with_camera_aligned_world_landmarks():
    pytest.importorskip("mediapipe")
    from humove.keypoints.mediapipe_pose import MediaPipePoseDetector
    from humove.motion.synthetic import draw_cartoon_person

    frames = np.stack([draw_cartoon_person(arm_swing=s) for s in (0.0, 10.0)])
    boxes = np.tile([150.0, 70.0, 390.0, 700.0], (2, 1))
    with MediaPipePoseDetector() as detector:
        track = detector.detect_track(frames, boxes)
    names = MEDIAPIPE_POSE.names
    idx = {n: names.index(n) for n in ("nose", "left_shoulder", "right_shoulder", "left_hip", "left_ankle")}
    assert track.scores[:, [idx["left_shoulder"], idx["right_shoulder"], idx["left_hip"]]].min() > 0.5
    # Pixels: the figure's left shoulder is on the image's right (it faces the camera); nose above ankle.
    assert (track.xy[:, idx["left_shoulder"], 0] > track.xy[:, idx["right_shoulder"], 0]).all()
    assert (track.xy[:, idx["nose"], 1] < track.xy[:, idx["left_ankle"], 1]).all()
    # World landmarks: metres, hip-centred, x right, y down, z away from the camera (the nose is in front).
    world = track.world
    assert (world[:, idx["left_shoulder"], 0] > 0).all()
    assert (world[:, idx["nose"], 1] < -0.3).all() and (world[:, idx["left_ankle"], 1] > 0.5).all()
    assert (world[:, idx["nose"], 2] < 0).all()
