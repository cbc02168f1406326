"""Frames of a clip for a video-language model: sampled at a fixed rate, resized to a pixel budget.

Qwen2-VL / Qwen2.5-VL see video as 14-pixel patches merged 2×2 and 2 frames per temporal patch, so sides are
multiples of 28 and the frame count is even (the last frame is repeated when needed).
"""

from __future__ import annotations

import math

import numpy as np

from humove.video import iter_frames

PATCH = 28           # 14-pixel patches, merged 2 × 2
TEMPORAL_PATCH = 2


def frame_indices(num_frames: int, clip_fps: float, sample_fps: float, max_frames: int) -> list[int]:
    """Clip frame numbers at `sample_fps` (at most `max_frames`, spread over the whole clip), even count."""
    indices = _spread(num_frames, clip_fps, sample_fps, max_frames)
    if len(indices) % TEMPORAL_PATCH:
        indices.append(indices[-1])
    return indices


def effective_fps(num_frames: int, clip_fps: float, sample_fps: float, max_frames: int) -> float:
    """The rate `frame_indices` really samples at: `sample_fps`, or less where `max_frames` spreads fewer frames over
    a long clip. The repeated last frame that evens the count is not a sample and does not count."""
    return len(_spread(num_frames, clip_fps, sample_fps, max_frames)) * clip_fps / num_frames


def _spread(num_frames: int, clip_fps: float, sample_fps: float, max_frames: int) -> list[int]:
    """`count` frame numbers one step apart (step = num_frames / count), each in the middle of its step."""
    if num_frames <= 0 or not clip_fps > 0:
        raise ValueError(f"a clip of {num_frames} frames at {clip_fps} fps cannot be captioned")
    count = max(1, min(max_frames, int(math.floor(num_frames / clip_fps * sample_fps)) or 1))
    step = num_frames / count
    return [min(num_frames - 1, int(step * (i + 0.5))) for i in range(count)]


def frame_size(width: int, height: int, max_pixels: int, min_pixels: int = PATCH * PATCH) -> tuple[int, int]:
    """(width, height) as multiples of 28 with width × height within [min_pixels, max_pixels], aspect kept."""
    scale = math.sqrt(max_pixels / (width * height)) if width * height > max_pixels else 1.0
    w = max(PATCH, int(width * scale // PATCH) * PATCH)
    h = max(PATCH, int(height * scale // PATCH) * PATCH)
    while w * h < min_pixels:
        w, h = w + PATCH, h + PATCH
    return w, h


def sample_frames(path: str, num_frames: int, clip_fps: float, sample_fps: float, max_frames: int,
                  max_pixels: int) -> tuple[np.ndarray, float]:
    """`(T, H, W, 3)` uint8 RGB frames of the clip at `path` and the rate they were sampled at (`effective_fps`)."""
    indices = frame_indices(num_frames, clip_fps, sample_fps, max_frames)
    wanted = set(indices)
    frames: dict[int, np.ndarray] = {}
    size = None
    for frame in iter_frames(path, end_frame=max(indices) + 1):
        if frame.index in wanted:
            if size is None:
                h, w = frame.image.shape[:2]
                size = frame_size(w, h, max_pixels)
            frames[frame.index] = _resize(frame.image, size)
    missing = sorted(wanted - set(frames))
    if missing:
        raise ValueError(f"{path}: frames {missing[:5]} could not be decoded ({len(frames)} of {len(wanted)})")
    return np.stack([frames[i] for i in indices]), effective_fps(num_frames, clip_fps, sample_fps, max_frames)


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    if image.shape[1] == size[0] and image.shape[0] == size[1]:
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
