"""Real keypoint backend: DWPose (`dw-ll_ucoco_384.onnx`, COCO-WholeBody 133, SimCC head) through onnxruntime.

Per frame the person box is enlarged ×1.25, padded to the model's aspect ratio (288:384) and warped to the
model input (RGB, ImageNet mean/std on 0–255). The model returns `simcc_x` (N, 133, 2·W) and `simcc_y`
(N, 133, 2·H): the argmax over each axis, halved, is the crop coordinate; the keypoint's score is the smaller
of the two maxima, clipped to [0, 1].
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from humove.detection.base import check_weights
from humove.devices import DeviceUnavailableError, cuda_index
from humove.keypoints.coco import LAYOUT_WHOLEBODY
from humove.keypoints.crops import PreparedCrops

DWPOSE_WEIGHTS_HELP = ("the DWPose release (IDEA-Research/DWPose; yzd-v/DWPose on Hugging Face: "
                       "dw-ll_ucoco_384.onnx)")
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
BOX_PADDING = 1.25
SIMCC_SPLIT = 2.0
NUM_KEYPOINTS = 133


class DWPoseOnnx:
    """`TwoPhaseKeypoints` on a DWPose ONNX file. `device` "cuda[:i]" runs on onnxruntime's CUDA provider or
    fails (DeviceUnavailableError): onnxruntime falls back to the CPU when that provider cannot load (missing
    CUDA/cuDNN libraries) and says so only in a log line, so the session's active providers are checked."""

    layout_name = LAYOUT_WHOLEBODY

    def __init__(self, weights: str, device: str = "cpu", batch_size: int = 32,
                 input_size: tuple[int, int] = (288, 384)):
        self.model_sha256 = check_weights(weights, "DWPose", DWPOSE_WEIGHTS_HELP)
        import onnxruntime as ort

        index = cuda_index(device)
        providers = ["CPUExecutionProvider"]
        if index is not None:
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(weights, sess_options=options, providers=providers)
        active = self.session.get_providers()
        if index is not None and "CUDAExecutionProvider" not in active:
            raise DeviceUnavailableError(
                f"pose (DWPose): device {device!r} requested, but onnxruntime {ort.__version__} runs this model on "
                f"{active} (available: {ort.get_available_providers()}); install onnxruntime-gpu with the CUDA "
                "and cuDNN libraries it needs, or set pose.device to 'cpu'")
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name
        batch, _, height, width = inputs[0].shape
        fixed = (width, height) if isinstance(width, int) and isinstance(height, int) else None
        if fixed and tuple(fixed) != tuple(input_size):
            raise ValueError(f"{weights}: model input is {fixed[0]}x{fixed[1]} (W×H), configured {input_size}")
        self.input_size = tuple(input_size)  # (W, H)
        self.fixed_batch = batch if isinstance(batch, int) else None  # the released file has batch 1
        self.batch_size = self.fixed_batch or batch_size
        outputs = [o.name for o in self.session.get_outputs()]
        if "simcc_x" in outputs and "simcc_y" in outputs:
            self.output_names = ["simcc_x", "simcc_y"]
        else:
            self.output_names = outputs[:2]  # exported under other names: (x, y) in that order
        self.name = f"onnxruntime-{ort.__version__}-dwpose({self.session.get_providers()[0]})"
        self.model = os.path.basename(weights)

    def prepare(self, frames: np.ndarray, boxes: np.ndarray, valid: np.ndarray) -> PreparedCrops:
        return prepare_crops(frames, boxes, valid, self.input_size)

    # Model ------------------------------------------------------------------------------------------------
    def infer(self, crops: list[PreparedCrops]) -> list[tuple[np.ndarray, np.ndarray]]:
        stacked = [c.images[c.valid] for c in crops]
        batch = np.concatenate(stacked) if stacked else np.zeros((0, 3, 1, 1), np.float32)
        simcc_x, simcc_y = [], []
        for start in range(0, len(batch), self.batch_size):
            chunk = batch[start:start + self.batch_size]
            if self.fixed_batch and len(chunk) < self.fixed_batch:  # pad a fixed-batch model's last chunk
                pad = np.zeros((self.fixed_batch - len(chunk), *chunk.shape[1:]), np.float32)
                x, y = self.session.run(self.output_names, {self.input_name: np.concatenate([chunk, pad])})
                x, y = x[:len(chunk)], y[:len(chunk)]
            else:
                x, y = self.session.run(self.output_names, {self.input_name: chunk})
            simcc_x.append(x)
            simcc_y.append(y)
        if not simcc_x:
            return [_empty(c) for c in crops]
        xy_crop, score = decode_simcc(np.concatenate(simcc_x), np.concatenate(simcc_y))
        out, offset = [], 0
        for c in crops:
            n = int(c.valid.sum())
            k = xy_crop.shape[1]
            xy = np.full((len(c.valid), k, 2), np.nan, np.float32)
            scores = np.zeros((len(c.valid), k), np.float32)
            t = c.transforms[c.valid]
            part = xy_crop[offset:offset + n]
            xy[c.valid, :, 0] = t[:, None, 0] + part[:, :, 0] * t[:, None, 2]
            xy[c.valid, :, 1] = t[:, None, 1] + part[:, :, 1] * t[:, None, 3]
            scores[c.valid] = score[offset:offset + n]
            offset += n
            out.append((xy, scores))
        return out


def prepare_crops(frames: np.ndarray, boxes: np.ndarray, valid: np.ndarray,
                  input_size: tuple[int, int] = (288, 384)) -> PreparedCrops:
    """CPU: frames (T, H, W, 3) uint8 RGB, boxes (T, 4) xyxy, valid (T,) bool → normalised (T, 3, H, W)
    model inputs; input_size = (W, H) of the model."""
    width, height = input_size
    count = len(frames)
    images = np.zeros((count, 3, height, width), np.float32)
    transforms = np.zeros((count, 4), np.float32)
    valid = np.asarray(valid, bool) & np.isfinite(boxes).all(axis=1)
    for t in np.flatnonzero(valid):
        x0, y0, x1, y1 = boxes[t]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        w, h = max(x1 - x0, 1.0) * BOX_PADDING, max(y1 - y0, 1.0) * BOX_PADDING
        if w > h * width / height:  # pad to the model's aspect ratio
            h = w * height / width
        else:
            w = h * width / height
        sx, sy = w / width, h / height
        left, top = cx - w / 2, cy - h / 2
        matrix = np.array([[1 / sx, 0, -left / sx], [0, 1 / sy, -top / sy]], np.float32)
        crop = cv2.warpAffine(frames[t], matrix, (width, height), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        images[t] = ((crop.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)
        transforms[t] = (left, top, sx, sy)
    return PreparedCrops(images, transforms, valid, (int(frames.shape[1]), int(frames.shape[2])))


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, Wx), (N, K, Wy) → crop coordinates (N, K, 2) and scores (N, K) in [0, 1]."""
    x = simcc_x.argmax(axis=-1) / SIMCC_SPLIT
    y = simcc_y.argmax(axis=-1) / SIMCC_SPLIT
    score = np.minimum(simcc_x.max(axis=-1), simcc_y.max(axis=-1))
    return np.stack([x, y], axis=-1).astype(np.float32), np.clip(score, 0.0, 1.0).astype(np.float32)


def _empty(c: PreparedCrops) -> tuple[np.ndarray, np.ndarray]:
    t = len(c.valid)
    return np.full((t, NUM_KEYPOINTS, 2), np.nan, np.float32), np.zeros((t, NUM_KEYPOINTS), np.float32)
