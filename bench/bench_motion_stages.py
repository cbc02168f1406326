"""Frames/s of the motion stages against the bare library calls on the same inputs (the anchor).

    .venv/bin/python -m bench.bench_motion_stages                        # CPU: smpl (offline fitter) + smooth
    .venv/bin/python -m bench.bench_motion_stages --hmr --device cuda --batch-size 64    # + smpl (CameraHMR)

The inputs are a synthetic walking person (known motion) written as the person and pose stages' artifacts.
With `--hmr` the stage runs CameraHMR + FLNet with random weights (the compute of the official ones) on 720×1280
frames (their content does not change the compute), against `CameraHMRRunner.predict_track` on the same frames and
boxes: the stage adds reading artifacts and writing the motion file. Goal on GPU: ≥ 80 % of the bare model.
Each time is the best of `--repeats` runs, bare and stage interleaved (the machine may be shared).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from humove.artifacts import npz_bytes
from humove.keypoints.coco import COCO17, LAYOUT_COCO17
from humove.motion.body_model import standin_model
from humove.motion.fitting import FitConfig, fit_keypoints
from humove.motion.quality import project_joints
from humove.motion.smoothing import smooth_motion
from humove.motion.synthetic import walking_clip
from humove.stage import StageContext
from humove.stages.smooth import SmoothConfig, SmoothStage
from humove.stages.smpl import SmplConfig, SmplStage
from humove.storage import Storage


def _row(run_dir: str, frames: int) -> tuple[dict, object]:
    """A joined `pose`-stage output row for a synthetic walk, its artifacts written under `run_dir`."""
    clip = walking_clip(frames=frames)
    height, width = (int(v) for v in clip.image_size)
    joints2d = project_joints(clip)
    kp, smpl, _ = COCO17.smpl_indices()
    xy = np.zeros((frames, 17, 2), np.float32)
    xy[:, kp] = joints2d[:, smpl]
    world = np.zeros((frames, 17, 3), np.float32)
    world[:, kp] = clip.joints[:, smpl] - clip.joints[:, [1, 2]].mean(axis=1, keepdims=True)
    scores = np.zeros((frames, 17), np.float32)
    scores[:, kp] = 0.9
    box = np.concatenate([joints2d.min(axis=1) - 20, joints2d.max(axis=1) + 20], axis=1).astype(np.float32)
    storage = Storage(run_dir)
    person, pose = storage.join("person.npz"), storage.join("pose.npz")
    storage.write_bytes(person, npz_bytes(main_box=box, main_visible=np.ones(frames, bool)))
    storage.write_bytes(pose, npz_bytes(keypoints=xy, scores=scores, layout=np.array(LAYOUT_COCO17), world=world))
    row = {"clip_id": "bench", "input_id": "bench", "clip_path": storage.join("clip.mp4"), "clip_num_frames": frames,
           "clip_fps": clip.fps, "clip_width": width, "clip_height": height, "start_s": 0.0,
           "end_s": frames / clip.fps, "person_boxes_path": person, "pose_keypoints_path": pose}
    return row, clip


def _stage(cls, config, run_dir: str):
    stage = cls(config, StageContext(run_dir=run_dir, stage=cls.name))
    stage.setup()
    return stage


REPEATS = 3


def _seconds(fn) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_offline(frames: int, iterations: int) -> list[tuple[str, str, float, float]]:
    run_dir = tempfile.mkdtemp(prefix="humove-bench-motion-")
    row, clip = _row(run_dir, frames)
    smpl = _stage(SmplStage, SmplConfig(backend="offline-fit", fit_iterations=iterations), run_dir)
    prepared = smpl.prepare(row)
    fit = FitConfig(iterations=iterations, root_iterations=smpl.config.fit_root_iterations)
    model = standin_model()
    bare = _seconds(lambda: fit_keypoints(prepared["_keypoints"], model, clip.fps, fit))
    record = {}
    staged = _seconds(lambda: record.update(smpl.process(smpl.prepare(row))))
    smooth = _stage(SmoothStage, SmoothConfig(), run_dir)
    raw = smpl.process(prepared)
    from humove.schemas.motion import load_motion

    motion = load_motion(Storage(raw["smpl_motion_path"]).read_bytes(raw["smpl_motion_path"]))
    smooth_bare = _seconds(lambda: smooth_motion(motion, smooth.config.smoothing(), model))
    smooth_staged = _seconds(lambda: smooth.process({**row, **raw}))
    setting = f"{frames} frames, cpu"
    return [("smpl: offline fitter", setting, frames / bare, frames / staged),
            ("smooth (gaussian, joints, validity, quality)", setting, frames / smooth_bare, frames / smooth_staged)]


@torch.no_grad()
def bench_camerahmr(frames: int, device: str, batch_size: int, dtype: str, hmr_config=None,
                    flnet_config=None) -> tuple[str, str, float, float]:
    """(name, setting, bare frames/s, stage frames/s). `hmr_config` / `flnet_config`: the networks' sizes
    (default: the official ViT-H and HRNet-W48)."""
    from humove.hmr.camerahmr import CameraHMR
    from humove.hmr.flnet import FLNet
    from humove.hmr.inference import CameraHMRRunner, HMRInferenceConfig

    run_dir = tempfile.mkdtemp(prefix="humove-bench-hmr-")
    row, clip = _row(run_dir, frames)
    height, width = (int(v) for v in clip.image_size)
    images = np.random.default_rng(0).integers(0, 255, (frames, height, width, 3), dtype=np.uint8)  # content-free
    config = HMRInferenceConfig(batch_size=batch_size, device=device, dtype=dtype)
    # random weights: the compute of the official ones
    runner = CameraHMRRunner(CameraHMR(hmr_config), FLNet(flnet_config), standin_model(), config)
    stage = _stage(SmplStage, SmplConfig(backend="offline-fit"), run_dir)
    prepared = {**stage.prepare(row), "_frames": images}  # boxes from the artifact; frames given, not decoded
    stage.runner, stage.backend = runner, "camerahmr(random weights)"  # what setup() builds from real weights
    boxes, visible = prepared["_boxes"], prepared["_visible"]
    runner.predict_track(images[:batch_size], boxes[:batch_size], clip.fps)  # warm-up (kernels, allocator)
    bare = _seconds(lambda: runner.predict_track(images, boxes, clip.fps, valid=visible))
    staged = _seconds(lambda: stage.process(prepared))
    return ("smpl: CameraHMR + FLNet (random weights)", f"{frames} frames, batch {batch_size}, {device}, {dtype}",
            frames / bare, frames / staged)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--fit-iterations", type=int, default=300)
    parser.add_argument("--hmr", action="store_true", help="also the CameraHMR backend (real size, random weights)")
    parser.add_argument("--hmr-frames", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    global REPEATS
    REPEATS = args.repeats
    torch.manual_seed(0)
    rows = bench_offline(args.frames, args.fit_iterations)
    if args.hmr:
        dtype = "float32" if args.device == "cpu" else args.dtype
        rows.append(bench_camerahmr(args.hmr_frames, args.device, args.batch_size, dtype))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}")
    print(f"{'stage':46s} {'setting':42s} {'bare fr/s':>10s} {'stage fr/s':>10s} {'ratio':>6s}")
    for name, setting, bare, staged in rows:
        print(f"{name:46s} {setting:42s} {bare:10.1f} {staged:10.1f} {staged / bare:6.2f}")


if __name__ == "__main__":
    main()
