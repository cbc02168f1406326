"""CameraHMR pre- and post-processing: crops, FLNet input, focal length, bbox info, camera translation.

Conventions (as in CameraHMR's demo and datasets):
- Person crop: square of side b = max(box w, box h) centred on the box, warped to 256×256 (bilinear, black
  outside the frame), RGB, normalised with ImageNet mean/std on 0–255 values; the network sees the centre
  256×192 columns (`CameraHMR.forward` narrows it).
- FLNet input: the whole RGB frame resized to fit 256×256 (INTER_AREA), pasted centred on white, scaled to 0–1
  and normalised with the same mean/std. Its output [:, 1] is the vertical field of view v:
  f = H / (2 tan(v/2)).
- Principal point: the image centre. bbox_info = [(cx − W/2)/f, (cy − H/2)/f, b/f].
- Weak-perspective camera (s, tx, ty) → translation: tz = 2f / (b·s), tx' = tx + 2(cx − W/2)/(s·b),
  ty' = ty + 2(cy − H/2)/(s·b) (metres, OpenCV camera frame).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

CROP_SIZE = 256
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def box_center_size(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """boxes (N, 4) xyxy → centres (N, 2), square side b = max(w, h) (N,)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    center = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    return center, size


def _normalise(rgb: np.ndarray, scale: float) -> np.ndarray:
    """(H, W, 3) uint8 → (3, H, W) float32 with ImageNet statistics on values in [0, 255/scale]."""
    img = rgb.astype(np.float32) / scale
    img = (img - IMAGENET_MEAN * (255.0 / scale)) / (IMAGENET_STD * (255.0 / scale))
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def crop_for_hmr(frame: np.ndarray, center: np.ndarray, size: float, out_size: int = CROP_SIZE) -> np.ndarray:
    """frame (H, W, 3) uint8 RGB → normalised (3, out, out) float32 crop of the square (center, size).

    RGB as in upstream training and evaluation (core/datasets/utils.py:720-721 `get_example` flips the cv2 BGR
    crop to RGB, then normalises on 0–255 at lines 725-728). Upstream's demo at 65d11a0 converts the frame to
    RGB and then flips its crops again (core/datasets/dataset.py:71), so its network sees BGR crops there; we
    follow the training data, not that demo."""
    if size <= 0:
        raise ValueError(f"crop size {size} must be positive")
    scale = out_size / size
    affine = np.array(
        [[scale, 0, out_size / 2 - scale * center[0]], [0, scale, out_size / 2 - scale * center[1]]],
        dtype=np.float64,
    )
    patch = cv2.warpAffine(
        frame,
        affine,
        (out_size, out_size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return _normalise(patch, 1.0)


def letterbox_for_flnet(frame: np.ndarray, out_size: int = CROP_SIZE) -> np.ndarray:
    """frame (H, W, 3) uint8 RGB → normalised (3, out, out) float32: fitted, centred on white.

    As upstream (pixelite1201/CameraHMR @ 65d11a0), where FLNet's input is made the same way for training and
    evaluation: core/datasets/dataset_train.py:80-85 and dataset_val.py:119-124 read the image with cv2, flip it
    to RGB (`cv_img[:, :, ::-1]`), letterbox it with core/datasets/utils.py:11-34 `resize_image`, divide by 255
    and apply torchvision `Normalize(IMAGE_MEAN, IMAGE_STD)`. The demo agrees since that commit
    (mesh_estimator.py:141-142 converts BGR→RGB before `get_cam_intrinsics`, lines 120-127); before it, the demo
    fed FLNet BGR. The side arithmetic is upstream's too: `int(size / (W / H))` is one pixel shorter than
    `int(size * H / W)` for some sizes (256×93 → 92 rows).
    """
    height, width = frame.shape[:2]
    aspect = width / height
    if aspect > 1:
        new_w, new_h = out_size, int(out_size / aspect)
    else:
        new_w, new_h = int(out_size * aspect), out_size
    resized = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_AREA)
    canvas = np.full((out_size, out_size, 3), 255, dtype=np.uint8)
    x0, y0 = (out_size - new_w) // 2, (out_size - new_h) // 2
    canvas[y0 : y0 + new_h, x0 : x0 + new_w] = resized
    return _normalise(canvas, 255.0)


def focal_from_vfov(vfov: torch.Tensor | float, image_height: float) -> torch.Tensor:
    """Vertical field of view (radians) → focal length in pixels: f = H / (2 tan(vfov / 2))."""
    return image_height / (2 * torch.tan(torch.as_tensor(vfov, dtype=torch.float32) / 2))


def bbox_info(
    center: torch.Tensor, size: torch.Tensor, image_size: tuple[int, int], focal: torch.Tensor
) -> torch.Tensor:
    """center (B, 2), size (B,), image (H, W), focal (B,) → (B, 3) [(cx−W/2)/f, (cy−H/2)/f, b/f]."""
    height, width = image_size
    return torch.stack(
        [(center[:, 0] - width / 2) / focal, (center[:, 1] - height / 2) / focal, size / focal], dim=-1
    )


def camera_translation(
    cam: torch.Tensor,
    center: torch.Tensor,
    size: torch.Tensor,
    image_size: tuple[int, int],
    focal: torch.Tensor,
) -> torch.Tensor:
    """Weak-perspective cam (B, 3) = (s, tx, ty) of a crop → full-image translation (B, 3) in metres."""
    height, width = image_size
    s, tx, ty = cam.unbind(-1)
    tz = 2 * focal / (size * s)
    return torch.stack(
        [
            tx + 2 * (center[:, 0] - width / 2) / (s * size),
            ty + 2 * (center[:, 1] - height / 2) / (s * size),
            tz,
        ],
        dim=-1,
    )
