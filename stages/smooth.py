"""`smooth` (CPU): temporal smoothing of the raw SMPL fit, 3D joints by SMPL forward, frame validity, and the
motion-quality filter. Writes the final motion file that the shards carry as `{key}.motion.npz`.

A frame is valid only where the person is really seen and the fit explains what is seen: the person stage saw
the main person there, the body parts the dataset promises (`required_parts`: hips, knees and ankles by
default) are seen, the pose stage found enough confident keypoints, and the projected SMPL joints agree with them
(per-frame PCK). `joint_valid` in the motion file marks, per frame and SMPL joint, whether keypoints seen in the
picture show it (`humove.keypoints.base`), for `min_seen_s` in a row at least (a keypoint model calls a hidden leg
visible now and then); it is False on every invalid frame. Frames where a required part is
hidden enter smoothing invalid: short gaps are bridged for the smoothing filter only and stay invalid, so legs
hidden behind a car, or a person behind a passing van, never become an invented body.

Changing any setting here re-runs this stage alone; the `smpl` stage (GPU) before it is never re-run.

The body model is the one the `smpl` stage recorded (name, file, SHA-256 of its arrays): this stage has no body
model setting of its own, so the two can never disagree.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from humove.artifacts import PERSON_TRACK_FIELDS, POSE_TRACK_FIELDS, person_track, pose_track
from humove.clips import SHOTS_CLIP_FIELDS, TRIMMED_CLIP_FIELDS, current_clip
from humove.keypoints.base import SMPL_BODY_PARTS, body_parts_seen, steady
from humove.motion.quality import frame_agreement, motion_quality
from humove.motion.smoothing import SmoothingConfig, runs, smooth_motion
from humove.schemas import smooth as smooth_schema
from humove.schemas.motion import load_motion, motion_to_bytes
from humove.stage import MapStage, Reads, Rejection, Resources, StageConfig, decision
from humove.storage import Storage


class SmoothConfig(StageConfig):
    method: Literal["gaussian", "savgol", "one_euro"] = "gaussian"
    sigma: float | None = None          # shorthand for both Gaussian sigmas (frames), e.g. --set smooth.sigma=2
    rotation_sigma: float = 2.0
    translation_sigma: float = 3.0
    rotation_window: int = 11           # Savitzky–Golay windows (odd)
    translation_window: int = 15
    max_gap: int = 10                   # frames bridged for filtering (they stay invalid in the output)
    # Frame validity
    required_parts: list[str] = Field(default_factory=lambda: ["hips", "knees", "ankles"])  # seen on valid frames
    min_score: float = 0.3              # keypoint confidence that counts as seen
    min_seen_s: float = 0.25            # a joint seen for less than this in a row counts as hidden (a model's guess)
    min_frame_keypoints: int = 6        # confident body keypoints matched to SMPL joints
    pck_alpha: float = 0.1              # a keypoint agrees within this share of the person's height
    min_frame_pck: float = 0.5          # share of a frame's keypoints that must agree with the fit
    # Motion-quality decisions (re-applied without recomputing)
    max_jitter_mps2: float = decision(60.0, "mean joint acceleration over valid frames",
                                      measure="motion_jitter_mps2")
    max_foot_sliding_mps: float = decision(0.8, "mean foot speed while standing on the floor (m/s)",
                                           measure="motion_foot_sliding_mps")
    max_depth_drift_mps: float = decision(0.08, "root depth change per second the image size does not support",
                                          measure="motion_depth_drift_mps")
    max_abs_beta: float = decision(3.0, "largest |body shape coefficient| (SMPL's β are standard normal)",
                                   measure="motion_max_abs_beta")
    max_reprojection_rel: float = decision(0.12, "reprojection error / person height (a cartoon fit: 0.46)",
                                           measure="motion_reprojection_rel")
    min_agreement_pck: float = decision(0.7, "share of keypoints the fit explains", measure="motion_agreement_pck")
    max_limb_length_error: float = decision(0.3, "median |log| limb-length ratio, fit vs keypoints",
                                            measure="motion_limb_length_error")
    min_valid_fraction: float = decision(0.6, "share of frames where the person is seen and fitted (and, for "
                                              "required_parts_hidden, where the required parts are seen)",
                                         measure="motion_valid_fraction")
    min_longest_valid_s: float = decision(1.0, "longest continuous valid span", measure="motion_longest_valid_s")

    @field_validator("required_parts")
    @classmethod
    def _known_parts(cls, parts: list[str]) -> list[str]:
        unknown = [part for part in parts if part not in SMPL_BODY_PARTS]
        if unknown:
            raise ValueError(f"unknown body parts {unknown}: expected some of {list(SMPL_BODY_PARTS)}")
        return parts

    @model_validator(mode="before")
    @classmethod
    def _moved_settings(cls, data):
        if isinstance(data, dict) and "smpl_dir" in data:
            raise ValueError("smooth.smpl_dir is gone: smooth uses the body model the smpl stage recorded; set the "
                             "SMPL folder once, with HUMOVE_SMPL_DIR (pipeline file: run.env) or smpl.smpl_dir")
        return data

    def smoothing(self) -> SmoothingConfig:
        sigmas = {"rotation_sigma": self.sigma, "translation_sigma": self.sigma} if self.sigma else {
            "rotation_sigma": self.rotation_sigma, "translation_sigma": self.translation_sigma}
        return SmoothingConfig(method=self.method, rotation_window=self.rotation_window,
                               translation_window=self.translation_window, max_gap=self.max_gap, **sigmas)


class SmoothStage(MapStage):
    name = "smooth"
    version = "3"
    schema = smooth_schema.SCHEMA
    Config = SmoothConfig
    resources = Resources(num_cpus=1, batch_size=4)
    description = "temporal smoothing, 3D joints, frame validity and the motion-quality filter"
    backend = "humove.motion"

    @classmethod
    def reads(cls, config: SmoothConfig) -> Reads:
        """The raw motion and the body model it names, the keypoints and person boxes it is checked against, the
        clip's size and rate."""
        raw = {"smpl_motion_path", "smpl_motion_sha256", "smpl_body_model", "smpl_body_model_sha256",
               "smpl_body_model_file"}
        return Reads(SHOTS_CLIP_FIELDS | PERSON_TRACK_FIELDS | POSE_TRACK_FIELDS | raw, if_present=TRIMMED_CLIP_FIELDS)

    def setup(self) -> None:
        self._body_models = {}

    def body_model(self, item: dict, recorded_in_file: str):
        """The body model the smpl stage recorded for this item (loaded once per model)."""
        name, digest = item["smpl_body_model"], item["smpl_body_model_sha256"]
        if recorded_in_file != name:
            raise ValueError(f"smooth: the raw motion file names body model {recorded_in_file!r}, its smpl record "
                             f"{name!r}")
        if (name, digest) not in self._body_models:
            from humove.motion.body_model import load_recorded_body_model  # smplx and torch: only on the workers

            try:
                self._body_models[name, digest] = load_recorded_body_model(name, digest,
                                                                           item["smpl_body_model_file"])
            except (FileNotFoundError, ValueError) as exc:
                raise type(exc)(f"smooth: {exc}") from exc
        return self._body_models[name, digest]

    def process(self, item: dict) -> dict:
        c = self.config
        clip = current_clip(item)
        raw = load_motion(Storage(item["smpl_motion_path"]).read_bytes(item["smpl_motion_path"]))
        keypoints = pose_track(item, (clip.height, clip.width))
        joints_seen = steady(keypoints.smpl_joints_seen(c.min_score), round(c.min_seen_s * clip.fps))  # (F, 24)
        person_seen = person_track(item).visible
        parts_seen = body_parts_seen(joints_seen, c.required_parts)
        seen = person_seen & raw.valid & parts_seen
        # Frames where the person or a required part is hidden are smoothed over but never made valid.
        smoothed = smooth_motion(replace(raw, valid=seen, joint_valid=joints_seen), c.smoothing(),
                                 self.body_model(item, raw.body_model))
        pck, count = frame_agreement(smoothed, keypoints, c.min_score, c.pck_alpha)
        valid = smoothed.valid & (count >= c.min_frame_keypoints) & (np.nan_to_num(pck) >= c.min_frame_pck)
        final = replace(smoothed, valid=valid)  # joint_valid narrowed to the valid frames
        # How well the fit explains what is seen: over every frame where the person and the required parts are
        # seen (a cartoon has no valid frame, but its reprojection error is what says why); the motion's own
        # quality over valid ones.
        fit = motion_quality(smoothed, keypoints, min_score=c.min_score)
        quality = motion_quality(final, keypoints, min_score=c.min_score)
        longest = max((stop - start for start, stop in runs(valid)), default=0)
        joint_valid_fraction = final.joint_valid[valid].mean(axis=0) if valid.any() else np.zeros(24)

        data = motion_to_bytes(final)
        url = self.context.artifact_url(item["clip_id"], "motion.npz")
        self.context.storage.write_bytes(url, data)
        settings = {"smoothing": c.smoothing().as_record(), "validity": {
            "required_parts": c.required_parts, "min_score": c.min_score, "min_seen_s": c.min_seen_s,
            "min_frame_keypoints": c.min_frame_keypoints, "pck_alpha": c.pck_alpha, "min_frame_pck": c.min_frame_pck},
            "raw": item["smpl_motion_sha256"]}
        return self.ok(
            item["clip_id"], motion_path=url, motion_sha256=hashlib.sha256(data).hexdigest(),
            motion_body_model=final.body_model, motion_num_frames=final.num_frames,
            motion_settings=json.dumps(settings, sort_keys=True),
            motion_jitter_mps2=_finite(quality["jitter_mps2"]),
            motion_foot_sliding_mps=_finite(quality["foot_sliding_mps"]),
            motion_depth_drift_mps=_finite(quality["depth_drift_mps"]),
            motion_max_abs_beta=_finite(quality["max_abs_beta"]),
            motion_reprojection_rel=_finite(fit["reprojection_rel"]),
            motion_agreement_pck=_finite(fit["agreement_pck"]),
            motion_limb_length_error=_finite(fit["limb_length_error"]),
            motion_required_parts_fraction=float((person_seen & parts_seen).mean()),
            motion_valid_fraction=float(valid.mean()),
            motion_longest_valid_s=longest / clip.fps,
            motion_joint_valid_fraction=[float(v) for v in joint_valid_fraction],
        )

    def decide(self, record: dict) -> Rejection | None:
        # Order: does the fit explain the person seen, then are the promised body parts seen, then is the person
        # seen long enough, then is the body plausible, then is the motion clean. The first failing check is the
        # reason.
        measures = self.Config.decision_measures()
        for reason, field, column, words, spec, unit in _CHECKS:
            value = record.get(column or measures[field])
            if value is None:  # not measurable (no valid frame): the validity checks above decide
                continue
            limit = getattr(self.config, field)
            upper = field.startswith("max_")
            if value > limit if upper else value < limit:
                shown = format(limit, ".0%" if spec.endswith("%") else "g")
                return Rejection(reason, value, words.format(format(value, spec)) + unit,
                                 f"{'≤' if upper else '≥'} {shown}{unit}")
        return None


# The motion-quality checks in the order they are made: (reason, threshold field (max_… or min_…), the record
# column where it is not the field's `measure`, the measure in words, its format, its unit). A body drifting in
# depth drags its feet: the drift is the cause, so it is named first.
_CHECKS = (
    ("fit_reprojection_high", "max_reprojection_rel", None, "reprojection error {} of the person's height", ".2f", ""),
    ("fit_disagrees_with_keypoints", "min_agreement_pck", None, "the fit explains {} of the keypoints", ".0%", ""),
    ("limb_lengths_disagree", "max_limb_length_error", None, "limb lengths off by {} (median |log| ratio)", ".2f",
     ""),
    ("required_parts_hidden", "min_valid_fraction", "motion_required_parts_fraction",
     "the required body parts seen on {} of frames", ".0%", ""),
    ("few_valid_frames", "min_valid_fraction", None, "{} of frames valid", ".0%", ""),
    ("valid_span_too_short", "min_longest_valid_s", None, "longest valid span {}", ".2f", " s"),
    ("implausible_shape", "max_abs_beta", None, "largest |β| {}", ".2f", ""),
    ("depth_drift", "max_depth_drift_mps", None, "root depth drifts {}", ".3f", " m/s"),
    ("jittery_motion", "max_jitter_mps2", None, "mean joint acceleration {}", ".1f", " m/s²"),
    ("foot_sliding", "max_foot_sliding_mps", None, "feet slide {}", ".2f", " m/s"),
)


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
