"""`person`: detect and track people on each clip, pick the main person, keep the span where they are visible.

CPU preparation (`prepare`): decode the shots clip once (all frames, the clip's size), pick the frames detection
runs on (every `detect_every`-th) and shrink those to `detect_max_side_px`. Model (`process_batch`): the person
detector on all sampled frames of the batch at once, then per clip: tracking (ByteTrack or an IoU tracker), the
main track (largest summed box area, EchoMotion A.4), its longest continuously visible span (gaps of up to
`max_gap_s` bridged), measures over that span, and the artifacts.

Artifact `<run_dir>/artifacts/person/<clip_id>.npz`, frames aligned to `current_clip` (the kept span):
`main_box (F, 4) float32` xyxy pixels (NaN where unseen; interpolated across bridged gaps), `main_score (F,)`,
`main_visible (F,) bool` (seen there), `detections (N, 7) float32` rows [frame, track_id, x1, y1, x2, y2, score]
of all tracks, `frame_size (2,) int32` (width, height), `picture_box (4,) float32` (the picture inside letterbox
bars, xyxy). When the span is shorter than the clip, the span is written as its own MP4 (`person_clip_*`) and
later stages read it through `humove.clips.current_clip`.

Decisions never rest on one signal alone where one signal is known to mislead (see `decide`). Sizes are
fractions of the picture (letterbox bars excluded) and durations seconds, so the same footage mirrored,
letterboxed, downscaled or at another frame rate gets the same decision. Which body parts are in the picture
(close-ups, truncation) is the pose stage's decision: it has keypoints in both pipelines, this stage only boxes.
"""

from __future__ import annotations

import os
import shutil
from typing import Literal

import numpy as np
from pydantic import model_validator

from humove.artifacts import npz_bytes
from humove.clips import SHOTS_CLIP_FIELDS, decode_clip, shots_clip
from humove.detection.base import FrameDetections, picture_box
from humove.schemas import person as person_schema
from humove.schemas.checksums import file_digest
from humove.stage import MapStage, Reads, Rejection, Resources, StageConfig, decision
from humove.tracking.base import box_iou
from humove.tracking.main_track import bridge_gaps, fill_boxes, longest_span, main_track, pick_main_track
from humove.video import Mp4Writer


class PersonConfig(StageConfig):
    backend: Literal["yolo", "mediapipe"] = "yolo"
    weights: str | None = None            # yolo: local .pt file (e.g. yolo11x.pt); never downloaded
    device: str = "cpu"                   # yolo: "cpu", "cuda", "cuda:0"
    image_size: int = 640                 # yolo inference size
    min_score: float = 0.1                # detections below this are dropped before tracking
    count_min_score: float = 0.4          # other people count (people per frame, second person) from this score
    max_people: int = 3                   # mediapipe: people searched per frame (by masking found ones)
    detect_every: int = 1                 # run detection on every n-th frame; the main box is interpolated
    detect_max_side_px: int = 640         # frames are shrunk to this longer side before detection
    tracker: Literal["bytetrack", "iou"] = "bytetrack"
    track_buffer_s: float = 1.0           # a lost track is kept this long
    # ByteTrack (ultralytics' names; defaults are its bytetrack.yaml's):
    track_high_thresh: float = 0.25       # first association with detections from this score
    track_low_thresh: float = 0.1         # second association with the rest from this score
    new_track_thresh: float = 0.25        # an unmatched detection from this score starts a track
    match_thresh: float = 0.8             # largest matching cost (1 − IoU, fused with the score) accepted
    max_gap_s: float = 0.25               # unseen gaps up to this long are bridged inside the visible span
    edge_margin: float = 0.01             # a box within this fraction of the picture side touches that edge
    crf: int = 23                         # trimmed clip encoding
    preset: str = "veryfast"
    near_gap: float = 0.5                 # another person this close beside the main one (gap between the boxes, in
                                          # main-person heights) with feet on the same ground line is "near"
    near_ground: float = 0.25             # ... feet (box bottoms) this close, in main-person heights
    cover_window_s: float = 0.5           # where the main person vanishes, the image is compared this long after
    # Decisions (re-applied without recomputing):
    min_presence_s: float = decision(0.5, "seconds the main person must be seen in all, else nothing persists: "
                                          "no_person", measure="person_seen_s")
    min_score_mean: float = decision(0.3, "mean detection score below which the person is not trusted: no_person",
                                     measure="person_score_mean")
    min_person_size: float = decision(0.2, "longer side of the main box / picture height below which: "
                                           "person_too_small (the longer side: a lying body is wide, not tall)",
                                      measure="person_size")
    min_span_s: float = decision(1.0, "shortest continuously visible span kept", measure="person_span_s")
    min_cover_change: float = decision(0.12, "image change where the main person vanished inside the picture "
                                             "(mean |Δ| / 255) from which something covered them: occluded",
                                       measure="person_exit_changes")
    max_second_person_ratio: float = decision(0.6, "second-largest / main box height from which: several_people",
                                              measure="person_second_ratio")
    max_near_fraction: float = decision(0.3, "fraction of frames with another person near the main one (any "
                                             "size) from which: several_people", measure="person_near_fraction")
    unstable_box_iou: float = decision(0.5, "median IoU of a box with the mean of its neighbours below which "
                                            "boxes are unstable", measure="person_box_stability")
    unstable_max_score: float = decision(0.6, "unstable boxes with a mean score below this: unstable_detection",
                                         measure="person_score_mean")

    @model_validator(mode="after")
    def _ordered_track_thresholds(self):
        if self.track_low_thresh > self.track_high_thresh:
            raise ValueError(f"track_low_thresh {self.track_low_thresh} is above track_high_thresh "
                             f"{self.track_high_thresh}")
        return self


def make_detector(config: PersonConfig):
    if config.backend == "yolo":
        from humove.detection.yolo import YoloPersonDetector

        return YoloPersonDetector(config.weights or "", device=config.device, image_size=config.image_size,
                                  min_score=config.min_score)
    from humove.detection.mediapipe_people import MediaPipePersonDetector

    return MediaPipePersonDetector(max_people=config.max_people, min_score=config.min_score)


def make_tracker(config: PersonConfig):
    if config.tracker == "bytetrack":
        from humove.tracking.bytetrack import ByteTrackTracker

        return ByteTrackTracker(high_score=config.track_high_thresh, low_score=config.track_low_thresh,
                                new_track_score=config.new_track_thresh, buffer_s=config.track_buffer_s,
                                match_threshold=config.match_thresh)
    from humove.tracking.iou import IouTracker

    return IouTracker(buffer_s=config.track_buffer_s)


class PersonStage(MapStage):
    name = "person"
    version = "2"
    schema = person_schema.SCHEMA
    Config = PersonConfig
    resources = Resources(num_gpus=0, batch_size=4)
    prepare_resources = Resources(num_cpus=1, batch_size=1)
    description = "detect and track people, pick the main person, trim to the span where they are visible"

    @classmethod
    def reads(cls, config: PersonConfig) -> Reads:
        return Reads(SHOTS_CLIP_FIELDS)  # the shots clip, never an earlier trim

    def setup(self) -> None:
        self.detector = make_detector(self.config)
        self.tracker = make_tracker(self.config)
        self.backend = f"{self.detector.name}+{self.tracker.name}"

    # CPU -------------------------------------------------------------------------------------------------
    def prepare(self, item: dict) -> dict:
        import cv2  # on the workers, not where the config is read (`humove report`)

        clip = shots_clip(item)
        frames = decode_clip(clip)  # (F, H, W, 3) uint8 RGB
        sampled = list(range(0, len(frames), max(1, self.config.detect_every)))
        height, width = frames[0].shape[:2]
        scale = min(1.0, self.config.detect_max_side_px / max(height, width))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        shrunk = [frames[i] if scale == 1.0 else cv2.resize(frames[i], size, interpolation=cv2.INTER_AREA)
                  for i in sampled]
        return {**item, "_frames": np.stack(frames), "_sampled": sampled, "_detect_frames": shrunk,
                "_detect_scale": scale, "_picture": picture_box([frames[i] for i in sampled])}

    # Model -----------------------------------------------------------------------------------------------
    def process_batch(self, items: list[dict]) -> list:
        # one detector call over every sampled frame of the batch, then split back per clip
        flat = [frame for item in items for frame in item["_detect_frames"]]
        found = self.detector.detect(flat) if flat else []
        results, offset = [], 0
        for item in items:
            count = len(item["_detect_frames"])
            mine, offset = found[offset:offset + count], offset + count
            try:
                results.append(self.process_detections(item, mine))
            except Exception as exc:  # noqa: BLE001 - one bad clip must not fail the batch
                results.append(exc)
        return results

    def process(self, item: dict) -> dict:
        return self.process_batch([item if "_frames" in item else self.prepare(item)])[0]

    def process_detections(self, item: dict, found: list[FrameDetections]) -> dict:
        c = self.config
        clip = shots_clip(item)
        frames: np.ndarray = item["_frames"]
        sampled: list[int] = item["_sampled"]
        num_frames, height, width = frames.shape[0], frames.shape[1], frames.shape[2]
        scale = float(item["_detect_scale"])
        picture = item["_picture"]
        # boxes in frame pixels, clipped to the picture: a box reaching into a letterbox bar is cut where the
        # picture ends, as it would be at a frame edge
        found = [FrameDetections(np.clip(d.boxes / scale, picture[[0, 1, 0, 1]], picture[[2, 3, 2, 3]]), d.scores)
                 for d in found]
        rate = clip.fps / max(1, c.detect_every)
        rows = self.tracker.track(sampled, found, rate)
        track_id = pick_main_track(rows)
        main = main_track(rows, track_id, num_frames, sampled)

        max_gap = int(round(c.max_gap_s * clip.fps))
        bridged = bridge_gaps(main.visible, max_gap)
        start, end = longest_span(bridged)
        span_count = int(np.sum(np.diff(np.concatenate([[0], bridged.astype(int)])) == 1))
        span_visible = main.visible[start:end]
        gaps = int(np.sum(np.diff(span_visible.astype(int)) == 1)) if end > start else 0
        measures = span_measures(rows, main, start, end, sampled, picture, c)
        exits = exit_changes(frames, main, start, end, picture, c.edge_margin,
                             int(round(c.cover_window_s * clip.fps)))

        record_id = item["clip_id"]
        boxes_url = self._write_boxes(record_id, rows, main, start, end, width, height, picture)
        trimmed = self._write_trimmed(record_id, frames, start, end, clip) if 0 < end - start < num_frames else {}
        return self.ok(
            record_id,
            person_model=self.detector.model, person_model_sha256=self.detector.model_sha256,
            person_tracker=self.tracker.name, person_count_reliable=bool(self.detector.count_reliable),
            person_detect_every=int(c.detect_every), person_num_frames=int(num_frames),
            person_picture_box=[float(v) for v in picture],
            person_num_tracks=int(len(np.unique(rows[:, 1]))) if len(rows) else 0,
            person_main_track_id=int(track_id), person_coverage=float(main.visible.mean()),
            person_seen_s=float(main.visible.sum() / clip.fps),
            person_span_start_frame=int(start), person_span_end_frame=int(end),
            person_span_s=float((end - start) / clip.fps), person_span_gaps=gaps,
            person_span_count=span_count, person_exit_changes=exits,
            person_boxes_path=boxes_url,
            person_clip_path=trimmed.get("path"), person_clip_sha256=trimmed.get("sha256"),
            person_clip_bytes=trimmed.get("bytes"), person_clip_num_frames=trimmed.get("num_frames"),
            **measures,
        )

    def _write_boxes(self, record_id: str, rows: np.ndarray, main, start: int, end: int, width: int,
                     height: int, picture: np.ndarray) -> str:
        if end <= start:  # nobody: all frames, nothing seen, so the arrays still align with the clip
            start, end = 0, len(main.visible)
        visible = main.visible[start:end].copy()
        box = main.box[start:end].copy()
        box[~visible] = np.nan
        box = fill_boxes(box) if visible.any() else box  # the span starts and ends seen: only bridged gaps fill
        kept = rows[(rows[:, 0] >= start) & (rows[:, 0] < end)].copy()
        kept[:, 0] -= start
        data = npz_bytes(main_box=box.astype(np.float32), main_score=main.score[start:end].astype(np.float32),
                         main_visible=visible, detections=kept.astype(np.float32),
                         frame_size=np.array([width, height], np.int32), picture_box=picture.astype(np.float32))
        url = self.context.artifact_url(record_id, "npz")
        self.context.storage.write_bytes(url, data)
        return url

    def _write_trimmed(self, record_id: str, frames: np.ndarray, start: int, end: int, clip) -> dict:
        scratch = self.context.scratch_dir()
        try:
            local = os.path.join(scratch, "span.mp4")
            with Mp4Writer(local, clip.fps, clip.width, clip.height, crf=self.config.crf,
                           preset=self.config.preset) as writer:
                for image in frames[start:end]:
                    writer.write(image)
            url = self.context.artifact_url(record_id, "mp4")
            self.context.storage.put_file(local, url)
            return {"path": url, "sha256": file_digest(local), "bytes": os.path.getsize(local),
                    "num_frames": writer.num_frames}
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # Decisions -------------------------------------------------------------------------------------------
    def decide(self, record: dict) -> Rejection | None:
        """The person stage's reasons, first match wins (README "Deciding like a curator")."""
        c = self.config
        r = record
        if r["person_main_track_id"] < 0:
            return Rejection("no_person", 0.0, "no person detected in any frame", "a person in some frame")
        if r["person_seen_s"] < c.min_presence_s:
            return Rejection("no_person", r["person_seen_s"], f"nothing persists: seen {r['person_seen_s']:.2f} s",
                             f"≥ {c.min_presence_s:g} s")
        if r["person_score_mean"] < c.min_score_mean:
            # a "person" the detector itself doubts throughout (hallucinations on empty frames, cartoons)
            return Rejection("no_person", r["person_score_mean"],
                             f"mean detection score {r['person_score_mean']:.2f}", f"≥ {c.min_score_mean:g}")
        if r["person_size"] < c.min_person_size:
            return Rejection("person_too_small", r["person_size"],
                             f"main person {r['person_size']:.2f} of the picture height",
                             f"≥ {c.min_person_size:g}")
        if r["person_span_s"] < c.min_span_s:
            return self._too_brief(r)
        if r["person_second_ratio"] >= c.max_second_person_ratio:
            return Rejection("several_people", r["person_second_ratio"],
                             f"second person {r['person_second_ratio']:.2f} of the main one's height",
                             f"< {c.max_second_person_ratio:g}")
        if r["person_near_fraction"] >= c.max_near_fraction:
            return Rejection("several_people", r["person_near_fraction"],
                             f"another person beside the main one in {r['person_near_fraction']:.0%} of frames",
                             f"< {c.max_near_fraction:.0%}")
        if r["person_box_stability"] < c.unstable_box_iou and r["person_score_mean"] < c.unstable_max_score:
            # jumping boxes of middling confidence: clutter or a drawn figure, not one clear person
            return Rejection("unstable_detection", r["person_box_stability"],
                             f"box stability {r['person_box_stability']:.2f} at mean score "
                             f"{r['person_score_mean']:.2f}",
                             f"stability ≥ {c.unstable_box_iou:g} or score ≥ {c.unstable_max_score:g}")
        return None

    def _too_brief(self, r: dict) -> Rejection:
        """The longest visible span is too short: why the person is not seen longer decides the reason."""
        c = self.config
        span, needs = r["person_span_s"], f"≥ {c.min_span_s:g} s"
        changes = r["person_exit_changes"] or []
        if changes and max(changes) >= c.min_cover_change:
            # where they vanished inside the picture, the image changed: something moved over them
            return Rejection("occluded", span, f"seen {span:.2f} s at a stretch, then covered (image change "
                             f"{max(changes):.2f} ≥ {c.min_cover_change:g})", needs)
        if changes or r["person_span_count"] >= 3:
            # vanished inside the picture with nothing over them, or many short appearances: the detector flickers
            return Rejection("unstable_detection", span, f"seen {span:.2f} s at a stretch in "
                             f"{r['person_span_count']} pieces, lost inside the picture with nothing covering "
                             "them", needs)
        return Rejection("main_person_too_brief", span, f"seen {span:.2f} s at a stretch", needs)


def span_measures(rows: np.ndarray, main, start: int, end: int, sampled: list[int], picture: np.ndarray,
                  config: PersonConfig) -> dict:
    """Raw measures over the sampled frames of [start, end) where the main person is seen, sizes as fractions of
    the picture (xyxy pixels, letterbox bars excluded). Other people count only from `count_min_score`: a
    doubtful low-score box must not make a crowd."""
    frames = [f for f in sampled if start <= f < end and main.visible[f]]
    empty = dict(person_people_mean=0.0, person_people_max=0, person_box_height=0.0, person_size=0.0,
                 person_box_area=0.0, person_box_aspect=0.0, person_second_ratio=0.0, person_second_present=0.0,
                 person_near_fraction=0.0, person_touch_top=0.0, person_touch_bottom=0.0, person_touch_side=0.0,
                 person_score_mean=0.0, person_box_stability=0.0)
    if not frames:
        return empty
    people, seconds, near = [], [], []
    for f in frames:
        here = rows[rows[:, 0] == f]
        others = here[(here[:, 1] != main.track_id) & (here[:, 6] >= config.count_min_score)]
        people.append(1 + len(others))
        mx0, my0, mx1, my1 = main.box[f]
        main_h = max(my1 - my0, 1e-6)
        second_h = float((others[:, 5] - others[:, 3]).max()) if len(others) else 0.0
        seconds.append(second_h / main_h)
        # beside the main person at any size: a small horizontal gap and the feet on about the same ground line
        gap = np.maximum(others[:, 2] - mx1, mx0 - others[:, 4]) / main_h
        near.append(bool(np.any((gap <= config.near_gap) & (np.abs(others[:, 5] - my1) / main_h
                                                              <= config.near_ground))))
    box = main.box[frames]
    px0, py0, px1, py1 = (float(v) for v in picture)
    pic_w, pic_h = px1 - px0, py1 - py0
    widths, heights = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    mx, my = config.edge_margin * pic_w, config.edge_margin * pic_h
    return dict(
        person_people_mean=float(np.mean(people)), person_people_max=int(np.max(people)),
        person_box_height=float(np.median(heights / pic_h)),
        person_size=float(np.median(np.maximum(widths, heights) / pic_h)),
        person_box_area=float(np.median(widths * heights / (pic_w * pic_h))),
        person_box_aspect=float(np.median(widths / np.maximum(heights, 1e-6))),
        person_second_ratio=float(np.median(seconds)), person_second_present=float(np.mean(np.array(seconds) > 0)),
        person_near_fraction=float(np.mean(near)),
        person_touch_top=float(np.mean(box[:, 1] <= py0 + my)),
        person_touch_bottom=float(np.mean(box[:, 3] >= py1 - my)),
        person_touch_side=float(np.mean((box[:, 0] <= px0 + mx) | (box[:, 2] >= px1 - mx))),
        person_score_mean=float(np.mean(main.score[frames])),
        person_box_stability=box_stability(box),
    )


def box_stability(box: np.ndarray) -> float:
    """Median IoU of each box (B, 4) with the mean of its two neighbours: 1 for boxes that move smoothly at
    any speed, low for boxes that jump about. Steady motion cancels out, so it hardly depends on the frame rate."""
    if len(box) < 3:
        return 1.0
    expected = (box[:-2] + box[2:]) / 2
    return float(np.median([box_iou(a, b)[0, 0] for a, b in zip(box[1:-1], expected, strict=True)]))


def exit_changes(frames: np.ndarray, main, start: int, end: int, picture: np.ndarray,
                 edge_margin: float, window: int) -> list[float]:
    """Where the kept span [start, end) begins or ends inside the picture (not at the clip's ends, not with the
    box at a picture edge: the person did not just walk in or out), how much the image inside the main box
    changes within `window` frames beyond it: max over those frames of mean |Δ| / 255 against the box at the
    span's own edge frame. A person covered by a passing car gives a large change, a detector that loses a
    person still standing there a small one. One value per such span end (0–2)."""
    if end <= start:
        return []
    px0, py0, px1, py1 = (float(v) for v in picture)
    mx, my = edge_margin * (px1 - px0), edge_margin * (py1 - py0)
    changes = []
    for edge, beyond in ((start, range(start - 1, max(-1, start - 1 - window), -1)),
                         (end - 1, range(end, min(len(frames), end + window)))):
        if len(beyond) == 0:
            continue
        x0, y0, x1, y1 = main.box[edge]
        if x0 <= px0 + mx or y0 <= py0 + my or x1 >= px1 - mx or y1 >= py1 - my:
            continue  # at the picture's edge: walked in or out
        reference = _patch(frames[edge], main.box[edge])
        changes.append(max(float(np.abs(_patch(frames[f], main.box[edge]) - reference).mean()) for f in beyond))
    return changes


def _patch(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The box's pixels resized to 16 × 32, float 0–1."""
    import cv2

    x0, y0, x1, y1 = (int(round(v)) for v in box)
    crop = frame[max(0, y0):max(y0 + 1, y1), max(0, x0):max(x0 + 1, x1)]
    return cv2.resize(crop, (16, 32), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
