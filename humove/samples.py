"""Sample videos for the demo and tests, generated in code (no download, no network).

Each demo video has 2–3 hard scene cuts (a new background palette per shot) and a moving human-like figure
(filled head, torso and swinging limbs drawn with OpenCV) so that shot detection and the later person and pose
stages have something to find. One video is deliberately too short and should be rejected by `ingest`.
Generation is deterministic (fixed seed, single-threaded encoder): the same call writes the same bytes.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from humove.video import write_mp4

WIDTH, HEIGHT = 320, 240
SEED = 2026

# Background palettes (top colour, bottom colour) in RGB, far apart in hue so each cut is a hard one.
_PALETTES = (
    ((40, 90, 200), (150, 200, 255)),     # sky blue
    ((20, 110, 40), (120, 200, 90)),      # grass green
    ((170, 60, 30), (250, 170, 90)),      # sunset orange
    ((70, 40, 110), (170, 120, 210)),     # violet
    ((90, 90, 90), (200, 200, 190)),      # grey studio
    ((150, 130, 40), (240, 225, 150)),    # sand
)


@dataclass(frozen=True)
class Shot:
    seconds: float
    palette: int          # index into _PALETTES
    motion: str           # "walk" (crosses the frame), "wave" (stands, waves), "jump"


@dataclass(frozen=True)
class SampleSpec:
    name: str
    fps: int
    shots: tuple[Shot, ...]


DEMO_SPECS = (
    SampleSpec("demo_00_walk.mp4", 24, (Shot(2.0, 0, "walk"), Shot(2.0, 1, "wave"), Shot(2.0, 2, "walk"))),
    SampleSpec("demo_01_wave.mp4", 30, (Shot(1.5, 3, "wave"), Shot(2.5, 4, "jump"), Shot(2.0, 5, "walk"))),
    SampleSpec("demo_02_jump.mp4", 25, (Shot(2.5, 2, "jump"), Shot(2.5, 0, "walk"))),
    SampleSpec("demo_03_mixed.mp4", 24, (Shot(1.5, 5, "walk"), Shot(2.0, 3, "jump"), Shot(1.5, 1, "wave"),
                                         Shot(1.5, 4, "walk"))),
    SampleSpec("demo_04_long_shot.mp4", 24, (Shot(1.5, 1, "wave"), Shot(5.0, 4, "walk"))),
    # Too short for ingest's default minimum duration: the demo's example of a rejected input.
    SampleSpec("demo_05_too_short.mp4", 24, (Shot(0.5, 0, "wave"),)),
)


def _background(palette: int, rng: np.random.Generator) -> np.ndarray:
    """A vertical gradient with a few random blocks, so frames have texture: (H, W, 3) uint8 RGB."""
    top, bottom = (np.asarray(c, np.float32) for c in _PALETTES[palette])
    ramp = np.linspace(0.0, 1.0, HEIGHT, dtype=np.float32)[:, None, None]
    image = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (HEIGHT, WIDTH, 3)).astype(np.uint8).copy()
    for _ in range(6):
        x, y = int(rng.integers(0, WIDTH - 40)), int(rng.integers(HEIGHT // 2, HEIGHT - 20))
        w, h = int(rng.integers(20, 60)), int(rng.integers(10, 40))
        shade = (bottom * rng.uniform(0.5, 0.8)).astype(int).tolist()
        cv2.rectangle(image, (x, y), (x + w, y + h), shade, thickness=-1)
    return image


def _draw_figure(image: np.ndarray, cx: float, foot_y: float, phase: float, motion: str,
                 shirt: tuple[int, int, int]) -> None:
    """Draw a person about 60% of the frame tall, standing on `foot_y`, limbs at gait/wave `phase`."""
    height = 0.6 * HEIGHT
    head_r = height * 0.08
    hip = (cx, foot_y - 0.48 * height)
    neck = (cx, foot_y - 0.82 * height)
    shoulder = (cx, neck[1] + 0.05 * height)
    leg, arm = 0.48 * height, 0.36 * height
    swing = 0.5 * math.sin(phase)

    def limb(start, angle, length, colour, thickness):
        end = (start[0] + length * math.sin(angle), start[1] + length * math.cos(angle))
        cv2.line(image, _pt(start), _pt(end), colour, thickness, lineType=cv2.LINE_AA)

    trousers, skin = (40, 40, 70), (230, 190, 160)
    limb_w = max(3, int(height * 0.07))
    limb(hip, swing, leg, trousers, limb_w)
    limb(hip, -swing, leg, trousers, limb_w)
    cv2.line(image, _pt(hip), _pt(neck), shirt, int(height * 0.16), lineType=cv2.LINE_AA)  # torso
    if motion == "wave":
        limb(shoulder, 0.3, arm, shirt, limb_w)
        limb(shoulder, math.pi - 0.6 + 0.5 * math.sin(3 * phase), arm, shirt, limb_w)  # raised, waving
    else:
        limb(shoulder, -swing, arm, shirt, limb_w)
        limb(shoulder, swing, arm, shirt, limb_w)
    cv2.circle(image, _pt((cx, neck[1] - head_r)), int(head_r), skin, -1, lineType=cv2.LINE_AA)


def _pt(xy) -> tuple[int, int]:
    return int(round(xy[0])), int(round(xy[1]))


def _shot_frames(shot: Shot, fps: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    background = _background(shot.palette, rng)
    shirt = tuple(int(v) for v in rng.integers(0, 256, 3))
    n = max(1, int(round(shot.seconds * fps)))
    start_x = float(rng.uniform(0.2, 0.35)) * WIDTH
    for i in range(n):
        t = i / fps
        phase = 2 * math.pi * 1.5 * t
        pan = int(6 * t)  # slow camera pan: shots are not static images
        frame = np.roll(background, -pan, axis=1)
        cx, foot_y = WIDTH / 2, HEIGHT * 0.92
        if shot.motion == "walk":
            cx = start_x + 45.0 * t
        elif shot.motion == "jump":
            foot_y -= 25.0 * abs(math.sin(math.pi * 1.2 * t))
        _draw_figure(frame, cx, foot_y, phase, shot.motion, shirt)
        yield frame


def sample_frames(spec: SampleSpec, seed: int = SEED) -> Iterator[np.ndarray]:
    """All frames of one sample video, `(H, W, 3)` uint8 RGB, deterministic for a seed."""
    rng = np.random.default_rng([seed, sum(spec.name.encode())])
    for shot in spec.shots:
        yield from _shot_frames(shot, spec.fps, rng)


def write_sample(spec: SampleSpec, path: str, seed: int = SEED) -> str:
    """Encode one sample to `path` atomically (temp file in the same folder, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(suffix=".mp4", dir=folder, prefix=".sample-")
    os.close(handle)
    try:
        write_mp4(tmp, sample_frames(spec, seed), fps=spec.fps)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_demo_videos(folder: str) -> list[str]:
    """Write the demo videos into `folder` (created if needed) and return their paths, sorted. Idempotent:
    a file already there is kept (generation is deterministic, and writes are atomic)."""
    paths = []
    for spec in DEMO_SPECS:
        path = os.path.join(folder, spec.name)
        if not os.path.exists(path):
            write_sample(spec, path)
        paths.append(path)
    return sorted(paths)
