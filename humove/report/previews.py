"""Per-clip media of the report: a short H.264 preview and a validity/jitter plot, cached by content hash.

The preview plays the clip later stages read (`current_clip`: the person stage's trimmed span when there is
one) with the person and pose artifacts and the fitted SMPL joints drawn on it (main person box green, other
people grey, keypoints yellow and red, SMPL joints blue where the frame is valid and grey where not); below
it, when the clip has a motion file, a front and a side view of the fitted 3D joints, frame by frame in step
with the clip. At most `preview_frames` frames, sampled evenly, so it plays at the clip's real speed.

Files go to the report's media folder (`MediaFolder`) under the hash of everything they show (input files'
SHA-256, sizes, thresholds, the drawing's version): a report written again reuses them and renders only what
changed. Only files inside the run dir are read; a clip or artifact that cannot be read gives that card a
one-line note and the report goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import posixpath
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw

from humove.artifacts import read_npz
from humove.report import charts
from humove.report.data import Threshold
from humove.schemas.motion import SMPL_JOINT_NAMES, SMPL_PARENTS, MotionClip, load_motion
from humove.storage import Storage, is_local, open_url

# Bump when the drawing changes: cached previews of the old drawing are then rendered again.
PREVIEW_VERSION = 1

# COCO-17 body skeleton (keypoint index pairs); COCO-WholeBody 133 starts with the same 17 points.
COCO17_EDGES = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
                (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
MAIN_BOX_COLOUR, OTHER_BOX_COLOUR = (0, 230, 118), (189, 189, 189)
BONE_COLOUR, POINT_COLOUR = (255, 214, 0), (255, 61, 0)
SMPL_COLOUR, SMPL_INVALID_COLOUR = (0, 176, 255), (120, 120, 120)
# The 3D view: left body side blue, right side red, the spine dark grey; an invalid frame all light grey.
LEFT_COLOUR, RIGHT_COLOUR, SPINE_COLOUR, INVALID_3D_COLOUR = (30, 136, 229), (229, 57, 53), (55, 71, 79), (176,) * 3
_JOINT_SIDE = tuple(LEFT_COLOUR if name.startswith("left") else RIGHT_COLOUR if name.startswith("right")
                    else SPINE_COLOUR for name in SMPL_JOINT_NAMES)


class MediaFolder:
    """The report's media folder beside its HTML (`report.html` → `report/`). A file is named by the hash of
    what it shows: one already there is reused, never rendered again; `prune` removes those the page no longer
    shows (only files named that way: nothing else in the folder is touched)."""

    NAME = re.compile(r"[0-9a-f]{24}\.(mp4|png)")

    def __init__(self, html_url: str):
        base = html_url[: -len(".html")] if html_url.endswith(".html") else html_url + "-media"
        self.storage = Storage(base)
        self.link = quote(posixpath.basename(self.storage.root))  # relative to the HTML
        self.used: set[str] = set()

    def file(self, key: dict, ext: str, render) -> str:
        """The relative link of the file for `key` (JSON-able, dataclasses too), rendering it with
        `render() -> bytes` when missing."""
        text = json.dumps(key, sort_keys=True, default=lambda value: dataclasses.asdict(value))
        name = hashlib.sha256(text.encode()).hexdigest()[:24] + f".{ext}"
        url = self.storage.join(name)
        if name not in self.used and not self.storage.exists(url):
            self.storage.write_bytes(url, render())
        self.used.add(name)
        return f"{self.link}/{name}"

    def prune(self) -> None:
        for url in self.storage.list(self.storage.root):
            name = posixpath.basename(url)
            if self.NAME.fullmatch(name) and name not in self.used:
                self.storage.delete(url)


@dataclass
class ClipPreview:
    """What a clip card shows besides its text: links into the media folder, or why there is no preview."""

    info: str = ""                 # "46 frames at 16 fps, person span 2–48"
    video: str | None = None       # the preview (clip with overlays, 3D view below when there is motion)
    timeline: str | None = None    # validity and jitter over time (clips with a motion file)
    has_motion: bool = False
    problem: str | None = None


class Previews:
    """Renders (or finds in the cache) the media of clip cards. `jitter`: the smooth stage's jitter threshold,
    drawn on the timeline."""

    def __init__(self, media: MediaFolder, run_dir: str, width: int, max_frames: int,
                 jitter: Threshold | None = None):
        self.media = media
        self.run_dir = run_dir
        self.width = width - width % 2  # H.264 in 4:2:0 wants even sides
        self.max_frames = max_frames
        self.jitter = jitter

    def of(self, row: dict) -> ClipPreview:
        """The preview of a joined clip row (`data.clip_rows`); never raises for a bad clip or artifact: an
        artifact that cannot be read is left out with a note, a clip that cannot be read gives only the note."""
        preview = ClipPreview()
        try:
            path, num_frames, fps, preview.info = _clip_of(row)
            files = {"clip": path, "person": row.get("person_boxes_path"), "pose": row.get("pose_keypoints_path"),
                     "motion": row.get("motion_path") or row.get("smpl_motion_path")}
            outside = [url for url in files.values() if url and not self._inside(url)]
            if outside:
                preview.problem = f"not read: {outside[0]} is outside the run dir"
                return preview
            notes: list[str] = []
            person = _artifact("person boxes", files["person"], read_npz, notes)
            pose = _artifact("pose keypoints", files["pose"], read_npz, notes)
            motion = _artifact("motion", files["motion"], lambda url: load_motion(Storage(url).read_bytes(url)),
                               notes)
            drawn = {"clip": path, "person": person, "pose": pose, "motion": motion}
            digests = {role: _sha256(files[role]) if drawn[role] is not None else None for role in files}
            settings = {"version": PREVIEW_VERSION, "width": self.width, "frames": self.max_frames}
            preview.video = self.media.file({"kind": "preview", **settings, **digests}, "mp4",
                                            lambda: self._video(path, num_frames, fps, person, pose, motion))
            if motion is not None:
                preview.has_motion = True
                threshold = None if self.jitter is None else [self.jitter.name, self.jitter.value]
                preview.timeline = self.media.file(
                    {"kind": "timeline", **settings, "charts": charts.VERSION, "motion": digests["motion"],
                     "threshold": threshold}, "png",
                    lambda: self._timeline(motion))
            preview.problem = "; ".join(notes) or None
        except Exception as exc:  # noqa: BLE001 - one unreadable clip must not break the report
            preview.problem = f"cannot preview: {type(exc).__name__}: {_short(str(exc))}"
        return preview

    def _inside(self, url: str) -> bool:
        if is_local(url) != is_local(self.run_dir):
            return False
        if is_local(url):
            path = Path(url.removeprefix("file://")).resolve()
            return path.is_relative_to(Path(self.run_dir.removeprefix("file://")).resolve())
        return url.startswith(self.run_dir.rstrip("/") + "/") and "/../" not in url

    def _video(self, path: str, num_frames: int | None, fps: float, person: dict | None, pose: dict | None,
               motion: MotionClip | None) -> bytes:
        stride = max(1, math.ceil((num_frames or self.max_frames) / self.max_frames))
        overlays = Overlays(person, pose, motion)
        views = SkeletonViews(motion, self.width) if motion is not None else None
        frames = []
        for index, image in decode_every(path, stride, self.max_frames):
            native = image.size
            height = max(2, round(image.height * self.width / image.width / 2) * 2)
            image = image.convert("RGB").resize((self.width, height), Image.Resampling.BILINEAR)
            overlays.draw(image, index, native)
            picture = np.asarray(image)
            if views is not None:
                picture = np.concatenate([picture, views.frame(index)], axis=0)
            frames.append(picture)
        if not frames:
            raise ValueError(f"{path}: no video frames")
        return encode_mp4(frames, fps / stride)

    def _timeline(self, motion: MotionClip) -> bytes:
        valid = motion.valid.astype(bool)
        acceleration = joint_acceleration(motion.joints, valid, motion.fps)
        return charts.png(charts.clip_timeline(valid, acceleration, motion.fps, self.jitter, self.width))


def _artifact(what: str, url: str | None, read, notes: list[str]):
    """An artifact read with `read(url)`, or None (with a note saying why when there is one that cannot be read)."""
    if not url:
        return None
    try:
        return read(url)
    except (OSError, ValueError, KeyError) as exc:  # missing, not an npz, not the contract (MotionFileError)
        notes.append(f"{what} not drawn: {type(exc).__name__}: {_short(str(exc), 120)}")
        return None


def _clip_of(row: dict) -> tuple[str, int | None, float, str]:
    """(path, frames, fps, a line saying which clip it is) of the clip later stages read."""
    try:
        from humove.clips import current_clip

        clip = current_clip(row)
        path, num_frames, fps, trimmed = clip.path, clip.num_frames, clip.fps, clip.trimmed
    except (KeyError, TypeError, ValueError):  # records without the full clip columns
        path, num_frames, fps, trimmed = row["clip_path"], row.get("clip_num_frames"), row.get("clip_fps"), False
    info = f"{num_frames} frames" if num_frames else ""
    if fps:
        info += f" at {fps:.3g} fps"
    if trimmed:
        info += f", person span {row['person_span_start_frame']}–{row['person_span_end_frame']}"
    return path, num_frames, float(fps or 8.0), info


def _sha256(url: str) -> str:
    with open_url(url, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Video ------------------------------------------------------------------------------------------------------------

def decode_every(url: str, stride: int, limit: int):
    """(frame index, PIL image) of every `stride`-th frame of a video, at most `limit` of them (PyAV)."""
    import av

    with open_url(url, "rb") as handle, av.open(handle) as container:
        taken = 0
        for index, frame in enumerate(container.decode(container.streams.video[0])):
            if index % stride == 0:
                yield index, frame.to_image()
                taken += 1
                if taken >= limit:
                    return


def encode_mp4(frames: list[np.ndarray], fps: float) -> bytes:
    """(H, W, 3) uint8 RGB frames of even sides → a small H.264 MP4 (yuv420p, which every browser plays)."""
    import av

    height, width = frames[0].shape[:2]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001),
                                      options={"crf": "27", "preset": "veryfast", "threads": "1"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for picture in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def joint_acceleration(joints: np.ndarray, valid: np.ndarray, fps: float) -> np.ndarray:
    """(F,) mean joint acceleration per frame in m/s² (second differences × fps², as the smooth stage's jitter
    measure); NaN at the ends and where the frame or a neighbour is invalid. joints (F, 24, 3) metres."""
    result = np.full(len(joints), np.nan)
    if len(joints) >= 3:
        accel = np.linalg.norm(joints[2:] - 2 * joints[1:-1] + joints[:-2], axis=-1).mean(axis=1) * fps**2
        ok = valid[:-2] & valid[1:-1] & valid[2:]
        result[1:-1] = np.where(ok, accel, np.nan)
    return result


# Drawing ----------------------------------------------------------------------------------------------------------

class Overlays:
    """The person and pose artifacts and the motion of one clip, drawn on its frames (frame i of each is frame i
    of `current_clip`). Person boxes and keypoints are in the pixels of the person artifact's `frame_size` (else
    of the decoded clip), the SMPL joints are projected through the motion file's camera."""

    def __init__(self, person: dict | None, pose: dict | None, motion: MotionClip | None = None):
        self.person = person
        self.pose = pose
        self.motion = motion

    def draw(self, image: Image.Image, index: int, native_size: tuple[int, int] | None = None) -> None:
        """Draw on a PIL image in place; `native_size`: (width, height) of the decoded frame before resizing."""
        draw = ImageDraw.Draw(image)
        line = max(1, round(max(image.size) / 200))
        width, height = native_size or image.size
        if self.person is not None and "frame_size" in self.person:
            width, height = (float(v) for v in self.person["frame_size"][:2])
        scale = (image.size[0] / width, image.size[1] / height)
        if self.person is not None:
            detections = self.person.get("detections")
            if detections is not None and len(detections):
                for row in detections[detections[:, 0] == index]:
                    draw.rectangle(_scaled(row[2:6], scale), outline=OTHER_BOX_COLOUR, width=line)
            boxes = self.person.get("main_box")
            if boxes is not None and index < len(boxes) and all(math.isfinite(v) for v in boxes[index]):
                draw.rectangle(_scaled(boxes[index], scale), outline=MAIN_BOX_COLOUR, width=2 * line)
        if self.motion is not None:
            self._draw_smpl(draw, image.size, index, line)
        if self.pose is not None and index < len(self.pose["keypoints"]):
            points = self.pose["keypoints"][index]
            visible = self.pose.get("visible")
            seen = (visible[index] if visible is not None else self.pose["scores"][index] > 0.3)
            seen = seen & np.isfinite(points).all(axis=1)
            xy = [(float(x) * scale[0], float(y) * scale[1]) for x, y in points]
            for a, b in COCO17_EDGES:
                if b < len(xy) and seen[a] and seen[b]:
                    draw.line([xy[a], xy[b]], fill=BONE_COLOUR, width=line)
            for k in np.flatnonzero(seen):
                radius = (1.5 if k < 17 else 0.7) * line + 0.5  # face and hand points smaller
                x, y = xy[k]
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=POINT_COLOUR)

    def _draw_smpl(self, draw: ImageDraw.ImageDraw, size: tuple[int, int], index: int, line: int) -> None:
        """The fitted SMPL joints projected through the motion file's camera: blue where the frame is valid,
        grey where it is not (the person is not seen there, or the fit does not explain what is seen)."""
        motion = self.motion
        if index >= motion.num_frames:
            return
        height, width = (float(v) for v in motion.image_size)
        joints = motion.joints[index]
        xy = joints[:, :2] / np.maximum(joints[:, 2:], 1e-3) * motion.focal[index] + np.array([width / 2, height / 2])
        points = [(float(x) * size[0] / width, float(y) * size[1] / height) for x, y in xy]
        colour = SMPL_COLOUR if bool(motion.valid[index]) else SMPL_INVALID_COLOUR
        for child, parent in enumerate(SMPL_PARENTS):
            if parent >= 0:
                draw.line([points[parent], points[child]], fill=colour, width=line)


def _scaled(box, scale: tuple[float, float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    return [x1 * scale[0], y1 * scale[1], max(x1, x2) * scale[0], max(y1, y2) * scale[1]]


class SkeletonViews:
    """A front and a side view of a clip's fitted 3D joints (orthographic, camera frame: the front view looks
    along the camera, the side view from its right with depth growing to the right), one scale for the whole
    clip so movement and depth drift show; the pelvis path of the whole clip faint behind, the floor (the lowest
    foot) as a line. Each frame is (width // 2, width) RGB: two square panels."""

    def __init__(self, motion: MotionClip, width: int):
        self.motion = motion
        self.panel = width // 2
        self.height = self.panel - self.panel % 2
        joints = motion.joints[motion.valid] if motion.valid.any() else motion.joints
        low, high = joints.reshape(-1, 3).min(axis=0), joints.reshape(-1, 3).max(axis=0)
        self.centre = (low + high) / 2
        extent = float(max(high - low)) + 0.3  # metres, with a margin
        self.pixels_per_m = (self.panel - 16) / max(extent, 0.5)
        self.floor = float(high[1])  # y points down: the lowest foot has the largest y
        self.background = self._background()

    def _xy(self, points: np.ndarray, axis: int, panel: int) -> np.ndarray:
        """(N, 3) → (N, 2) pixel positions in a panel: horizontal = x (front) or z (side), vertical = y."""
        horizontal = (points[:, axis] - self.centre[axis]) * self.pixels_per_m + self.panel / 2 + panel * self.panel
        vertical = (points[:, 1] - self.centre[1]) * self.pixels_per_m + self.height / 2
        return np.stack([horizontal, vertical], axis=-1)

    def _background(self) -> np.ndarray:
        import cv2  # drawing only: a report without clips to preview never loads OpenCV

        image = np.full((self.height, 2 * self.panel, 3), 250, np.uint8)
        pelvis = self.motion.joints[:, 0]
        floor_y = int(round((self.floor - self.centre[1]) * self.pixels_per_m + self.height / 2))
        for panel, (axis, label) in enumerate(((0, "front"), (2, "side: depth ->"))):
            left = panel * self.panel
            cv2.line(image, (left + 4, floor_y), (left + self.panel - 4, floor_y), (200, 200, 200), 1, cv2.LINE_AA)
            path = self._xy(pelvis, axis, panel).round().astype(np.int32)
            cv2.polylines(image, [path.reshape(-1, 1, 2)], False, (215, 215, 215), 1, cv2.LINE_AA)
            cv2.putText(image, label, (left + 4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (97, 97, 97), 1, cv2.LINE_AA)
        metre = int(round(self.pixels_per_m))
        cv2.line(image, (4, self.height - 6), (4 + metre, self.height - 6), (97, 97, 97), 1)
        cv2.putText(image, "1 m", (8 + metre, self.height - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (97, 97, 97), 1,
                    cv2.LINE_AA)
        cv2.line(image, (self.panel, 0), (self.panel, self.height), (224, 224, 224), 1)
        return image

    def frame(self, index: int) -> np.ndarray:
        import cv2

        image = self.background.copy()
        if index >= self.motion.num_frames:
            return image
        valid = bool(self.motion.valid[index])
        thickness = max(1, self.panel // 80)
        for panel, axis in enumerate((0, 2)):
            points = self._xy(self.motion.joints[index], axis, panel)
            for child, parent in enumerate(SMPL_PARENTS):
                if parent >= 0:
                    colour = _JOINT_SIDE[child] if valid else INVALID_3D_COLOUR
                    cv2.line(image, _pixel(points[parent]), _pixel(points[child]), colour, thickness, cv2.LINE_AA)
        if not valid:
            cv2.putText(image, "invalid frame", (self.panel + 4, self.height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                        (120, 120, 120), 1, cv2.LINE_AA)
        return image


def _pixel(point: np.ndarray) -> tuple[int, int]:
    return int(round(float(point[0]))), int(round(float(point[1])))
