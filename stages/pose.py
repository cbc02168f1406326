"""`pose`: whole-body keypoints of the main person on every frame of the current clip.

CPU preparation (`prepare`): decode `current_clip(item)` once (the person stage's trimmed span when it wrote
one), read the person stage's main boxes and crop the person on each frame where they are seen. Model
(`process_batch`): the keypoint model on the crops of every clip of the batch at once (DWPose ONNX, or
mediapipe Pose offline), then per clip the visibility measures and the artifact.

Artifact `<run_dir>/artifacts/pose/<clip_id>.npz`, frames aligned to `current_clip`: `keypoints (F, K, 2)
float32` frame pixels, `scores (F, K) float32`, `layout` ("coco17" or "coco_wholebody133"), `visible (F, K)
bool` (score > `score_threshold`), and `world (F, K, 3)` metric landmarks when the backend gives them
(mediapipe); frames where the main person is not seen have NaN keypoints and zero scores. Measures use the
17 COCO body points, which both layouts start with.

Which body parts are in the picture decides close-ups and truncation here, in both pipelines (the person stage
has boxes only, and a box's shape says little: arms out, a dance or a bicycle make a full body wide). Per frame
a part (head, shoulders, hips, knees, ankles) is *seen* when one of its points is visible (score above
`score_threshold`) inside the picture (the person stage's `person_picture_box`: the frame less letterbox bars);
a part not seen is *cut* when one of its points lies outside the picture or the person box reaches the picture's
edge, else *hidden* (inside the picture, covered). See `decide` and README "Deciding like a curator".
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from humove.artifacts import PERSON_TRACK_FIELDS, npz_bytes, person_track
from humove.clips import SHOTS_CLIP_FIELDS, TRIMMED_CLIP_FIELDS, current_clip, decode_clip
from humove.keypoints.coco import BODY_PART_NAMES, BODY_PARTS
from humove.schemas import pose as pose_schema
from humove.stage import MapStage, Reads, Rejection, Resources, StageConfig, decision

BODY = 17  # COCO body keypoints at the front of both layouts


class PoseConfig(StageConfig):
    backend: Literal["dwpose", "mediapipe"] = "dwpose"
    weights: str | None = None            # dwpose: local dw-ll_ucoco_384.onnx; never downloaded
    device: str = "cpu"                   # dwpose: "cpu" or "cuda[:i]" (onnxruntime CUDA provider)
    input_width: int = 288                # dwpose: model input size (checked against the model file)
    input_height: int = 384
    crop_margin: float = 1.25             # mediapipe: square crop side = max(w, h) × this
    score_threshold: float = 0.3          # a keypoint is visible above this score (stored in the artifact)
    box_margin: float = 0.1               # a keypoint within this fraction of the box size counts as in the box
    edge_margin: float = 0.01             # a person box within this fraction of the picture side reaches its edge
    point_tolerance: float = 0.02         # a keypoint this far past the picture's edge (fraction of its side) is still
                                          # in it: keypoints jitter by a few pixels where feet touch the edge
    # Decisions (re-applied without recomputing):
    min_visible_keypoints: float = decision(10.0, "mean visible body keypoints (of 17) per seen frame",
                                             measure="pose_visible_mean")
    min_score_mean: float = decision(0.4, "mean body keypoint score: below it, with keypoints off the box, "
                                          "the pose is implausible", measure="pose_score_mean")
    min_in_box_fraction: float = decision(0.8, "visible keypoints inside the person box (see min_score_mean)",
                                           measure="pose_in_box_fraction")
    min_part_fraction: float = decision(0.5, "fraction of frames a body part must be seen in the picture to count "
                                             "as in frame", measure="pose_part_seen")
    max_outside_fraction: float = decision(0.5, "fraction of frames with head, shoulder, hip, knee or ankle points "
                                                "outside the picture from which: truncated (a body cut at a side)",
                                           measure="pose_outside_fraction")
    min_full_body_fraction: float = decision(0.5, "fraction of frames showing all five body parts at once",
                                              measure="pose_full_body_fraction")


def make_backend(config: PoseConfig):
    if config.backend == "dwpose":
        from humove.keypoints.dwpose import DWPoseOnnx

        return DWPoseOnnx(config.weights or "", device=config.device,
                          input_size=(config.input_width, config.input_height))
    from humove.keypoints.mediapipe_coco import MediaPipeCoco17

    return MediaPipeCoco17(crop_margin=config.crop_margin)


def prepare_crops(config: PoseConfig, frames: np.ndarray, boxes: np.ndarray, visible: np.ndarray):
    """The backend's CPU cropping, without loading its model (it runs in CPU workers)."""
    if config.backend == "dwpose":
        from humove.keypoints.dwpose import prepare_crops as dwpose_crops

        return dwpose_crops(frames, boxes, visible, (config.input_width, config.input_height))
    from humove.keypoints.mediapipe_coco import prepare_crops as mediapipe_crops

    return mediapipe_crops(frames, boxes, visible, config.crop_margin)


class PoseStage(MapStage):
    name = "pose"
    version = "2"
    schema = pose_schema.SCHEMA
    Config = PoseConfig
    resources = Resources(num_gpus=0, batch_size=4)
    prepare_resources = Resources(num_cpus=1, batch_size=1)
    description = "whole-body keypoints of the main person (DWPose ONNX; mediapipe Pose offline)"

    @classmethod
    def reads(cls, config: PoseConfig) -> Reads:
        # the clip, the person's boxes in it and the picture inside letterbox bars (`picture_of`)
        return Reads(SHOTS_CLIP_FIELDS | PERSON_TRACK_FIELDS | {"person_picture_box"}, if_present=TRIMMED_CLIP_FIELDS)

    def setup(self) -> None:
        self.keypoints = make_backend(self.config)
        self.backend = self.keypoints.name

    def _backend(self):
        if not hasattr(self, "keypoints"):
            self.setup()
        return self.keypoints

    # CPU -------------------------------------------------------------------------------------------------
    def prepare(self, item: dict) -> dict:
        clip = current_clip(item)
        if not item.get("person_boxes_path"):
            raise ValueError(f"clip {item['clip_id']}: no person_boxes_path (the person stage must run first)")
        person = person_track(item)
        boxes, visible = person.boxes, person.visible
        frames = decode_clip(clip)
        if len(frames) != len(boxes):
            raise ValueError(f"clip {item['clip_id']}: {clip.path} has {len(frames)} frames, the person boxes "
                             f"{len(boxes)}")
        crops = prepare_crops(self.config, frames, boxes, visible)
        return {**item, "_crops": crops, "_boxes": boxes, "_visible": visible, "_size": frames.shape[1:3]}

    # Model -----------------------------------------------------------------------------------------------
    def process_batch(self, items: list[dict]) -> list:
        backend = self._backend()
        outputs = backend.infer([item["_crops"] for item in items]) if items else []
        results = []
        for item, (xy, scores, *world) in zip(items, outputs, strict=True):
            try:
                results.append(self._finish(item, xy, scores, world[0] if world else None))
            except Exception as exc:  # noqa: BLE001 - one bad clip must not fail the batch
                results.append(exc)
        return results

    def process(self, item: dict) -> dict:
        return self.process_batch([item if "_crops" in item else self.prepare(item)])[0]

    def _finish(self, item: dict, xy: np.ndarray, scores: np.ndarray, world: np.ndarray | None = None) -> dict:
        c = self.config
        seen = item["_visible"]
        xy = xy.astype(np.float32).copy()
        scores = scores.astype(np.float32).copy()
        xy[~seen], scores[~seen] = np.nan, 0.0
        visible = scores > c.score_threshold
        url = self.context.artifact_url(item["clip_id"], "npz")
        arrays = dict(keypoints=xy, scores=scores, layout=np.array(self.keypoints.layout_name), visible=visible)
        if world is not None:  # metric 3D landmarks (mediapipe): the offline SMPL fitter uses them for depth
            arrays["world"] = np.where(seen[:, None, None], world, np.nan).astype(np.float32)
        self.context.storage.write_bytes(url, npz_bytes(**arrays))
        return self.ok(
            item["clip_id"], pose_model=self.keypoints.model, pose_model_sha256=self.keypoints.model_sha256,
            pose_layout=self.keypoints.layout_name, pose_score_threshold=float(c.score_threshold),
            pose_num_frames=int(len(seen)), pose_frames_seen=int(seen.sum()), pose_keypoints_path=url,
            **body_measures(xy, scores, visible, item["_boxes"], seen, c.box_margin),
            **part_measures(xy, visible, item["_boxes"], seen, picture_of(item, item["_size"]),
                            c.edge_margin, c.point_tolerance),
        )

    # Decisions -------------------------------------------------------------------------------------------
    def decide(self, record: dict) -> Rejection | None:
        """The pose stage's reasons, first match wins (README "Deciding like a curator")."""
        c = self.config
        r = record
        few = Rejection("few_visible_keypoints", r["pose_visible_mean"],
                        f"{r['pose_visible_mean']:.1f} of 17 body keypoints visible per frame",
                        f"≥ {c.min_visible_keypoints:g}")
        if r["pose_frames_seen"] == 0 or max(r["pose_part_seen"]) < c.min_part_fraction:
            return few  # no body part seen: nothing to judge the framing by
        if r["pose_score_mean"] < c.min_score_mean and r["pose_in_box_fraction"] < c.min_in_box_fraction:
            # unsure keypoints scattered outside the person box: a drawn figure or clutter, not a body
            return Rejection("implausible_pose", r["pose_score_mean"],
                             f"mean keypoint score {r['pose_score_mean']:.2f} with {r['pose_in_box_fraction']:.0%} "
                             "of them in the person box",
                             f"score ≥ {c.min_score_mean:g} or ≥ {c.min_in_box_fraction:.0%} in the box")
        # the framing before the keypoint count: a close-up shows few keypoints because it is a close-up
        framing = self._framing(r)
        if framing is not None:
            return framing
        if r["pose_visible_mean"] < c.min_visible_keypoints:
            return few
        return self._full_body(r)

    def _framing(self, r: dict) -> Rejection | None:
        """Which body parts are in the picture: close_up, legs_only, truncated, or occluded (hidden inside it)."""
        c = self.config
        seen = dict(zip(BODY_PART_NAMES, r["pose_part_seen"], strict=True))
        cut = dict(zip(BODY_PART_NAMES, r["pose_part_cut"], strict=True))
        in_frame = [p for p in BODY_PART_NAMES if seen[p] >= c.min_part_fraction]
        missing = [p for p in BODY_PART_NAMES if p not in in_frame]
        if missing:
            # a missing part is cut by the frame when it is more often cut than hidden (1 - seen - cut)
            covered = [p for p in missing if cut[p] < 1 - seen[p] - cut[p]]
            upper = "head" in in_frame or "shoulders" in in_frame
            lower = "knees" in in_frame or "ankles" in in_frame
            reason = "occluded" if covered else ("close_up" if not lower else "legs_only" if not upper
                                                 else "truncated")
            parts = ", ".join(f"{p} {seen[p]:.0%}" for p in BODY_PART_NAMES)
            where = (f"{', '.join(covered)} hidden inside the picture" if covered
                     else f"{', '.join(missing)} cut by the frame")
            return Rejection(reason, float(len(in_frame)),
                             f"{len(in_frame)} of 5 body parts in frame ({where}; seen in: {parts} of frames)",
                             f"each part seen in ≥ {c.min_part_fraction:.0%} of frames")
        if r["pose_outside_fraction"] >= c.max_outside_fraction:
            return Rejection("truncated", r["pose_outside_fraction"],
                             f"body points outside the picture in {r['pose_outside_fraction']:.0%} of frames",
                             f"< {c.max_outside_fraction:.0%}")
        return None

    def _full_body(self, r: dict) -> Rejection | None:
        c = self.config
        if r["pose_full_body_fraction"] < c.min_full_body_fraction:
            return Rejection("not_full_body", r["pose_full_body_fraction"],
                             f"all five body parts seen at once in {r['pose_full_body_fraction']:.0%} of frames",
                             f"≥ {c.min_full_body_fraction:.0%}")
        return None


def picture_of(item: dict, size) -> np.ndarray:
    """The picture (4,) xyxy pixels the person stage found (the frame less letterbox bars); the whole frame for
    records written before it did. size: (height, width)."""
    box = item.get("person_picture_box")
    if box is not None and len(box) == 4:
        return np.asarray(box, np.float64)
    height, width = size
    return np.array([0.0, 0.0, width, height])


def body_measures(xy: np.ndarray, scores: np.ndarray, visible: np.ndarray, boxes: np.ndarray, seen: np.ndarray,
                  box_margin: float) -> dict:
    """Visibility measures of the 17 body keypoints over the frames where the main person is seen.
    xy (F, K, 2), scores / visible (F, K), boxes (F, 4) xyxy, seen (F,) bool."""
    if not seen.any():
        return dict(pose_visible_mean=0.0, pose_visible_p10=0.0, pose_joint_visibility=[0.0] * BODY,
                    pose_score_mean=0.0, pose_in_box_fraction=0.0)
    vis = visible[seen, :BODY]
    counts = vis.sum(axis=1)
    box = boxes[seen]
    pad = box_margin * np.maximum(box[:, 2:] - box[:, :2], 1.0)
    lo, hi = (box[:, :2] - pad)[:, None], (box[:, 2:] + pad)[:, None]
    points = xy[seen, :BODY]
    inside = np.all((points >= lo) & (points <= hi), axis=-1) & vis
    return dict(
        pose_visible_mean=float(counts.mean()), pose_visible_p10=float(np.percentile(counts, 10)),
        pose_joint_visibility=[float(v) for v in vis.mean(axis=0)],
        pose_score_mean=float(scores[seen, :BODY].mean()),
        pose_in_box_fraction=float(inside.sum() / max(vis.sum(), 1)),
    )


# COCO-17 points whose position outside the picture means the body is cut: nose, shoulders, hips, knees, ankles
# (not wrists or elbows: a hand raised out of the picture leaves the body whole)
CORE_POINTS = np.array([0, 5, 6, 11, 12, 13, 14, 15, 16])


def part_measures(xy: np.ndarray, visible: np.ndarray, boxes: np.ndarray, seen: np.ndarray, picture: np.ndarray,
                  edge_margin: float = 0.01, point_tolerance: float = 0.02) -> dict:
    """Which body parts are in the picture, over the frames where the main person is seen and the keypoint model
    found a body. xy (F, K, 2) pixels, visible (F, K) bool, boxes (F, 4) xyxy, seen (F,) bool, picture (4,) xyxy.

    Per part (BODY_PART_NAMES): `pose_part_seen` fraction of frames with one of its points visible in the
    picture, `pose_part_cut` fraction of frames where it is not seen and the frame cuts it (a point outside the
    picture, or the box at the picture's edge); `pose_full_body_fraction` frames with all parts seen;
    `pose_outside_fraction` frames with a core point (CORE_POINTS) outside the picture. A point less than
    `point_tolerance` of the picture's side past its edge counts as in it; a box within `edge_margin` of the edge
    reaches it."""
    posed = seen & np.isfinite(xy[:, :BODY]).all(axis=(1, 2))
    if not posed.any():
        zeros = [0.0] * len(BODY_PARTS)
        return dict(pose_part_seen=zeros, pose_part_cut=zeros, pose_full_body_fraction=0.0,
                    pose_outside_fraction=0.0)
    x0, y0, x1, y1 = picture
    points, vis, box = xy[posed, :BODY], visible[posed, :BODY], boxes[posed]
    tx, ty = point_tolerance * (x1 - x0), point_tolerance * (y1 - y0)
    inside = ((points[..., 0] >= x0 - tx) & (points[..., 0] <= x1 + tx)
              & (points[..., 1] >= y0 - ty) & (points[..., 1] <= y1 + ty))
    mx, my = edge_margin * (x1 - x0), edge_margin * (y1 - y0)
    at_edge = (box[:, 0] <= x0 + mx) | (box[:, 1] <= y0 + my) | (box[:, 2] >= x1 - mx) | (box[:, 3] >= y1 - my)
    part_seen = np.stack([(inside & vis)[:, idx].any(axis=1) for idx in BODY_PARTS.values()], axis=1)
    part_out = np.stack([~inside[:, idx].all(axis=1) for idx in BODY_PARTS.values()], axis=1)
    part_cut = ~part_seen & (part_out | at_edge[:, None])
    return dict(
        pose_part_seen=[float(v) for v in part_seen.mean(axis=0)],
        pose_part_cut=[float(v) for v in part_cut.mean(axis=0)],
        pose_full_body_fraction=float(part_seen.all(axis=1).mean()),
        pose_outside_fraction=float((~inside[:, CORE_POINTS]).any(axis=1).mean()),
    )
