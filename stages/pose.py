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
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from humove.artifacts import npz_bytes, person_track
from humove.clips import current_clip, decode_clip
from humove.keypoints.coco import FULL_BODY_JOINTS, LOWER_BODY_JOINTS
from humove.schemas import pose as pose_schema
from humove.stage import MapStage, Rejection, Resources, StageConfig, decision

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
    # Decisions (re-applied without recomputing):
    min_visible_keypoints: float = decision(10.0, "mean visible body keypoints (of 17) per seen frame")
    min_full_body_fraction: float = decision(0.5, "fraction of frames showing shoulders, hips, knees and ankles")
    min_lower_body_fraction: float = decision(0.2, "frames with a knee or ankle visible below which: close_up")
    min_score_mean: float = decision(0.4, "mean body keypoint score: below it, with keypoints off the box, "
                                          "the pose is implausible")
    min_in_box_fraction: float = decision(0.8, "visible keypoints inside the person box (see min_score_mean)")


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
    version = "1"
    schema = pose_schema.SCHEMA
    Config = PoseConfig
    resources = Resources(num_gpus=0, batch_size=4)
    prepare_resources = Resources(num_cpus=1, batch_size=1)
    description = "whole-body keypoints of the main person (DWPose ONNX; mediapipe Pose offline)"

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
        return {**item, "_crops": crops, "_boxes": boxes, "_visible": visible}

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
        )

    # Decisions -------------------------------------------------------------------------------------------
    def decide(self, record: dict) -> Rejection | None:
        c = self.config
        if record["pose_frames_seen"] == 0 or record["pose_visible_mean"] < c.min_visible_keypoints:
            return Rejection("few_visible_keypoints", record["pose_visible_mean"])
        if record["pose_score_mean"] < c.min_score_mean and record["pose_in_box_fraction"] < c.min_in_box_fraction:
            # unsure keypoints scattered outside the person box: a drawn figure or clutter, not a body
            return Rejection("implausible_pose", record["pose_score_mean"])
        if record["pose_lower_body_fraction"] < c.min_lower_body_fraction:
            return Rejection("close_up", record["pose_lower_body_fraction"])
        if record["pose_full_body_fraction"] < c.min_full_body_fraction:
            return Rejection("not_full_body", record["pose_full_body_fraction"])
        return None


def body_measures(xy: np.ndarray, scores: np.ndarray, visible: np.ndarray, boxes: np.ndarray, seen: np.ndarray,
                  box_margin: float) -> dict:
    """Visibility measures of the 17 body keypoints over the frames where the main person is seen.
    xy (F, K, 2), scores / visible (F, K), boxes (F, 4) xyxy, seen (F,) bool."""
    if not seen.any():
        return dict(pose_visible_mean=0.0, pose_visible_p10=0.0, pose_joint_visibility=[0.0] * BODY,
                    pose_full_body_fraction=0.0, pose_lower_body_fraction=0.0, pose_score_mean=0.0,
                    pose_in_box_fraction=0.0)
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
        pose_full_body_fraction=float(vis[:, FULL_BODY_JOINTS].all(axis=1).mean()),
        pose_lower_body_fraction=float(vis[:, LOWER_BODY_JOINTS].any(axis=1).mean()),
        pose_score_mean=float(scores[seen, :BODY].mean()),
        pose_in_box_fraction=float(inside.sum() / max(vis.sum(), 1)),
    )
