"""Demo videos rendered from known SMPL-layout motion (no download, no network), with their ground truth.

Each person is the stand-in body mesh (`humove.motion.body_model`) moving through a natural motion made of joint
angles over time (`humove.motion.synthetic.demo_motion`: walk, wave, squat, jumping jacks, standing still, turning on
the spot; feet standing on the floor do not slide), placed 3–4 m in front of a level pinhole camera (320×240, focal
380 px, OpenCV axes) on a tiled floor before a patterned wall, and drawn shaded with clothing colours
(`humove.render`). A real detector sees these people, and the motion stages can be scored against the motion that
drew them. `render_person` renders one such person alone, for tests of the motion stages, optionally with an
`Occluder` (a box over the legs for a while, say).

Beside each video with people, `<name>.motion.npz` holds the ground truth per source-video frame (see
`ground_truth_bytes`); `demo_manifest.json` lists every video's shots, people, and what a correct pipeline does
with it (`expected`). Generation is deterministic (fixed seeds, one torch thread, single-threaded encoder).

| video                   | content                                                   | a correct pipeline          |
|-------------------------|-----------------------------------------------------------|-----------------------------|
| demo_00_walk_wave.mp4   | 2 shots (hard cut, new room): a walk across; a wave       | 2 clips, both kept          |
| demo_01_squat_jacks.mp4 | 2 shots (hard cut): squats; jumping jacks (24 fps)        | 2 clips, both kept          |
| demo_02_walk.mp4        | 1 shot: a walk from right to left                         | 1 clip, kept                |
| demo_03_two_people.mp4  | two people of similar size (3.5 m and 3.7 m away)         | person: several_people      |
| demo_04_nobody.mp4      | an empty room, the camera panning                         | person: no_person           |
| demo_05_close_up.mp4    | head and upper body only (1.2 m away, camera at 1.5 m)    | pose: close_up              |
| demo_06_occluded.mp4    | a truck hides the person fully for 1 s in the middle      | person: occluded (*)        |
| demo_07_too_short.mp4   | 0.5 s                                                     | ingest: too_short           |
| demo_08_still_turn.mp4  | 2 shots (hard cut): standing still; turning on the spot   | 2 clips, both kept          |

(*) the person is seen for ~0.85 s before the truck and ~0.8 s after it, less than the 1 s span kept.
The machine-readable form is each spec's `expected` (and `demo_manifest.json`).

`CURATOR_SPECS` are short shots for the tests of the person and pose stages' decisions (not in the demo): held
wide poses (`HELD_POSES`: T-pose, arms out, astride beside a bicycle, crouching, lying), jumping jacks, framings
that cut the body (head and shoulders, waist up, legs only) and two people side by side.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from humove.motion.body_model import standin_model
from humove.motion.synthetic import demo_motion, place_motion
from humove.render import (
    Camera,
    Clothing,
    Mesh,
    Scene,
    draw_bicycle,
    draw_box_truck,
    face_colours,
    render_meshes,
    scene_background,
)
from humove.schemas.motion import NUM_BODY_JOINTS, SMPL_JOINT_NAMES, MotionClip
from humove.storage import Storage
from humove.video import write_mp4

WIDTH, HEIGHT = 320, 240
FOCAL = 380.0
CAMERA_HEIGHT = 0.95  # metres above the floor
SEED = 2026
MANIFEST_NAME = "demo_manifest.json"
GROUND_TRUTH_SUFFIX = ".motion.npz"
# A frame counts as showing the person when at least this fraction of the 24 joints is in the image and not
# behind the occluder.
MIN_VISIBLE_JOINT_FRACTION = 0.5

# Rooms, far apart in colour so each cut is a hard one: floor, floor_alt, wall, wall_alt (RGB).
_SCENES = (
    Scene((150, 120, 90), (115, 90, 65), (185, 175, 155), (160, 150, 135), seed=1),      # wood and stone
    Scene((90, 120, 80), (70, 95, 60), (120, 160, 200), (100, 140, 185), seed=2),        # green floor, blue wall
    Scene((170, 170, 175), (120, 120, 130), (200, 120, 80), (175, 100, 65), seed=3),     # grey tiles, brick
    Scene((200, 190, 150), (170, 160, 120), (110, 90, 140), (95, 75, 125), seed=4),      # sand floor, violet wall
    Scene((110, 80, 60), (85, 60, 45), (210, 205, 190), (190, 185, 170), seed=5, tile=0.45),  # dark floor
    Scene((140, 150, 160), (110, 120, 130), (200, 180, 110), (180, 160, 95), seed=6),    # slate, ochre wall
)
_CLOTHES = (
    Clothing(shirt=(40, 90, 170), trousers=(45, 45, 60)),
    Clothing(shirt=(200, 50, 45), trousers=(60, 70, 110), skin=(190, 140, 110), hair=(25, 20, 20)),
    Clothing(shirt=(235, 200, 60), trousers=(40, 60, 50), long_sleeves=True),
    Clothing(shirt=(60, 150, 80), trousers=(110, 85, 60), skin=(140, 95, 70), hair=(20, 15, 15)),
    Clothing(shirt=(230, 230, 230), trousers=(30, 30, 35), skin=(230, 195, 170), hair=(120, 80, 40)),
)


@dataclass(frozen=True)
class Person:
    """One body in a shot: its motion, pelvis start (x, z) in the camera frame (metres), heading (radians,
    0 faces the camera), clothing (index into _CLOTHES), shape (betas 0 and 1: height, girth), cycle phase."""

    motion: str
    start: tuple[float, float]
    heading: float = 0.0
    clothing: int = 0
    shape: tuple[float, float] = (0.0, 0.0)
    phase: float = 0.0


@dataclass(frozen=True)
class Shot:
    seconds: float
    scene: int                      # index into _SCENES
    people: tuple[Person, ...] = ()
    camera_pan: float = 0.0         # lateral camera speed, metres per second (only for shots without people)
    camera_height: float = CAMERA_HEIGHT
    occluded: tuple[float, float] | None = None  # (start, end) seconds in the shot a truck fully hides person 0
    bicycle: tuple[float, float] | None = None   # (x, z) metres: a bicycle standing there, behind the people


@dataclass(frozen=True)
class SampleSpec:
    """A demo video. `expected` says what a correct pipeline does with it: `stage` that refuses it (None: its
    clips are kept), `reasons` (any of them is right), and `clips`, the number of shots it holds."""

    name: str
    fps: int
    shots: tuple[Shot, ...]
    expected: dict = field(default_factory=dict)


def _kept(clips: int) -> dict:
    return {"stage": None, "status": "ok", "reasons": [], "clips": clips}


def _refused(stage: str, *reasons: str, clips: int = 1) -> dict:
    return {"stage": stage, "status": "rejected", "reasons": list(reasons), "clips": clips}


DEMO_SPECS = (
    SampleSpec("demo_00_walk_wave.mp4", 20, (
        Shot(3.0, 0, (Person("walk", (-1.0, 4.0), heading=1.2, clothing=0, shape=(0.5, 0.0)),)),
        Shot(2.5, 1, (Person("wave", (0.1, 3.4), heading=0.25, clothing=1, shape=(-0.5, 0.5)),)),
    ), _kept(2)),
    SampleSpec("demo_01_squat_jacks.mp4", 24, (
        Shot(2.5, 2, (Person("squat", (-0.1, 3.5), heading=-0.3, clothing=2, shape=(0.0, 1.0)),)),
        Shot(2.5, 3, (Person("jumping_jacks", (0.15, 3.8), heading=0.15, clothing=3, shape=(1.0, -0.5)),)),
    ), _kept(2)),
    SampleSpec("demo_02_walk.mp4", 20, (
        Shot(3.0, 4, (Person("walk", (1.1, 3.9), heading=-1.3, clothing=4, shape=(-1.0, 0.0), phase=1.0),)),
    ), _kept(1)),
    SampleSpec("demo_03_two_people.mp4", 20, (
        Shot(4.0, 5, (Person("wave", (-0.65, 3.5), heading=0.3, clothing=0, shape=(0.3, 0.0)),
                      Person("squat", (0.75, 3.7), heading=-0.3, clothing=1, shape=(0.0, 0.5), phase=1.5))),
    ), _refused("person", "several_people")),
    SampleSpec("demo_04_nobody.mp4", 20, (
        Shot(4.0, 1, (), camera_pan=0.35),
    ), _refused("person", "no_person")),
    SampleSpec("demo_05_close_up.mp4", 20, (
        Shot(4.0, 2, (Person("wave", (0.05, 1.2), heading=0.1, clothing=3),), camera_height=1.5),
    ), _refused("pose", "close_up")),
    SampleSpec("demo_06_occluded.mp4", 20, (
        Shot(3.2, 3, (Person("squat", (0.0, 3.6), heading=0.2, clothing=2),), occluded=(1.1, 2.1)),
    ), _refused("person", "occluded")),
    # Too short for ingest's minimum duration: the demo's example of a rejected input.
    SampleSpec("demo_07_too_short.mp4", 20, (
        Shot(0.5, 0, (Person("wave", (0.0, 3.5)),)),
    ), _refused("ingest", "too_short")),
    # Standing still and turning on the spot: the fit must keep feet planted and depth steady.
    SampleSpec("demo_08_still_turn.mp4", 20, (
        Shot(3.0, 5, (Person("still", (0.1, 3.6), heading=0.2, clothing=4, shape=(0.5, 0.0)),)),
        Shot(3.0, 0, (Person("turn", (0.0, 3.6), heading=-0.8, clothing=2, shape=(0.0, 0.5), phase=0.5),)),
    ), _kept(2)),
)


# Held poses (curator tests): a body in one pose, swaying slightly, as `demo_motion` describes motions. Angles as
# there: SMPL's frame, local to the parent joint; raising the left arm or spreading the left leg is a positive
# rotation about z (the right one negative), flexing a hip forward negative about x, bending a knee positive.
HELD_POSES = ("t_pose", "arms_out", "astride", "crouch", "lie")
_ROW = {name: index - 1 for index, name in enumerate(SMPL_JOINT_NAMES) if index > 0}  # body_pose row of a joint


def held_pose(kind: str, frames: int, fps: float, phase: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """body_pose (F, 23, 3), root tilt (F, 3), travel (F, 3) of a held pose (see `demo_motion` for the outputs):
    `t_pose` (arms level, sideways), `arms_out` (arms raised to a Y, legs apart), `astride` (legs wide apart,
    arms forward as on handlebars), `crouch` (a deep squat held, arms forward), `lie` (lying on the side along
    the floor, facing the camera)."""
    if kind not in HELD_POSES:
        raise ValueError(f"unknown held pose {kind!r}: expected one of {HELD_POSES}")
    t = np.arange(frames) / fps
    sway = 0.04 * np.sin(2 * np.pi * 0.7 * t + phase)  # nobody holds a pose frozen
    pose = np.zeros((frames, 23, 3))
    root = np.zeros((frames, 3))

    def about(joint: str, axis: int, angle) -> None:
        pose[:, _ROW[joint], axis] = angle

    about("spine1", 2, sway)
    if kind == "arms_out":
        about("left_shoulder", 2, 0.6 + sway)
        about("right_shoulder", 2, -0.6 - sway)
        about("left_hip", 2, 0.35)
        about("right_hip", 2, -0.35)
    elif kind == "astride":
        about("left_hip", 2, 0.45)
        about("right_hip", 2, -0.45)
        about("left_shoulder", 1, -1.2 + sway)
        about("right_shoulder", 1, 1.2 - sway)
        about("left_elbow", 1, -0.4)
        about("right_elbow", 1, 0.4)
    elif kind == "crouch":
        for side in ("left", "right"):
            about(f"{side}_hip", 0, -1.6 + sway)
            about(f"{side}_knee", 0, 2.3)
            about(f"{side}_ankle", 0, -0.6)
        about("spine1", 0, 0.45)
        about("left_shoulder", 1, -1.4)
        about("right_shoulder", 1, 1.4)
    elif kind == "lie":
        root[:, 2] = np.pi / 2  # the body's long axis along the floor, across the image
        about("left_shoulder", 2, -1.2)
        about("right_shoulder", 2, 1.2)
        about("left_hip", 2, 0.1)
        about("right_hip", 2, -0.1)
    return pose.astype(np.float32), root.astype(np.float32), np.zeros((frames, 3), np.float32)


def body_motion(kind: str, frames: int, fps: float, phase: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A held pose (`HELD_POSES`) or a demo motion (`humove.motion.synthetic.demo_motion`)."""
    if kind in HELD_POSES:
        return held_pose(kind, frames, fps, phase)
    return demo_motion(kind, frames, fps, phase=phase)


# Shots a curator decides on sight (tests of the person and pose stages): wide poses a box-shape rule would call
# close-ups, and framings that cut the body. `expected` as in DEMO_SPECS; `stage` is the one that refuses.
CURATOR_SPECS = (
    SampleSpec("curator_t_pose.mp4", 16, (Shot(1.25, 0, (Person("t_pose", (0.0, 3.4), heading=0.1),)),),
               _kept(1)),
    SampleSpec("curator_arms_out.mp4", 16, (Shot(1.25, 1, (Person("arms_out", (0.1, 3.4), clothing=1),)),),
               _kept(1)),
    SampleSpec("curator_jumping_jacks.mp4", 16, (
        Shot(1.25, 3, (Person("jumping_jacks", (0.0, 3.6), heading=-0.1, clothing=3, phase=2.0),)),), _kept(1)),
    SampleSpec("curator_bicycle.mp4", 16, (
        # feet at the bottom edge and a box as wide as it is tall: what a box-shape rule called a close-up
        Shot(1.25, 5, (Person("astride", (-0.45, 3.1), heading=0.2, clothing=4),), bicycle=(0.8, 3.3)),), _kept(1)),
    SampleSpec("curator_crouch.mp4", 16, (
        Shot(1.25, 2, (Person("crouch", (0.0, 3.4), heading=0.3, clothing=2),)),), _kept(1)),
    SampleSpec("curator_lying.mp4", 16, (
        Shot(1.25, 4, (Person("lie", (0.0, 3.0), clothing=0),), camera_height=0.6),), _kept(1)),
    SampleSpec("curator_head_shoulders.mp4", 16, (
        Shot(1.25, 2, (Person("wave", (0.05, 1.25), heading=0.1, clothing=3),), camera_height=1.5),),
        _refused("pose", "close_up")),
    SampleSpec("curator_waist_up.mp4", 16, (
        Shot(1.25, 1, (Person("wave", (0.0, 1.6), heading=-0.1, clothing=1),), camera_height=1.3),),
        _refused("pose", "close_up")),
    SampleSpec("curator_legs_only.mp4", 16, (
        Shot(1.25, 0, (Person("walk", (-0.4, 1.5), heading=1.4, clothing=0),), camera_height=0.35),),
        _refused("pose", "legs_only")),
    SampleSpec("curator_side_by_side.mp4", 16, (Shot(1.25, 1, (
        Person("walk", (-0.9, 3.6), heading=1.35, clothing=0),
        Person("walk", (-0.35, 3.5), heading=1.35, clothing=1, shape=(-2.5, 0.0), phase=1.0))),),
        _refused("person", "several_people")),
    SampleSpec("curator_beside_crouching.mp4", 16, (Shot(1.25, 3, (   # the second box half the main one's height
        Person("wave", (-0.45, 3.4), heading=0.2, clothing=0),
        Person("crouch", (0.45, 3.9), heading=-0.3, clothing=1))),), _refused("person", "several_people")),
)


@contextlib.contextmanager
def _one_torch_thread():
    """Body-model forward passes on one thread: the sum order, hence every rendered pixel, does not depend on
    the caller's thread count (Ray workers use 1, a terminal more)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class _ShotMotion:
    """A shot's people moved through their motions: per person a MotionClip and vertices (F, V, 3)."""

    shot: Shot
    camera: Camera
    scene: Scene
    motions: list[MotionClip]
    vertices: list[np.ndarray]
    colours: list[np.ndarray]
    truck_boxes: np.ndarray | None  # (F, 4) left, top, width, height in pixels, or None


def _shot_motion(shot: Shot, fps: int) -> _ShotMotion:
    model = standin_model()
    camera = Camera(WIDTH, HEIGHT, FOCAL)
    scene = replace(_SCENES[shot.scene], camera_height=shot.camera_height)
    frames = max(1, int(round(shot.seconds * fps)))
    rest = model.smpl.v_template.numpy()
    weights = model.smpl.lbs_weights.numpy()
    motions, vertices, colours = [], [], []
    for person in shot.people:
        pose, root, travel = body_motion(person.motion, frames, fps, phase=person.phase)
        betas = np.zeros(10, np.float32)
        betas[:2] = person.shape
        with _one_torch_thread():
            motion, verts = place_motion(pose, root, travel, betas, person.start, person.heading,
                                         floor_y=shot.camera_height, model=model)
        motions.append(replace(motion, focal=np.full(frames, FOCAL, np.float32),
                               image_size=np.array([HEIGHT, WIDTH], np.int32), fps=float(fps)))
        vertices.append(verts)
        colours.append(face_colours(rest, model.faces, weights, _CLOTHES[person.clothing]))
    truck = None
    if shot.occluded is not None:
        truck = _truck_boxes(camera.project(vertices[0]), shot.occluded, frames, fps)
    return _ShotMotion(shot, camera, scene, motions, vertices, colours, truck)


def _truck_boxes(pixels: np.ndarray, hidden: tuple[float, float], frames: int, fps: int) -> np.ndarray:
    """A truck driving right to left that covers the person's whole extent (pixels (F, V, 2)) exactly during
    `hidden` (start, end seconds): boxes (F, 4) as left, top, width, height."""
    left_px, right_px = pixels[..., 0].min(), pixels[..., 0].max()
    top_px, bottom_px = pixels[..., 1].min(), pixels[..., 1].max()
    width = 0.9 * WIDTH  # wide and fast: the partly hidden frames before and after are few
    start, end = hidden
    # Fully covering means left <= person's left and left + width >= person's right.
    speed = (width - (right_px - left_px)) / (end - start)
    if speed <= 0:
        raise ValueError("the truck is narrower than the person it should hide")
    t = np.arange(frames) / fps
    left = left_px - speed * (t - start)
    top = max(0.0, top_px - 12)
    height = min(float(HEIGHT), bottom_px + 20) - top
    return np.stack([left, np.full(frames, top), np.full(frames, width), np.full(frames, height)], axis=1)


def _shot_frames(shot_motion: _ShotMotion, fps: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Frames (H, W, 3) uint8 RGB of one shot, each with the occluder's pixel mask (H, W) or None."""
    shot, camera, scene = shot_motion.shot, shot_motion.camera, shot_motion.scene
    frames = max(1, int(round(shot.seconds * fps)))
    static = None if shot.camera_pan else scene_background(scene, camera)
    if static is not None and shot.bicycle is not None:
        draw_bicycle(static, camera, shot.bicycle[0], shot.bicycle[1], shot.camera_height)
    faces = standin_model().faces
    for i in range(frames):
        background = static if static is not None else scene_background(scene, camera, shot.camera_pan * i / fps,
                                                                         i / fps)
        meshes = [Mesh(v[i], faces, c) for v, c in zip(shot_motion.vertices, shot_motion.colours, strict=True)]
        image = render_meshes(background, meshes, camera)
        mask = None
        if shot_motion.truck_boxes is not None:
            mask = draw_box_truck(image, *shot_motion.truck_boxes[i])
        yield image, mask


def _plan(spec: SampleSpec) -> list[_ShotMotion]:
    return [_shot_motion(shot, spec.fps) for shot in spec.shots]


def sample_frames(spec: SampleSpec, seed: int = SEED) -> Iterator[np.ndarray]:
    """All frames of one sample video, `(H, W, 3)` uint8 RGB, deterministic. (`seed` is kept for callers; the
    scenes carry their own seeds.)"""
    for shot_motion in _plan(spec):
        for image, _ in _shot_frames(shot_motion, spec.fps):
            yield image


@dataclass(frozen=True)
class Occluder:
    """A flat grey box in front of the person (a car's side, a counter) from `start_s` to `end_s` seconds of the
    shot: it spans the person's picture box widened by `margin` of its width on each side, from `top` (a fraction
    of the box's height below its top edge: 0.45 hides from about the hips down) to the bottom of the frame."""

    start_s: float
    end_s: float
    top: float = 0.45
    margin: float = 0.15
    colour: tuple[int, int, int] = (95, 95, 105)


@dataclass
class RenderedPerson:
    """One person rendered alone (see `render_person`): frames (F, H, W, 3) uint8 RGB, the motion that drew them
    (camera frame, with focal, image size and fps set; `joint_valid` = `joints_visible`), the person's pixel box
    per frame (F, 4) xyxy (the part not behind the occluder), and joints_visible (F, 24) bool: the joint lies in
    the image and not behind the occluder."""

    frames: np.ndarray
    motion: MotionClip
    boxes: np.ndarray
    joints_visible: np.ndarray


def render_person(person: Person, seconds: float, fps: int, scene: int = 0, occluder: Occluder | None = None,
                  camera_height: float = CAMERA_HEIGHT) -> RenderedPerson:
    """Render one person moving through `person.motion` for `seconds` at `fps` in the demo's room and camera
    (320×240, focal 380 px, `camera_height` metres above the floor), with an `occluder` drawn over part of the body
    for a while if given: the rendered test subject with known motion, for checks of the motion stages."""
    planned = _shot_motion(Shot(seconds, scene, (person,), camera_height=camera_height), fps)
    frames = np.stack([image for image, _ in _shot_frames(planned, fps)])
    pixels = planned.camera.project(planned.vertices[0])  # (F, V, 2)
    boxes = np.concatenate([pixels.min(axis=1), pixels.max(axis=1)], axis=1)
    boxes = np.clip(boxes, 0, [WIDTH - 1, HEIGHT - 1, WIDTH - 1, HEIGHT - 1]).astype(np.float32)
    motion = planned.motions[0]
    joints2d = planned.camera.project(motion.joints)  # (F, 24, 2)
    joints_visible = ((joints2d[..., 0] >= 0) & (joints2d[..., 0] < WIDTH) & (joints2d[..., 1] >= 0)
                      & (joints2d[..., 1] < HEIGHT))
    if occluder is not None:
        for i in np.flatnonzero((np.arange(len(frames)) / fps >= occluder.start_s)
                                & (np.arange(len(frames)) / fps < occluder.end_s)):
            x0, y0, x1, y1 = boxes[i]
            pad = occluder.margin * (x1 - x0)
            left, right = int(max(0, np.floor(x0 - pad))), int(min(WIDTH, np.ceil(x1 + pad)))
            top = int(np.floor(y0 + occluder.top * (y1 - y0)))
            frames[i, top:, left:right] = occluder.colour
            joints_visible[i] &= ~((joints2d[i, :, 0] >= left) & (joints2d[i, :, 0] < right)
                                   & (joints2d[i, :, 1] >= top))
            boxes[i, 3] = min(boxes[i, 3], top)
    motion = replace(motion, joint_valid=joints_visible)
    return RenderedPerson(frames, motion, boxes, joints_visible)


def _ground_truth(spec: SampleSpec, plan: list[_ShotMotion], masks: list[np.ndarray | None]) -> dict | None:
    """Per source-video frame ground truth of the main person (person 0 of each shot), None without people.

    `masks` are the occluder masks per frame (None where there is no occluder)."""
    if not any(s.motions for s in plan):
        return None
    camera = plan[0].camera
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("betas", "global_orient", "body_pose", "transl",
                                                            "joints", "second_joints", "shot_index")}
    for index, shot_motion in enumerate(plan):
        frames = max(1, int(round(shot_motion.shot.seconds * spec.fps)))
        if shot_motion.motions:
            main = shot_motion.motions[0]
            for key in ("betas", "global_orient", "body_pose", "transl", "joints"):
                parts[key].append(getattr(main, key))
        else:  # a shot without people inside a video with people: zero motion, never visible
            for key, shape in (("betas", (10,)), ("global_orient", (3,)), ("body_pose", (NUM_BODY_JOINTS * 3,)),
                               ("transl", (3,)), ("joints", (24, 3))):
                parts[key].append(np.zeros((frames, *shape), np.float32))
            parts["transl"][-1][:, 2] = 1.0
            parts["joints"][-1][:, :, 2] = 1.0
        second = shot_motion.motions[1].joints if len(shot_motion.motions) > 1 else np.full((frames, 24, 3), np.nan)
        parts["second_joints"].append(second.astype(np.float32))
        parts["shot_index"].append(np.full(frames, index, np.int32))
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    joints = arrays["joints"]
    frames = len(joints)
    joints2d = camera.project(joints).astype(np.float32)
    in_image = ((joints[..., 2] > 0.05) & (joints2d[..., 0] >= 0) & (joints2d[..., 0] < WIDTH)
                & (joints2d[..., 1] >= 0) & (joints2d[..., 1] < HEIGHT))
    has_person = np.concatenate([np.full(max(1, int(round(s.shot.seconds * spec.fps))), bool(s.motions))
                                 for s in plan])
    joints_visible = in_image & has_person[:, None]
    for frame, mask in enumerate(masks):
        if mask is not None:
            column = np.clip(np.round(joints2d[frame, :, 0]).astype(int), 0, WIDTH - 1)
            row = np.clip(np.round(joints2d[frame, :, 1]).astype(int), 0, HEIGHT - 1)
            joints_visible[frame] &= ~mask[row, column]
    visible = joints_visible.mean(axis=1) >= MIN_VISIBLE_JOINT_FRACTION
    motion = MotionClip(
        betas=arrays["betas"], global_orient=arrays["global_orient"], body_pose=arrays["body_pose"],
        transl=arrays["transl"], joints=joints, focal=np.full(frames, FOCAL, np.float32),
        image_size=np.array([HEIGHT, WIDTH], np.int32), valid=visible, fps=float(spec.fps),
        body_model=standin_model().name, joint_valid=joints_visible,
    )
    second = arrays["second_joints"]
    extras = {
        "joints2d": joints2d,
        "joints_visible": joints_visible,
        "visible": visible,
        "intrinsics": camera.intrinsics(),
        "frame_time_s": (np.arange(frames) / spec.fps).astype(np.float32),
        "shot_index": arrays["shot_index"],
    }
    if np.isfinite(second).any():
        extras["second_joints"] = second
        extras["second_joints2d"] = camera.project(np.nan_to_num(second, nan=1.0)).astype(np.float32)
    return {"motion": motion, "extras": extras}


def render_sample(spec: SampleSpec) -> tuple[np.ndarray, dict | None]:
    """One sample's frames (F, H, W, 3) uint8 RGB and its ground truth (`{"motion", "extras"}`, see
    `ground_truth_bytes`; None without people), not encoded: for tests that make variants of a shot."""
    plan = _plan(spec)
    images, masks = [], []
    for shot_motion in plan:
        for image, mask in _shot_frames(shot_motion, spec.fps):
            images.append(image)
            masks.append(mask)
    return np.stack(images), _ground_truth(spec, plan, masks)


def ground_truth_bytes(motion: MotionClip, extras: dict[str, np.ndarray]) -> bytes:
    """The ground-truth file `<name>.motion.npz` as bytes: the motion-file keys (humove.schemas.motion, so
    `load_motion` reads it; `valid` = `visible`, `joint_valid` = `joints_visible` there) plus, per source frame F:

    joints2d (F, 24, 2) pixels, joints_visible (F, 24) bool (in the image and not behind the occluder),
    visible (F,) bool (at least half the joints visible), intrinsics (3, 3), frame_time_s (F,), shot_index (F,),
    and for a second person second_joints (F, 24, 3) / second_joints2d (F, 24, 2) (NaN where absent)."""
    buffer = io.BytesIO()
    np.savez(buffer, **motion.validate().to_arrays(), **extras)
    return buffer.getvalue()


def ground_truth_path(video_path: str) -> str:
    """`<folder>/<name>.mp4` → `<folder>/<name>.motion.npz` (exists only for videos with people)."""
    return os.path.splitext(video_path)[0] + GROUND_TRUTH_SUFFIX


# Encoded samples of this process, by content: tests and a run that write the same sample again reuse it.
_ENCODED: dict[tuple, tuple[bytes, bytes | None]] = {}


def encode_sample(spec: SampleSpec, cached: bool = True) -> tuple[bytes, bytes | None]:
    """Render and encode one sample → (MP4 bytes, ground-truth `.motion.npz` bytes or None without people).
    `cached=False` renders again even when this process has done it before."""
    key = (spec.name, spec.fps, spec.shots)
    if cached and key in _ENCODED:
        return _ENCODED[key]
    plan = _plan(spec)
    masks: list[np.ndarray | None] = []

    def frames():
        for shot_motion in plan:
            for image, mask in _shot_frames(shot_motion, spec.fps):
                masks.append(mask)
                yield image

    with tempfile.TemporaryDirectory(prefix="humove-sample-") as scratch:
        video = os.path.join(scratch, "sample.mp4")
        write_mp4(video, frames(), fps=spec.fps)
        with open(video, "rb") as handle:
            video_bytes = handle.read()
    truth = _ground_truth(spec, plan, masks)
    truth_bytes = None if truth is None else ground_truth_bytes(truth["motion"], truth["extras"])
    if len(_ENCODED) >= 32:
        _ENCODED.pop(next(iter(_ENCODED)))
    _ENCODED[key] = (video_bytes, truth_bytes)
    return video_bytes, truth_bytes


def write_sample(spec: SampleSpec, path: str, seed: int = SEED) -> str:
    """Write one sample to `path` and its ground truth beside it (when it has people), both atomically; the
    video last, so a video on disk always has its ground truth. (`seed` is kept for callers.)"""
    video_bytes, truth_bytes = encode_sample(spec)
    folder = os.path.dirname(os.path.abspath(path))
    storage = Storage(folder)
    if truth_bytes is not None:
        storage.write_bytes(os.path.abspath(ground_truth_path(path)), truth_bytes)
    storage.write_bytes(os.path.abspath(path), video_bytes)
    return path


def demo_manifest() -> dict:
    """What the demo set holds and what a correct pipeline does with each video (JSON-ready)."""
    videos = []
    for spec in DEMO_SPECS:
        shots, start = [], 0
        for shot in spec.shots:
            frames = max(1, int(round(shot.seconds * spec.fps)))
            shots.append({"start_frame": start, "end_frame": start + frames, "scene": shot.scene,
                          "people": [p.motion for p in shot.people], "occluded_s": shot.occluded})
            start += frames
        has_people = any(shot.people for shot in spec.shots)
        videos.append({
            "name": spec.name, "fps": spec.fps, "num_frames": start, "width": WIDTH, "height": HEIGHT,
            "shots": shots, "expected": spec.expected,
            "ground_truth": os.path.splitext(spec.name)[0] + GROUND_TRUTH_SUFFIX if has_people else None,
        })
    return {"videos": videos, "focal_px": FOCAL, "camera": "pinhole, OpenCV axes, principal point at the centre"}


def write_demo_videos(folder: str) -> list[str]:
    """Write the demo videos, their ground truth and `demo_manifest.json` into `folder` (created if needed) and
    return the video paths, sorted (only the videos: the ground truth is no input). Idempotent: a video already
    there is kept (generation is deterministic, writes are atomic, and a video is written after its ground
    truth)."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for spec in DEMO_SPECS:
        path = os.path.join(folder, spec.name)
        if not os.path.exists(path):
            write_sample(spec, path)
        paths.append(path)
    manifest = os.path.join(folder, MANIFEST_NAME)
    text = json.dumps(demo_manifest(), indent=1)
    if not os.path.exists(manifest) or open(manifest).read() != text:
        Storage(folder).write_text(manifest, text)
    return sorted(paths)


def demo_support_files(folder: str) -> list[str]:
    """The files beside the demo videos in `folder` that are not inputs: each `<name>.motion.npz` ground truth and
    `demo_manifest.json` (sorted paths of those present). A run dir on an object store needs them copied too."""
    names = [os.path.splitext(spec.name)[0] + GROUND_TRUTH_SUFFIX for spec in DEMO_SPECS] + [MANIFEST_NAME]
    return sorted(os.path.join(folder, n) for n in names if os.path.exists(os.path.join(folder, n)))
