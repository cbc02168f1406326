"""The main person's track: chosen by count and area (EchoMotion A.4), filled to every frame, and its longest
continuously visible span (short gaps bridged).

Detection may run on every `step`-th frame only; the main box is interpolated linearly between two consecutive
sampled detections of the track, and those in-between frames count as seen. Longer holes stay unseen (NaN box).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MainTrack:
    """track_id: the chosen track (-1: nobody); box (F, 4) float32 xyxy (NaN where unseen); score (F,) float32
    (0 where unseen); visible (F,) bool: seen there (or between two consecutive sampled detections)."""

    track_id: int
    box: np.ndarray
    score: np.ndarray
    visible: np.ndarray


def pick_main_track(rows: np.ndarray) -> int:
    """The track with the largest summed box area over its frames (more frames and larger boxes both count);
    -1 when there are no detections. rows: (N, 7) [frame, track_id, x1, y1, x2, y2, score]."""
    if len(rows) == 0:
        return -1
    area = (rows[:, 4] - rows[:, 2]) * (rows[:, 5] - rows[:, 3])
    ids = np.unique(rows[:, 1])
    totals = [area[rows[:, 1] == t].sum() for t in ids]
    return int(ids[int(np.argmax(totals))])


def main_track(rows: np.ndarray, track_id: int, num_frames: int, sampled: list[int]) -> MainTrack:
    """Fill the chosen track to all `num_frames` frames; `sampled` lists the frames detection ran on."""
    box = np.full((num_frames, 4), np.nan, np.float32)
    score = np.zeros(num_frames, np.float32)
    visible = np.zeros(num_frames, bool)
    own = rows[rows[:, 1] == track_id] if track_id >= 0 else rows[:0]
    for row in own:
        f = int(row[0])
        if 0 <= f < num_frames:
            box[f], score[f], visible[f] = row[2:6], row[6], True
    for a, b in zip(sampled[:-1], sampled[1:], strict=True):  # consecutive sampled frames both seen: interpolate
        if b - a > 1 and visible[a] and visible[b]:
            w = ((np.arange(a + 1, b) - a) / (b - a))[:, None]
            box[a + 1:b] = (1 - w) * box[a] + w * box[b]
            score[a + 1:b] = np.minimum(score[a], score[b])
            visible[a + 1:b] = True
    if sampled and visible[sampled[-1]]:  # frames after the last sampled one: hold its box
        last = sampled[-1]
        box[last + 1:], score[last + 1:], visible[last + 1:] = box[last], score[last], True
    return MainTrack(track_id, box, score, visible)


def bridge_gaps(visible: np.ndarray, max_gap: int) -> np.ndarray:
    """`visible` with interior runs of at most `max_gap` unseen frames filled in (edges are never filled)."""
    out = np.asarray(visible, bool).copy()
    seen = np.flatnonzero(out)
    for a, b in zip(seen[:-1], seen[1:], strict=True):
        if 1 < b - a <= max_gap + 1:
            out[a + 1:b] = True
    return out


def longest_span(mask: np.ndarray) -> tuple[int, int]:
    """[start, end) of the longest run of True (the first one on ties); (0, 0) when there is none."""
    best, start = (0, 0), None
    for i, value in enumerate(list(np.asarray(mask, bool)) + [False]):
        if value and start is None:
            start = i
        elif not value and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return best


def fill_boxes(box: np.ndarray) -> np.ndarray:
    """(F, 4) boxes with NaN rows replaced by linear interpolation between the nearest seen rows (held at the
    ends); all NaN stays all NaN."""
    out = box.copy()
    seen = np.flatnonzero(~np.isnan(box[:, 0]))
    if len(seen) == 0:
        return out
    frames = np.arange(len(box))
    for c in range(4):
        out[:, c] = np.interp(frames, seen, box[seen, c])
    return out
