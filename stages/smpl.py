"""`smpl`: per-frame SMPL of the main person, stored raw (before smoothing) as a motion file artifact.

Backends:
- `camerahmr` (real, GPU): CameraHMR on crops around the person stage's main-person boxes, focal length from
  FLNet (median over the clip). `prepare` decodes the clip and reads the boxes on CPU workers; the fixed GPU
  actor pool runs the networks (weights loaded once per actor in `setup`).
- `offline-fit` (CPU): the SMPLify-style fitter on the pose stage's keypoints (2D, plus metric 3D landmarks
  when the pose backend gives them, as mediapipe does). No frames are decoded.

Frames where the person stage did not see the main person are fitted (the temporal term fills them) but marked
invalid; the `smooth` stage decides the final validity, and which joints the keypoints show (`joint_valid`: the
raw file counts every joint of a valid frame). Re-running `smooth` with new settings never re-runs this stage.

The body model is set here and only here: `body_model` by name, its file from `$HUMOVE_SMPL_DIR` (give it in the
pipeline's `run.env` so every Ray worker has it) unless `smpl_dir` overrides that. Each record names the file
and the SHA-256 of its arrays; `smooth` loads exactly that model.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from humove.artifacts import PERSON_TRACK_FIELDS, POSE_TRACK_FIELDS, person_track, pose_track
from humove.clips import SHOTS_CLIP_FIELDS, TRIMMED_CLIP_FIELDS, current_clip, decode_clip
from humove.hmr.sizes import HMRConfig, HRNetConfig
from humove.schemas import smpl as smpl_schema
from humove.schemas.checksums import file_digest
from humove.schemas.motion import motion_to_bytes
from humove.stage import MapStage, Reads, Resources, StageConfig
from humove.storage import Storage


class HMRSize(BaseModel):
    """CameraHMR's size (`humove.hmr.camerahmr.HMRConfig`); the defaults are the official checkpoint's."""

    model_config = ConfigDict(extra="forbid")

    embed_dim: int = HMRConfig.embed_dim            # ViT backbone width
    depth: int = HMRConfig.depth                    # ViT blocks
    num_heads: int = HMRConfig.num_heads
    head_dim: int = HMRConfig.head_dim              # SMPL head: transformer decoder width
    head_depth: int = HMRConfig.head_depth
    head_heads: int = HMRConfig.head_heads
    head_dim_per_head: int = HMRConfig.head_dim_per_head
    head_mlp_dim: int = HMRConfig.head_mlp_dim


class FLNetSize(BaseModel):
    """FLNet's HRNet size (`humove.hmr.flnet.HRNetConfig`); the defaults are the official checkpoint's (W48)."""

    model_config = ConfigDict(extra="forbid")

    width: int = HRNetConfig.width
    modules: tuple[int, int, int] = HRNetConfig.modules
    blocks: int = HRNetConfig.blocks
    stem_blocks: int = HRNetConfig.stem_blocks


class SmplConfig(StageConfig):
    backend: Literal["camerahmr", "offline-fit"] = "camerahmr"
    body_model: str = "standin-smpl"    # "smpl-neutral" etc.: SMPL_NEUTRAL.npz in $HUMOVE_SMPL_DIR (or smpl_dir)
    smpl_dir: str | None = None         # overrides $HUMOVE_SMPL_DIR; the smooth stage uses what this stage recorded
    # camerahmr: the official files (https://camerahmr.is.tue.mpg.de), in one folder or one by one
    weights_dir: str | None = None      # holds camerahmr_checkpoint_cleaned.ckpt, cam_model_cleaned.ckpt, …
    checkpoint: str | None = None
    cam_model: str | None = None
    mean_params: str | None = None
    device: str = "cuda"
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"  # the ViT backbone's; head and FLNet: float32
    hmr_batch_size: int = 64
    focal_mode: Literal["median", "per_frame"] = "median"
    hmr_size: HMRSize = HMRSize()       # smaller only for checkpoints built at that size (smoke tests)
    flnet_size: FLNetSize = FLNetSize()
    # offline-fit
    fit_iterations: int = 300
    fit_root_iterations: int = 60
    min_score: float = 0.3              # keypoints below this confidence are not fitted
    min_keypoints: int = 6              # frames with fewer confident matched keypoints are marked invalid

    def hmr_config(self) -> HMRConfig:
        return HMRConfig(**self.hmr_size.model_dump())

    def flnet_config(self) -> HRNetConfig:
        return HRNetConfig(**self.flnet_size.model_dump())


class SmplStage(MapStage):
    name = "smpl"
    version = "2"
    schema = smpl_schema.SCHEMA
    Config = SmplConfig
    resources = Resources(num_cpus=1, batch_size=1)
    prepare_resources = Resources(num_cpus=1, batch_size=1)
    description = "per-frame SMPL of the main person (CameraHMR on GPU, or the offline keypoint fitter)"

    @classmethod
    def reads(cls, config: SmplConfig) -> Reads:
        """The clip and the person's boxes; the keypoints only for the offline fitter (CameraHMR sees pixels)."""
        keypoints = POSE_TRACK_FIELDS if config.backend != "camerahmr" else frozenset()
        return Reads(SHOTS_CLIP_FIELDS | PERSON_TRACK_FIELDS | keypoints, if_present=TRIMMED_CLIP_FIELDS)

    def setup(self) -> None:
        from humove.motion.body_model import load_body_model  # smplx and torch: on the workers, not with the config

        c = self.config
        try:
            self.body_model = load_body_model(c.body_model, c.smpl_dir)
        except (FileNotFoundError, ValueError) as exc:
            raise type(exc)(f"smpl: {exc}") from exc
        self.runner = None
        if c.backend == "camerahmr":
            from humove.hmr.inference import HMRInferenceConfig, build_runner
            from humove.hmr.weights import CameraHMRWeights

            weights = self.camerahmr_weights(CameraHMRWeights)
            for path in filter(None, (weights.checkpoint, weights.cam_model)):
                if not Storage(path).exists(path):
                    raise FileNotFoundError(
                        f"smpl: CameraHMR weight file {path} does not exist: download camerahmr_checkpoint_cleaned"
                        ".ckpt and cam_model_cleaned.ckpt from https://camerahmr.is.tue.mpg.de (registration) "
                        "and set smpl.weights_dir")
            config = HMRInferenceConfig(batch_size=c.hmr_batch_size, focal_mode=c.focal_mode, device=c.device,
                                        dtype=c.dtype)
            self.runner = build_runner(weights, self.body_model, config, c.hmr_config(), c.flnet_config())
            self.model_name = "camerahmr+flnet" if weights.cam_model else "camerahmr"
            self.model_sha256 = file_digest(weights.checkpoint)
            self.backend = f"camerahmr({self.model_name})"
        else:
            self.model_name = "offline-fitter"
            self.model_sha256 = None
            self.backend = "offline-fit"

    def camerahmr_weights(self, weights_cls):
        c = self.config
        if c.weights_dir:
            return weights_cls.from_folder(c.weights_dir)
        if not c.checkpoint:
            raise ValueError("smpl: backend camerahmr needs weights_dir or checkpoint (+ cam_model)")
        return weights_cls(c.checkpoint, c.cam_model, c.mean_params)

    def prepare(self, item: dict) -> dict:
        clip = current_clip(item)
        person = person_track(item)
        prepared = {**item, "_boxes": person.filled_boxes(), "_visible": person.visible}
        if self.config.backend == "camerahmr":
            prepared["_frames"] = decode_clip(clip)
        else:
            prepared["_keypoints"] = pose_track(item, (clip.height, clip.width))
        return prepared

    def process(self, item: dict) -> dict:
        clip = current_clip(item)
        visible = item["_visible"]
        if self.runner is not None:
            motion = self.runner.predict_track(item["_frames"], item["_boxes"], clip.fps, valid=visible)
        else:
            from humove.motion.fitting import FitConfig, fit_keypoints  # torch, as the body model of setup

            c = self.config
            fit = FitConfig(iterations=c.fit_iterations, root_iterations=c.fit_root_iterations,
                            min_score=c.min_score, min_keypoints=c.min_keypoints)
            motion = fit_keypoints(item["_keypoints"], self.body_model, clip.fps, fit)
        if motion.num_frames != clip.num_frames:
            raise ValueError(f"motion has {motion.num_frames} frames, the clip {clip.num_frames}")
        motion = replace(motion, valid=motion.valid & visible)
        data = motion_to_bytes(motion)
        url = self.context.artifact_url(item["clip_id"], "motion.npz")
        self.context.storage.write_bytes(url, data)
        return self.ok(
            item["clip_id"], backend=self.backend, smpl_model=self.model_name, smpl_model_sha256=self.model_sha256,
            smpl_body_model=motion.body_model, smpl_body_model_file=self.body_model.source,
            smpl_body_model_sha256=self.body_model.sha256, smpl_motion_path=url,
            smpl_motion_sha256=hashlib.sha256(data).hexdigest(), smpl_num_frames=motion.num_frames,
            smpl_focal_px=float(np.median(motion.focal)), smpl_valid_fraction=float(motion.valid.mean()),
        )

