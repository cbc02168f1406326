"""Synthetic motion and keypoints (built in code, seeded): for tests, benchmarks and checks of the fitter.

A walk-like stand-in-body motion ~4 m in front of a 1280×720 camera (focal 1000 px), and its exact
projection into the mediapipe keypoint layout (matched landmarks only) with optional pixel noise.
"""

import numpy as np
import torch

from humove.keypoints.base import MEDIAPIPE_POSE, KeypointTrack
from humove.motion.body_model import clip_joints, standin_model
from humove.motion.fitting import project
from humove.schemas.motion import MotionClip

IMAGE_SIZE = (720, 1280)
FOCAL = 1000.0


def walking_clip(frames: int = 60, fps: float = 30.0) -> MotionClip:
    """A smooth walk-like motion in front of the camera (stand-in body, ~4 m away). The legs swing while the body
    glides, so its feet slide (~2 m/s): a pose-fitting test subject, not a plausible walk (that is
    `demo_motion("walk")` placed with `place_motion`)."""
    t = np.arange(frames) / fps
    phase = 2 * np.pi * 1.0 * t
    global_orient = np.zeros((frames, 3), np.float32)
    global_orient[:, 0] = np.pi  # SMPL y-up → camera y-down: the body faces the camera
    global_orient[:, 1] = 0.2 * np.sin(0.5 * phase)
    body_pose = np.zeros((frames, 23, 3), np.float32)
    body_pose[:, 0, 0] = -0.5 * np.sin(phase)  # left hip
    body_pose[:, 1, 0] = 0.5 * np.sin(phase)  # right hip
    body_pose[:, 3, 0] = 0.4 + 0.3 * np.sin(phase + 1)  # knees
    body_pose[:, 4, 0] = 0.4 - 0.3 * np.sin(phase + 1)
    body_pose[:, 15, 2] = -1.0  # arms down
    body_pose[:, 16, 2] = 1.0
    body_pose[:, 17, 1] = -0.6 + 0.3 * np.sin(phase)  # elbows
    body_pose[:, 18, 1] = 0.6 + 0.3 * np.sin(phase)
    betas = np.zeros((frames, 10), np.float32)
    betas[:, 0], betas[:, 1] = 0.8, -0.4
    transl = np.stack([0.3 * np.sin(0.5 * phase), 0.1 + 0.02 * np.sin(2 * phase), 4.0 + 0.2 * t], axis=1)
    transl = transl.astype(np.float32)
    model = standin_model()
    joints = clip_joints(model, betas, global_orient, body_pose, transl)
    return MotionClip(
        betas=betas,
        global_orient=global_orient,
        body_pose=body_pose,
        transl=transl,
        joints=joints,
        focal=np.full(frames, FOCAL, np.float32),
        image_size=np.array(IMAGE_SIZE, np.int32),
        valid=np.ones(frames, bool),
        fps=fps,
        body_model=model.name,
    )


def keypoints_from_clip(
    clip: MotionClip, with_world: bool = True, pixel_noise: float = 0.0, seed: int = 0
) -> KeypointTrack:
    """Project the clip's joints into the mediapipe layout (the matched landmarks only; others score 0)."""
    layout = MEDIAPIPE_POSE
    kp, smpl, _ = layout.smpl_indices()
    height, width = IMAGE_SIZE
    joints = torch.as_tensor(clip.joints)
    xy_smpl = project(joints, torch.tensor(FOCAL), torch.tensor([width / 2, height / 2])).numpy()
    xy_smpl = xy_smpl + np.random.default_rng(seed).normal(scale=pixel_noise, size=xy_smpl.shape)
    frames = clip.num_frames
    xy = np.zeros((frames, layout.num_keypoints, 2), np.float32)
    scores = np.zeros((frames, layout.num_keypoints), np.float32)
    world = np.zeros((frames, layout.num_keypoints, 3), np.float32)
    xy[:, kp] = xy_smpl[:, smpl]
    scores[:, kp] = 0.9
    hips = (clip.joints[:, 1] + clip.joints[:, 2]) / 2
    world[:, kp] = (clip.joints - hips[:, None])[:, smpl]
    return KeypointTrack(layout, xy, scores, IMAGE_SIZE, world=world if with_world else None)


def draw_cartoon_person(height: int = 720, width: int = 540, arm_swing: float = 0.0) -> np.ndarray:
    """A flat-shaded front-facing figure (head, torso, limbs) drawn with OpenCV: (H, W, 3) uint8 RGB.

    mediapipe Pose detects it, which lets tests run the real offline keypoint backend without any image file.
    `arm_swing` (pixels) moves the hands sideways. Proportions are set for the default 720×540 canvas.
    """
    import cv2

    scale_x, scale_y = width / 540, height / 720
    image = np.full((height, width, 3), (220, 210, 200), np.uint8)
    skin, shirt, pants, shoe = (140, 170, 210), (160, 80, 40), (60, 50, 50), (30, 30, 30)

    def pt(x, y):
        return int(round(x * scale_x)), int(round(y * scale_y))

    def limb(a, b, thickness, colour):
        cv2.line(image, pt(*a), pt(*b), colour, max(1, int(thickness * scale_x)), cv2.LINE_AA)

    cx = 270
    cv2.ellipse(image, pt(cx, 300), pt(70, 120), 0, 0, 360, shirt, -1)
    cv2.circle(image, pt(cx, 130), int(48 * scale_x), skin, -1)
    for dx in (-17, 17):
        cv2.circle(image, pt(cx + dx, 122), max(1, int(6 * scale_x)), (30, 30, 40), -1)
    cv2.ellipse(image, pt(cx, 155), pt(18, 7), 0, 0, 180, (60, 60, 120), -1)
    limb((cx, 170), (cx, 200), 30, skin)
    for side in (-1, 1):
        elbow, hand = (cx + side * 110, 320), (cx + side * (130 + arm_swing), 420)
        limb((cx + side * 65, 210), elbow, 28, shirt)
        limb(elbow, hand, 24, skin)
        cv2.circle(image, pt(hand[0] + side * 2, 435), int(18 * scale_x), skin, -1)
        knee, ankle = (cx + side * 45, 540), (cx + side * 50, 670)
        limb((cx + side * 35, 400), knee, 40, pants)
        limb(knee, ankle, 34, pants)
        limb((cx + side * 50, 680), (cx + side * 80, 690), 20, shoe)
    return image[:, :, ::-1].copy()  # drawn as BGR → RGB


# Natural motions from joint angles over time (for the rendered demo videos) ------------------------------------
#
# Angles are in SMPL's frame (y up, x to the body's left, z forward), local to each joint's parent as SMPL
# defines them: flexing a hip forward is a negative rotation about x, bending a knee back a positive one; the
# arms rest sideways (T-pose), so lowering the left arm is a negative rotation about z and the right a positive.
DEMO_MOTIONS = ("walk", "wave", "squat", "jumping_jacks", "still", "turn")

_L_HIP, _R_HIP, _SPINE1, _L_KNEE, _R_KNEE, _SPINE2, _L_ANKLE, _R_ANKLE = 0, 1, 2, 3, 4, 5, 6, 7
_NECK, _L_SHOULDER, _R_SHOULDER, _L_ELBOW, _R_ELBOW = 11, 15, 16, 17, 18  # body_pose rows (joint id - 1)
_X, _Y, _Z = np.eye(3)


def _compose(*rotations: np.ndarray) -> np.ndarray:
    """Axis-angle rotations (F, 3), applied right to left (the last one first) → their product (F, 3)."""
    from humove.motion.rotations import axis_angle_to_matrix, matrix_to_axis_angle

    product = None
    for rotation in rotations:
        matrix = axis_angle_to_matrix(torch.as_tensor(np.asarray(rotation, np.float64)))
        product = matrix if product is None else product @ matrix
    return matrix_to_axis_angle(product).numpy()


def _about(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Angles (F,) about one axis → axis-angle (F, 3)."""
    return np.asarray(angle, np.float64)[:, None] * axis[None, :]


def demo_motion(kind: str, frames: int, fps: float, phase: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joint angles of one natural motion over time, in the body's own frame.

    Returns body_pose (F, 23, 3) axis-angle, a root rotation (F, 3) axis-angle in SMPL's frame (the body's sway,
    and the turn of "turn"; its heading is set when it is placed in the scene), and the root's wanted travel
    (F, 3) in SMPL's frame (metres: forward motion of a walk, the lift of a jump; contact with the floor is
    solved later, and feet on the floor set the pace). `phase` (radians) shifts the cycle so two people do not
    move in lockstep.
    """
    if kind not in DEMO_MOTIONS:
        raise ValueError(f"unknown demo motion {kind!r}: expected one of {DEMO_MOTIONS}")
    t = np.arange(frames) / fps
    pose = np.zeros((frames, 23, 3))
    root = np.zeros((frames, 3))
    travel = np.zeros((frames, 3))
    arms_down = 1.25
    if kind == "walk":
        cycle = 2 * np.pi * 0.9 * t + phase  # strides per second
        swing = np.sin(cycle)
        pose[:, _L_HIP] = _about(_X, -0.25 * swing)
        pose[:, _R_HIP] = _about(_X, 0.25 * swing)
        pose[:, _L_KNEE] = _about(_X, 0.35 + 0.35 * np.sin(cycle + 1.2))
        pose[:, _R_KNEE] = _about(_X, 0.35 - 0.35 * np.sin(cycle + 1.2))
        pose[:, _L_ANKLE] = _about(_X, -0.15 * np.sin(cycle + 0.6))
        pose[:, _R_ANKLE] = _about(_X, 0.15 * np.sin(cycle + 0.6))
        pose[:, _L_SHOULDER] = _compose(_about(_X, 0.4 * swing), _about(_Z, np.full(frames, -arms_down)))
        pose[:, _R_SHOULDER] = _compose(_about(_X, -0.4 * swing), _about(_Z, np.full(frames, arms_down)))
        pose[:, _L_ELBOW] = _about(_Y, -0.35 - 0.15 * swing)
        pose[:, _R_ELBOW] = _about(_Y, 0.35 - 0.15 * swing)
        root = _about(_Y, 0.08 * swing)
        travel[:, 2] = 0.6 * t  # metres per second forward (the planted feet set the pace: about this)
    elif kind == "wave":
        cycle = 2 * np.pi * 1.6 * t + phase
        pose[:, _L_SHOULDER] = _about(_Z, np.full(frames, -arms_down))
        pose[:, _L_ELBOW] = _about(_Y, np.full(frames, -0.2))
        pose[:, _R_SHOULDER] = _about(_Z, np.full(frames, -0.45))  # upper arm raised above the shoulder
        pose[:, _R_ELBOW] = _about(_Z, -1.0 + 0.45 * np.sin(cycle))  # forearm up, waving side to side
        pose[:, _NECK] = _about(_Z, 0.08 * np.sin(0.5 * cycle))
        pose[:, _L_HIP] = _about(_Z, np.full(frames, 0.06))
        pose[:, _R_HIP] = _about(_Z, np.full(frames, -0.06))
        root = _about(_Z, 0.04 * np.sin(0.5 * cycle))
    elif kind == "squat":
        depth = 0.5 - 0.5 * np.cos(2 * np.pi * 0.5 * t + phase)  # 0 standing → 1 deep, one squat per 2 s
        for hip, knee, ankle in ((_L_HIP, _L_KNEE, _L_ANKLE), (_R_HIP, _R_KNEE, _R_ANKLE)):
            pose[:, hip] = _about(_X, -1.1 * depth)
            pose[:, knee] = _about(_X, 1.9 * depth)
            pose[:, ankle] = _about(_X, -0.6 * depth)
        pose[:, _SPINE1] = _about(_X, 0.35 * depth)
        reach = np.pi / 2 * (0.35 + 0.65 * depth)  # arms come forward for balance
        pose[:, _L_SHOULDER] = _compose(_about(_Y, -reach), _about(_Z, -arms_down * (1 - depth)))
        pose[:, _R_SHOULDER] = _compose(_about(_Y, reach), _about(_Z, arms_down * (1 - depth)))
    elif kind == "still":  # standing still, talking: the hands and head move a little, the feet never
        cycle = 2 * np.pi * 0.7 * t + phase
        pose[:, _L_SHOULDER] = _about(_Z, np.full(frames, -arms_down))
        pose[:, _R_SHOULDER] = _about(_Z, np.full(frames, arms_down))
        pose[:, _L_ELBOW] = _about(_Y, np.full(frames, -0.25))
        pose[:, _R_ELBOW] = _about(_Y, 0.45 + 0.2 * np.sin(cycle))  # a small gesture of the right hand
        pose[:, _NECK] = _about(_Y, 0.1 * np.sin(0.5 * cycle))
        pose[:, _SPINE2] = _about(_Z, 0.02 * np.sin(0.3 * cycle))
        pose[:, _L_HIP] = _about(_Z, np.full(frames, 0.05))
        pose[:, _R_HIP] = _about(_Z, np.full(frames, -0.05))
    elif kind == "turn":  # turning on the spot by small steps: a quarter turn and back, stepping at 1.6 Hz
        duration = frames / fps
        heading = 0.8 * (1 - np.cos(2 * np.pi * t / max(duration, 1e-6)))  # 0 → 1.6 rad → 0
        stepping = np.sin(2 * np.pi * 0.8 * t + phase)  # the left foot lifts on its positive half, the right on
        lifts = np.maximum(stepping, 0.0), np.maximum(-stepping, 0.0)  # the negative one
        for (hip, knee, ankle), lift in zip(((_L_HIP, _L_KNEE, _L_ANKLE), (_R_HIP, _R_KNEE, _R_ANKLE)), lifts,
                                            strict=True):
            pose[:, hip] = _about(_X, -0.35 * lift)
            pose[:, knee] = _about(_X, 0.7 * lift)
            pose[:, ankle] = _about(_X, -0.2 * lift)
        pose[:, _L_SHOULDER] = _about(_Z, np.full(frames, -arms_down))
        pose[:, _R_SHOULDER] = _about(_Z, np.full(frames, arms_down))
        pose[:, _L_ELBOW] = _about(_Y, np.full(frames, -0.3))
        pose[:, _R_ELBOW] = _about(_Y, np.full(frames, 0.3))
        root = _about(_Y, heading)
    else:  # jumping jacks: legs and arms open during one hop and close during the next, feet still on the floor
        cycle = (0.8 * t + phase / (2 * np.pi)) % 1.0  # 0.8 jacks per second
        half = (cycle % 0.5) / 0.25  # 0 → 1 in the air, 1 → 2 on the floor
        air = np.minimum(half, 1.0)
        done = air * air * (3 - 2 * air)  # smooth 0 → 1 over the hop
        spread = np.where(cycle < 0.5, done, 1 - done)  # 0 closed → 1 open
        hop = np.where(half < 1, np.sin(np.pi * air), 0.0)
        pose[:, _L_SHOULDER] = _about(_Z, -arms_down + 2.6 * spread)
        pose[:, _R_SHOULDER] = _about(_Z, arms_down - 2.6 * spread)
        pose[:, _L_ELBOW] = _about(_Y, np.full(frames, -0.15))
        pose[:, _R_ELBOW] = _about(_Y, np.full(frames, 0.15))
        pose[:, _L_HIP] = _about(_Z, 0.05 + 0.32 * spread)
        pose[:, _R_HIP] = _about(_Z, -0.05 - 0.32 * spread)
        pose[:, _L_KNEE] = _about(_X, 0.1 + 0.15 * hop)
        pose[:, _R_KNEE] = _about(_X, 0.1 + 0.15 * hop)
        travel[:, 1] = 0.1 * hop  # metres: the hop
    return pose.astype(np.float32), root.astype(np.float32), travel.astype(np.float32)


FOOT_CONTACT_M = 0.01  # a foot whose lowest point is this close to the floor stands on it


def _foot_vertices(model) -> tuple[np.ndarray, np.ndarray]:
    """Vertex indices of the left and right foot (skinned mostly to the ankle or the foot joint)."""
    part = model.smpl.lbs_weights.numpy().argmax(axis=1)
    return np.flatnonzero(np.isin(part, (7, 10))), np.flatnonzero(np.isin(part, (8, 11)))


def _planted_shift(vertices: np.ndarray, joints: np.ndarray, feet: tuple[np.ndarray, np.ndarray],
                   floor_y: float) -> np.ndarray:
    """Horizontal shift (F, 2) of the body (camera x, z) that keeps the feet standing on the floor in place.

    vertices (F, V, 3) and joints (F, 24, 3) already stand on the floor `floor_y` (camera y down). A foot stands
    when its lowest vertex is within FOOT_CONTACT_M of the floor; between two frames where feet stand in both,
    the body moves against their mean horizontal displacement (ankle and ball of the foot), so they do not
    slide. Frames in the air keep the motion's own travel."""
    frames = len(vertices)
    standing = np.stack([floor_y - vertices[:, idx, 1].max(axis=1) < FOOT_CONTACT_M for idx in feet], axis=1)
    where = np.stack([joints[:, [7, 10]][..., [0, 2]].mean(axis=1), joints[:, [8, 11]][..., [0, 2]].mean(axis=1)],
                     axis=1)  # (F, 2 feet, 2)
    shift = np.zeros((frames, 2))
    for t in range(1, frames):
        both = standing[t - 1] & standing[t]
        step = (where[t, both] - where[t - 1, both]).mean(axis=0) if both.any() else np.zeros(2)
        shift[t] = shift[t - 1] - step
    return shift


def place_motion(
    body_pose: np.ndarray,
    root: np.ndarray,
    travel: np.ndarray,
    betas: np.ndarray,
    start: tuple[float, float],
    heading: float,
    floor_y: float,
    model=None,
) -> tuple[MotionClip, np.ndarray]:
    """Put a body moving as `demo_motion` describes into the camera frame (OpenCV axes, y down), standing on a
    floor `floor_y` metres below the camera, its pelvis starting at camera-frame (x, z) = `start`.

    `heading` (radians) turns the body about the vertical: 0 faces the camera, positive turns it towards the
    camera's right. Each frame is lifted so the lowest vertex touches the floor, plus the motion's own lift, and
    moved so that feet standing on the floor stay put (`_planted_shift`). betas (10,). Returns the motion (camera
    frame; focal and image size unset: 0) and the vertices (F, V, 3).
    """
    model = model or standin_model()
    frames = len(body_pose)
    heading_aa = _about(_Y, np.full(frames, heading))
    to_camera = _about(_X, np.full(frames, np.pi))  # SMPL y-up → camera y-down, facing the camera
    global_orient = _compose(to_camera, heading_aa, root).astype(np.float32)
    # The body's forward travel, turned by its heading and carried into the camera frame (x, -y, -z).
    forward = np.stack([np.sin(heading) * travel[:, 2], -travel[:, 1], -np.cos(heading) * travel[:, 2]], axis=1)
    transl = np.zeros((frames, 3), np.float32)
    transl[:, 0] = start[0] + forward[:, 0]
    transl[:, 2] = start[1] + forward[:, 2]
    betas_f = np.repeat(np.asarray(betas, np.float32)[None], frames, axis=0)
    with torch.no_grad():
        out = model(
            torch.as_tensor(betas_f), torch.as_tensor(global_orient), torch.as_tensor(body_pose),
            torch.as_tensor(transl),
        )
    vertices, joints = out.vertices.numpy(), out.joints.numpy()
    # Stand on the floor (camera y grows downwards), then lift by the motion's hop.
    drop = floor_y - vertices[:, :, 1].max(axis=1) + forward[:, 1]
    # Feet on the floor do not slide: the body moves so that they stay put (the walk's pace comes from its steps).
    shift = _planted_shift(vertices + np.array([0, 1, 0], np.float32) * drop[:, None, None], joints,
                           _foot_vertices(model), floor_y)
    move = np.stack([shift[:, 0], drop, shift[:, 1]], axis=1).astype(np.float32)  # (F, 3)
    transl += move
    vertices = vertices + move[:, None]
    joints = joints + move[:, None]
    clip = MotionClip(
        betas=betas_f,
        global_orient=global_orient,
        body_pose=body_pose.astype(np.float32),
        transl=transl.astype(np.float32),
        joints=joints.astype(np.float32),
        focal=np.zeros(frames, np.float32),
        image_size=np.zeros(2, np.int32),
        valid=np.ones(frames, bool),
        fps=1.0,
        body_model=model.name,
    )
    return clip, vertices.astype(np.float32)
