"""The offline caption: composed from what is known about a clip (keyword, category, person and motion
measures), saying in every part that it is a template and not a description of the pixels."""

from __future__ import annotations

import math

import numpy as np

from humove.captioning.prompts import CaptionParts

MARK = "[template caption]"
# The row columns `template_caption` uses, where an earlier stage made them (`stage.Reads`).
TEMPLATE_FIELDS = frozenset({
    "keyword", "keyword_text", "download_keyword", "category", "keyword_category", "subcategory",
    "keyword_fine_category", "person_box_height", "pose_full_body_fraction", "person_people_max", "clip_num_frames",
    "clip_fps", "person_clip_num_frames",
})


def template_caption(row: dict, root_speed_mps: float | None = None) -> CaptionParts:
    """A caption for a joined clip row. `root_speed_mps`: the person's mean root speed from the motion file."""
    keyword = _text(row.get("keyword")) or _text(row.get("keyword_text")) or _text(row.get("download_keyword"))
    category = _text(row.get("category")) or _text(row.get("keyword_category"))
    fine = _text(row.get("subcategory")) or _text(row.get("keyword_fine_category"))
    activity = fine or category or "unknown"
    kind = f" ({category})" if category and category != activity else ""
    duration = _duration(row)

    framing = []
    box = _number(row.get("person_box_height"))
    if box is not None:
        framing.append("filling most of the frame height" if box > 0.6 else "seen at a distance" if box < 0.3
                       else "at mid distance")
    full_body = _number(row.get("pose_full_body_fraction"))
    if full_body is not None:
        framing.append("with the whole body visible" if full_body >= 0.5 else "with part of the body out of view")
    people = _number(row.get("person_people_max"))
    if people is not None and people > 1:
        framing.append(f"with up to {int(people)} people in view")

    appearance = f"{MARK} One person is the main subject{', ' + ', '.join(framing) if framing else ''}; their " \
                 "appearance and attire are not described."
    source = f" The video was found with the search '{keyword}'." if keyword else ""
    background = f"{MARK} The background is not described.{source}"
    movement = _movement(root_speed_mps)
    span = f", for {duration:.1f} seconds" if duration else ""
    action = f"{MARK} Activity: {activity}{kind}{span}{movement}."
    caption = (f"{MARK} A person; activity: {activity}{kind}{span}{movement}"
               f"{', ' + ', '.join(framing) if framing else ''}."
               f"{' Found with the search ' + repr(keyword) + '.' if keyword else ''}")
    return CaptionParts(appearance=appearance, background=background, action=action, caption=caption)


def root_speed(transl: np.ndarray, valid: np.ndarray | None, fps: float) -> float | None:
    """Mean speed (m/s) of the root translation `(F, 3)` over consecutive valid frames."""
    if transl is None or len(transl) < 2 or fps <= 0:
        return None
    steps = np.linalg.norm(np.diff(transl, axis=0), axis=1)
    if valid is not None:
        valid = np.asarray(valid, bool)
        steps = steps[valid[1:] & valid[:-1]]
    return float(steps.mean() * fps) if steps.size else None


def _movement(speed: float | None) -> str:
    if speed is None or not math.isfinite(speed):
        return ""
    if speed < 0.2:
        return ", staying mostly in place"
    if speed < 1.5:
        return ", moving around the scene"
    return ", moving quickly across the scene"


def _duration(row: dict) -> float | None:
    frames, fps = _number(row.get("clip_num_frames")), _number(row.get("clip_fps"))
    if row.get("person_clip_num_frames") is not None:
        frames = _number(row.get("person_clip_num_frames"))
    return frames / fps if frames and fps else None


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text(value) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None
