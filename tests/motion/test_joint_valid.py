"""Per-joint visibility: which SMPL joints the keypoints of each layout show (mediapipe-33, COCO-WholeBody-133,
COCO-17), body parts, brief sightings, and the measures and readers that use `joint_valid`."""

from dataclasses import replace

import numpy as np
import pytest

from humove.keypoints.base import (
    COCO_WHOLEBODY,
    MEDIAPIPE_POSE,
    SMPL_BODY_PARTS,
    KeypointTrack,
    body_parts_seen,
    steady,
)
from humove.keypoints.coco import COCO17
from humove.motion.quality import bone_length_cv, foot_sliding, jitter, motion_quality
from humove.motion.synthetic import walking_clip
from humove.schemas.motion import SMPL_JOINT_NAMES

J = {name: i for i, name in enumerate(SMPL_JOINT_NAMES)}
LEGS = [J[n] for n in ("left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
                       "left_foot", "right_foot")]
TORSO_FROM_HIPS = [J[n] for n in ("pelvis", "spine1", "spine2", "spine3")]
FRAMES = 8
HIDDEN = slice(3, 7)  # the legs behind a box on frames 3-6


def _smpl_joint_of(name: str) -> str:
    """The SMPL joint a keypoint lies at, by its name (the face at the head, fingers at the hand, toes at the foot)."""
    for side in ("left", "right"):
        for part, joint in (("hand_", "hand"), ("pinky", "hand"), ("index", "hand"), ("thumb", "hand"),
                            ("heel", "foot"), ("big_toe", "foot"), ("small_toe", "foot"), ("foot_index", "foot"),
                            ("shoulder", "shoulder"), ("elbow", "elbow"), ("wrist", "wrist"), ("hip", "hip"),
                            ("knee", "knee"), ("ankle", "ankle")):
            if name.startswith(f"{side}_{part}"):
                return f"{side}_{joint}"
    return "head"  # nose, eyes, ears, mouth, face points


def _track(layout, hide_legs: bool = True) -> KeypointTrack:
    """Keypoints of a walker at its projected joints, all seen (score 0.9), legs (hips down) hidden on HIDDEN."""
    clip = walking_clip(frames=FRAMES)
    height, width = (int(v) for v in clip.image_size)
    joints2d = clip.joints[..., :2] / clip.joints[..., 2:] * clip.focal[:, None, None] + [width / 2, height / 2]
    at = [J[_smpl_joint_of(name)] for name in layout.names]
    scores = np.full((FRAMES, layout.num_keypoints), 0.9, np.float32)
    if hide_legs:
        legs = [i for i, name in enumerate(layout.names) if _smpl_joint_of(name) in
                {SMPL_JOINT_NAMES[j] for j in LEGS}]
        scores[HIDDEN, legs] = 0.1
    return KeypointTrack(layout, joints2d[:, at].astype(np.float32), scores, (height, width))


LAYOUTS = pytest.mark.parametrize("layout", [MEDIAPIPE_POSE, COCO_WHOLEBODY, COCO17], ids=lambda x: x.name)


def test_each_layout_names_the_keypoints_that_show_each_smpl_joint():
    def names(layout, joint):
        return {layout.names[i] for i in layout.smpl_support()[J[joint]]}

    head = {"nose", "left_eye", "right_eye", "left_ear", "right_ear"}
    for layout in (MEDIAPIPE_POSE, COCO_WHOLEBODY, COCO17):
        assert names(layout, "head") == head
        for joint in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle"):
            assert names(layout, f"left_{joint}") == {f"left_{joint}"}
        for joint in ("pelvis", "spine1", "spine2", "spine3", "neck", "left_collar", "right_collar"):
            assert names(layout, joint) == set()  # no keypoint: follow their neighbours
    assert names(MEDIAPIPE_POSE, "left_foot") == {"left_heel", "left_foot_index"}
    assert names(MEDIAPIPE_POSE, "right_hand") == {"right_pinky", "right_index", "right_thumb"}
    assert names(COCO_WHOLEBODY, "left_foot") == {"left_heel", "left_big_toe", "left_small_toe"}
    assert names(COCO_WHOLEBODY, "right_hand") == {f"right_hand_{i}" for i in range(1, 21)}
    assert names(COCO17, "left_foot") == names(COCO17, "left_hand") == set()  # from the ankle / wrist
    assert list(SMPL_BODY_PARTS)[:1] == ["head"] and SMPL_BODY_PARTS["knees"] == (J["left_knee"], J["right_knee"])


@LAYOUTS
def test_hidden_legs_are_not_seen_and_the_torso_follows_the_hips(layout):
    seen = _track(layout).smpl_joints_seen(0.3)
    assert seen.shape == (FRAMES, 24)
    visible = np.ones(FRAMES, bool)
    visible[HIDDEN] = False
    assert seen[visible].all()
    hidden = seen[HIDDEN]
    assert not hidden[:, LEGS].any() and not hidden[:, TORSO_FROM_HIPS].any()  # no hip: no pelvis, no spine
    upper = [j for j in range(24) if j not in LEGS + TORSO_FROM_HIPS]
    assert hidden[:, upper].all()  # head, neck, collars, arms, hands
    assert body_parts_seen(seen, ["hips", "knees", "ankles"]).tolist() == visible.tolist()
    assert body_parts_seen(seen, ["shoulders"]).all() and body_parts_seen(seen, []).all()
    with pytest.raises(ValueError, match="unknown body part 'legs'"):
        body_parts_seen(seen, ["legs"])


@LAYOUTS
def test_a_keypoint_outside_the_image_or_below_the_score_is_not_seen(layout):
    track = _track(layout, hide_legs=False)
    names = layout.names
    track.xy[1, names.index("left_ankle"), 0] = -4.0  # confident, but off the left edge
    track.xy[1, names.index("left_knee"), 1] = track.image_size[0] + 2  # below the bottom edge
    track.scores[2, names.index("right_shoulder")] = 0.3  # at the threshold: not above it
    seen = track.smpl_joints_seen(0.3)
    assert not seen[1, J["left_ankle"]] and not seen[1, J["left_knee"]] and seen[1, J["right_ankle"]]
    assert body_parts_seen(seen, ["knees", "ankles"])[1]  # a part is seen where one of its joints is
    assert not seen[2, J["right_shoulder"]] and not seen[2, J["right_collar"]]
    assert seen[2, J["neck"]] and seen[2, J["spine2"]] and seen[2, J["left_collar"]]


@LAYOUTS
def test_hands_and_feet_by_their_own_points_where_the_layout_has_them(layout):
    track = _track(layout, hide_legs=False)
    own = [i for i, name in enumerate(layout.names) if _smpl_joint_of(name) == "left_hand"
           and name != "left_wrist"]
    track.scores[0, own] = 0.0  # fingers unseen, the wrist seen
    seen = track.smpl_joints_seen(0.3)
    assert seen[0, J["left_wrist"]]
    assert seen[0, J["left_hand"]] == (layout is COCO17)  # COCO-17 has no finger: the hand follows the wrist


def test_a_brief_sighting_amid_hidden_frames_is_dropped():
    seen = np.array([1, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 1, 1], bool)
    assert steady(seen, 3).astype(int).tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    columns = np.stack([seen, ~seen], axis=1)
    assert (steady(columns, 2)[:, 0] == steady(seen, 2)).all()
    assert (steady(seen, 1) == seen).all()


def _with_hidden_left_leg(clip, frames):
    """The clip with the left knee, ankle and foot marked unseen on `frames`."""
    joint_valid = clip.joint_valid.copy()
    joint_valid[np.ix_(frames, [J["left_knee"], J["left_ankle"], J["left_foot"]])] = False
    return replace(clip, joint_valid=joint_valid)


def test_measures_leave_out_joints_that_were_not_seen():
    clip = walking_clip(frames=40)
    clean = motion_quality(clip)
    # The fit's guess of a hidden leg: it shakes and skates while the leg is not seen.
    joints = clip.joints.copy()
    rng = np.random.default_rng(0)
    hidden = np.arange(10, 30)
    leg = [J["left_knee"], J["left_ankle"], J["left_foot"]]
    joints[10:30, leg] += rng.normal(scale=0.05, size=(20, 3, 3)).astype(np.float32)
    joints[10:30, leg, 0] += np.linspace(0, 2.0, 20)[:, None].astype(np.float32)  # 3 m/s sideways at 30 fps
    guessed = replace(clip, joints=joints)
    masked = _with_hidden_left_leg(guessed, hidden)
    assert jitter(guessed.joints, guessed.valid, clip.fps) > 3 * clean["jitter_mps2"]  # counted: damage
    assert jitter(masked.joints, masked.joint_valid, clip.fps) == pytest.approx(
        jitter(clip.joints, masked.joint_valid, clip.fps), rel=1e-6)  # left out: as if it had not happened
    assert motion_quality(masked)["jitter_mps2"] == pytest.approx(jitter(clip.joints, masked.joint_valid, clip.fps))
    assert bone_length_cv(masked.joints, masked.joint_valid) == pytest.approx(
        bone_length_cv(clip.joints, masked.joint_valid), abs=1e-6)
    # Foot sliding only where the ankle is seen: a standing body whose hidden left foot glides.
    stand = np.zeros((40, 24, 3), np.float32)
    stand[:, 12], stand[:, 0] = [0, -0.5, 3], [0, 0, 3]
    stand[:, [7, 10]], stand[:, [8, 11]] = [0.1, 0.9, 3], [-0.1, 0.9, 3]
    stand[:, [7, 10], 0] += np.linspace(0, 0.26, 40)[:, None]  # the left foot slides at 0.2 m/s
    seen = np.ones((40, 24), bool)
    assert foot_sliding(stand, seen[:, 0], fps=30.0) == pytest.approx(0.1, rel=1e-3)  # with the right one: 0
    seen[:, [J["left_ankle"], J["left_foot"]]] = False
    assert foot_sliding(stand, seen, fps=30.0) == pytest.approx(0.0, abs=1e-7)  # the right foot stands still


def test_training_windows_keep_which_joints_were_seen():
    from humove.model.data import resample_motion

    clip = walking_clip(frames=10)
    joint_valid = clip.joint_valid.copy()
    joint_valid[4, J["left_ankle"]] = False
    clip = replace(clip, joint_valid=joint_valid)
    same = resample_motion(clip, np.arange(10) / clip.fps)
    assert (same.joint_valid == clip.joint_valid).all()
    between = resample_motion(clip, np.array([3.5, 5.5]) / clip.fps)  # between frames 3-4 and 5-6
    assert not between.joint_valid[0, J["left_ankle"]] and between.joint_valid[1].all()
    assert between.joint_valid[0].sum() == 23
