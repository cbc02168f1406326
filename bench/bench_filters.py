"""Throughput of the human-filter stages (`person`, `pose`) against their bare models on the same frames.

    python -m bench.bench_filters [--frames 48]                                        # CPU, offline backends
    python -m bench.bench_filters --device cuda --yolo-weights yolo11x.pt --dwpose-weights dw-ll_ucoco_384.onnx

The clip is drawn in code (a walking figure, 320×240, 16 fps) and encoded once. Rows: the bare model on the
decoded frames (detector on every frame; keypoints on the person crops), then the whole stage (decode, prepare,
model, tracking or measures, artifacts), in frames per second, and their ratio. The CUDA mode uses the real
backends (YOLO + ByteTrack, DWPose on onnxruntime's CUDA provider) from local weight files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench import best_seconds
from humove.video import iter_frames, probe, write_mp4
from humove.worker import StageWorker


def _clip(folder: str, frames: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_person import FPS, render  # the rendered test figure: mediapipe detects it

    path = f"{folder}/bench.mp4"
    write_mp4(path, render("one", frames), fps=FPS)
    info = probe(path)
    return {"clip_id": "bench", "input_id": "bench", "clip_path": path, "clip_sha256": "", "clip_bytes": 0,
            "clip_fps": info.fps, "clip_num_frames": info.num_frames, "clip_width": info.width,
            "clip_height": info.height, "start_s": 0.0, "end_s": info.duration_s}


def measure(person_config: dict, pose_config: dict, frames: int = 48, folder: str | None = None,
            repeats: int = 3) -> dict:
    """Time both stages against their bare models on one drawn clip, best of `repeats` → {"frames", "person":
    {"backend", "bare_s", "stage_s", "status"}, "pose": {"backend", "bare_s", "stage_s"}} (seconds for all
    `frames`)."""
    own = folder is None
    if folder:
        os.makedirs(folder, exist_ok=True)
    folder = folder or tempfile.mkdtemp(prefix="humove-bench-filters-")
    try:
        row = _clip(folder, frames)
        images = [f.image for f in iter_frames(row["clip_path"])]
        person = StageWorker("person", person_config, f"{folder}/run")
        person.stage.detector.detect(images[:2])  # warm-up: kernels, allocator, model fusing
        bare_detect = best_seconds(lambda: person.stage.detector.detect(images), repeats)
        person_records: list = []
        stage_detect = best_seconds(lambda: person_records.append(person.process([{"item": row, "attempt": 1}])[0]),
                                    repeats)
        joined = {**row, **{k: v for k, v in person_records[0][0].items() if k.startswith("person_")}}

        pose = StageWorker("pose", pose_config, f"{folder}/run")
        with np.load(joined["person_boxes_path"]) as art:
            boxes, visible = art["main_box"], art["main_visible"]
        crops = pose.stage.keypoints.prepare(np.stack(images), boxes, visible)
        bare_pose = best_seconds(lambda: pose.stage.keypoints.infer([crops]), repeats)
        stage_pose = best_seconds(lambda: pose.process([{"item": joined, "attempt": 1}]), repeats)
        status = f"{person_records[0][0]['status']} {person_records[0][0].get('reason') or ''}".strip()
        return {"frames": len(images),
                "person": {"backend": person.stage.backend, "bare_s": bare_detect, "stage_s": stage_detect,
                           "status": status},
                "pose": {"backend": pose.stage.backend, "bare_s": bare_pose, "stage_s": stage_pose}}
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--yolo-weights")
    parser.add_argument("--dwpose-weights")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        person_cfg = {"backend": "yolo", "weights": args.yolo_weights, "device": args.device, "tracker": "bytetrack"}
        pose_cfg = {"backend": "dwpose", "weights": args.dwpose_weights, "device": args.device}
    else:
        person_cfg = {"backend": "mediapipe", "tracker": "iou"}
        pose_cfg = {"backend": "mediapipe"}
    result = measure(person_cfg, pose_cfg, args.frames)
    count = result["frames"]
    print(f"{'what':34} {'frames/s':>9} {'stage/bare':>10}")
    for name in ("person", "pose"):
        timing = result[name]
        print(f"{(name + ': ' + timing['backend'])[:60]}")
        print(f"{'  bare model':34} {count / timing['bare_s']:9.1f}")
        print(f"{'  stage (decode+prepare+model)':34} {count / timing['stage_s']:9.1f} "
              f"{timing['bare_s'] / timing['stage_s']:10.2f}")
    print(f"person record: {result['person']['status']}")


if __name__ == "__main__":
    main()
