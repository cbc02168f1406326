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
    """A smooth walk-like motion in front of the camera (stand-in body, ~4 m away)."""
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
