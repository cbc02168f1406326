"""Batched CameraHMR inference over all frames of one track → MotionClip (motion file schema v2).

FLNet estimates the focal length from whole frames; within one track (one shot, one camera) the median over
`focal_frames` evenly spaced frames is used for every frame by default (`focal_mode="median"`), or FLNet runs
on every frame (`"per_frame"`), or a known focal is passed in. CameraHMR then runs on the person crops in
batches of `batch_size`. `dtype` applies to CameraHMR's ViT backbone only: its SMPL head and FLNet (a few frames
per track) always run in float32. Rotation matrices become axis-angle; the weak-perspective camera becomes the SMPL
`transl`; joints are the smplx forward of the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from humove.devices import require_torch_device
from humove.hmr.camerahmr import CameraHMR
from humove.hmr.flnet import FLNet
from humove.hmr.preprocess import (
    bbox_info,
    box_center_size,
    camera_translation,
    crop_for_hmr,
    focal_from_vfov,
    letterbox_for_flnet,
)
from humove.motion.body_model import BodyModel, clip_joints
from humove.motion.rotations import matrix_to_axis_angle
from humove.schemas.motion import MotionClip


@dataclass
class HMRInferenceConfig:
    batch_size: int = 64
    focal_mode: str = "median"  # "median" over focal_frames, or "per_frame"
    focal_frames: int = 8
    device: str = "cpu"
    dtype: str = "float32"  # the ViT backbone's: "bfloat16" / "float16" on GPUs for speed

    def __post_init__(self) -> None:
        if self.focal_mode not in ("median", "per_frame"):
            raise ValueError(f"focal_mode {self.focal_mode!r}: expected 'median' or 'per_frame'")
        if self.batch_size < 1:
            raise ValueError(f"batch_size {self.batch_size} must be >= 1")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype {self.dtype!r}: expected 'float32', 'bfloat16' or 'float16'")


class CameraHMRRunner:
    """Holds the loaded networks; `predict_track` turns one track's frames into a MotionClip."""

    def __init__(
        self,
        hmr: CameraHMR,
        flnet: FLNet | None,
        body_model: BodyModel,
        config: HMRInferenceConfig | None = None,
    ):
        self.config = config or HMRInferenceConfig()
        require_torch_device(self.config.device, "CameraHMR")
        self.device = torch.device(self.config.device)
        self.hmr = hmr.to(self.device).half_backbone(getattr(torch, self.config.dtype)).eval()
        self.flnet = None if flnet is None else flnet.to(self.device, torch.float32).eval()
        self.body_model = body_model
        self.crop_size = hmr.config.image_height  # square crop; the network narrows it to its width

    @torch.no_grad()
    def estimate_focal(self, frames: np.ndarray) -> np.ndarray:
        """frames (T, H, W, 3) uint8 RGB → focal (T,) pixels from FLNet."""
        if self.flnet is None:
            raise ValueError("no FLNet loaded: pass focal= to predict_track")
        count, height = len(frames), frames.shape[1]
        if self.config.focal_mode == "median":
            picks = np.unique(
                np.linspace(0, count - 1, min(count, self.config.focal_frames)).round().astype(int)
            )
        else:
            picks = np.arange(count)
        focals = []
        for start in range(0, len(picks), self.config.batch_size):
            batch = np.stack(
                [letterbox_for_flnet(frames[i]) for i in picks[start : start + self.config.batch_size]]
            )
            fov = self.flnet(torch.as_tensor(batch, device=self.device))
            focals.append(focal_from_vfov(fov[:, 1].cpu(), height).numpy())
        focals = np.concatenate(focals)
        if self.config.focal_mode == "median":
            return np.full(count, np.median(focals), np.float32)
        return focals.astype(np.float32)

    @torch.no_grad()
    def predict_track(
        self,
        frames: np.ndarray,
        boxes: np.ndarray,
        fps: float,
        focal: float | None = None,
        valid: np.ndarray | None = None,
    ) -> MotionClip:
        """frames (T, H, W, 3) uint8 RGB, boxes (T, 4) xyxy of the tracked person → MotionClip.

        `valid` (T,) marks frames with a real detection (default: boxes with positive size).
        """
        frames = np.asarray(frames)
        boxes = np.asarray(boxes, dtype=np.float64)
        if frames.ndim != 4 or frames.dtype != np.uint8:
            raise ValueError(f"frames: expected (T, H, W, 3) uint8 RGB, got {frames.shape} {frames.dtype}")
        if boxes.shape != (len(frames), 4):
            raise ValueError(f"boxes: expected ({len(frames)}, 4) xyxy, got {boxes.shape}")
        count, height, width = frames.shape[:3]
        center, size = box_center_size(boxes)
        box_ok = size > 1
        size = np.where(box_ok, size, 1.0)  # degenerate boxes still produce finite output, marked invalid
        focals = np.full(count, focal, np.float32) if focal else self.estimate_focal(frames)

        rotmats, betas, transl = [], [], []
        for start in range(0, count, self.config.batch_size):
            sl = slice(start, start + self.config.batch_size)
            crops = np.stack(
                [
                    crop_for_hmr(f, c, s, self.crop_size)
                    for f, c, s in zip(frames[sl], center[sl], size[sl], strict=True)
                ]
            )
            c_t = torch.as_tensor(center[sl], dtype=torch.float32)
            s_t = torch.as_tensor(size[sl], dtype=torch.float32)
            f_t = torch.as_tensor(focals[sl], dtype=torch.float32)
            info = bbox_info(c_t, s_t, (height, width), f_t)
            out = self.hmr(torch.as_tensor(crops, device=self.device), info.to(self.device))
            rotmats.append(out["rotmat"].cpu())
            betas.append(out["betas"].cpu())
            transl.append(camera_translation(out["cam"].cpu(), c_t, s_t, (height, width), f_t))
        axis_angle = matrix_to_axis_angle(torch.cat(rotmats)).numpy()  # (T, 24, 3)
        betas_np = torch.cat(betas).numpy()
        transl_np = torch.cat(transl).numpy()
        joints = clip_joints(self.body_model, betas_np, axis_angle[:, 0], axis_angle[:, 1:], transl_np)
        valid_mask = box_ok if valid is None else (np.asarray(valid, bool) & box_ok)
        return MotionClip(
            betas=betas_np.astype(np.float32),
            global_orient=axis_angle[:, 0].astype(np.float32),
            body_pose=axis_angle[:, 1:].astype(np.float32),
            transl=transl_np.astype(np.float32),
            joints=joints,
            focal=focals.astype(np.float32),
            image_size=np.array([height, width], np.int32),
            valid=valid_mask & np.isfinite(transl_np).all(axis=1),
            fps=float(fps),
            body_model=self.body_model.name,
        ).validate()


def build_runner(
    weights,
    body_model: BodyModel,
    config: HMRInferenceConfig | None = None,
    hmr_config=None,
    flnet_config=None,
) -> CameraHMRRunner:
    """Load CameraHMR (+ FLNet when `weights.cam_model` is set) from a `CameraHMRWeights` → runner.

    `hmr_config` / `flnet_config` default to the official sizes; a checkpoint of another size must be given its
    sizes here (config `smpl.hmr_size` / `smpl.flnet_size`), else strict loading names the mismatched keys.
    """
    from humove.hmr.weights import load_camerahmr, load_flnet

    hmr = load_camerahmr(weights.checkpoint, hmr_config, mean_params=weights.mean_params)
    flnet = None
    if weights.cam_model:
        flnet = load_flnet(weights.cam_model, flnet_config)
    return CameraHMRRunner(hmr, flnet, body_model, config)
