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
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench import seconds
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
    folder = tempfile.mkdtemp(prefix="humove-bench-filters-")
    try:
        row = _clip(folder, args.frames)
        frames = [f.image for f in iter_frames(row["clip_path"])]
        person = StageWorker("person", person_cfg, f"{folder}/run")
        bare_detect = seconds(lambda: person.stage.detector.detect(frames))
        person_records: list = []
        stage_detect = seconds(lambda: person_records.extend(person.process([{"item": row, "attempt": 1}])[0]))
        joined = {**row, **{k: v for k, v in person_records[0].items() if k.startswith("person_")}}

        pose = StageWorker("pose", pose_cfg, f"{folder}/run")
        with np.load(joined["person_boxes_path"]) as art:
            boxes, visible = art["main_box"], art["main_visible"]
        crops = pose.stage.keypoints.prepare(np.stack(frames), boxes, visible)
        bare_pose = seconds(lambda: pose.stage.keypoints.infer([crops]))
        stage_pose = seconds(lambda: pose.process([{"item": joined, "attempt": 1}]))
        count = len(frames)
        print(f"{'what':34} {'frames/s':>9} {'stage/bare':>10}")
        for name, bare, staged in (("person: " + person.stage.backend, bare_detect, stage_detect),
                                   ("pose: " + pose.stage.backend, bare_pose, stage_pose)):
            print(f"{name[:60]}")
            print(f"{'  bare model':34} {count / bare:9.1f}")
            print(f"{'  stage (decode+prepare+model)':34} {count / staged:9.1f} {bare / staged:10.2f}")
        print(f"person record: {person_records[0]['status']} {person_records[0].get('reason') or ''}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
