"""Real person detector: ultralytics YOLO (any detect model trained on COCO, e.g. yolo11x.pt) from a local file.

Only COCO class 0 (person) is kept. Weights are never downloaded: a missing file is an error naming it.
"""

from __future__ import annotations

import os

import numpy as np

from humove.detection.base import FrameDetections, check_weights
from humove.devices import require_torch_device

YOLO_WEIGHTS_HELP = "https://docs.ultralytics.com/models/ (e.g. yolo11x.pt from the ultralytics GitHub releases)"
PERSON_CLASS = 0  # COCO


class YoloPersonDetector:
    """`PersonDetector` on ultralytics YOLO. Batched: `detect` runs the frames through the model in chunks.
    `device` "cuda[:i]" must be usable here (DeviceUnavailableError otherwise, before any frame is read)."""

    count_reliable = True

    def __init__(self, weights: str, device: str = "cpu", image_size: int = 640, min_score: float = 0.1,
                 batch_size: int = 16, half: bool = False):
        require_torch_device(device, "person (YOLO)")
        self.model_sha256 = check_weights(weights, "YOLO", YOLO_WEIGHTS_HELP)
        os.environ.setdefault("YOLO_OFFLINE", "1")  # never reach the network for fonts, assets or updates
        os.environ.setdefault("YOLO_AUTOINSTALL", "false")
        import ultralytics
        from ultralytics import YOLO

        self.yolo = YOLO(weights, task="detect")
        self.name = f"ultralytics-{ultralytics.__version__}-yolo"
        self.model = os.path.basename(weights)
        self.device, self.image_size, self.min_score = device, image_size, min_score
        self.batch_size, self.half = batch_size, half and device.startswith("cuda")

    def detect(self, frames: list[np.ndarray]) -> list[FrameDetections]:
        out: list[FrameDetections] = []
        for start in range(0, len(frames), self.batch_size):
            # ultralytics reads numpy images as BGR (OpenCV convention)
            chunk = [np.ascontiguousarray(f[:, :, ::-1]) for f in frames[start:start + self.batch_size]]
            results = self.yolo.predict(chunk, classes=[PERSON_CLASS], conf=self.min_score, imgsz=self.image_size,
                                        device=self.device, half=self.half, verbose=False)
            for result in results:
                boxes = result.boxes
                out.append(FrameDetections(boxes.xyxy.cpu().numpy().astype(np.float32),
                                           boxes.conf.cpu().numpy().astype(np.float32)))
        return out
