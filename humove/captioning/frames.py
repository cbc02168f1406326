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
    if num_frames <= 0:
        raise ValueError("a clip without frames cannot be captioned")
    count = max(1, min(max_frames, int(math.floor(num_frames / clip_fps * sample_fps)) or 1))
    step = num_frames / count
    indices = [min(num_frames - 1, int(step * (i + 0.5))) for i in range(count)]
    if len(indices) % TEMPORAL_PATCH:
        indices.append(indices[-1])
    return indices


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
    """`(T, H, W, 3)` uint8 RGB frames of the clip at `path` and the rate they represent (frames per second)."""
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
    stack = np.stack([frames[i] for i in indices])
    effective_fps = len(indices) / (num_frames / clip_fps)
    return stack, effective_fps


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    if image.shape[1] == size[0] and image.shape[0] == size[1]:
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
