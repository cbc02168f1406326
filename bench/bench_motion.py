"""Motion-core throughput: offline fitter and smoothing (CPU), CameraHMR forward at real size (GPU).

    .venv/bin/python -m bench.bench_motion                    # CPU: fitter + smoothing
    .venv/bin/python -m bench.bench_motion --hmr --device cuda --batch-size 64   # + CameraHMR/FLNet forward

CameraHMR runs with random weights (same compute as the official ones); on CPU add `--hmr` only if you have
minutes to spare (ViT-H on 192 tokens is heavy on a laptop CPU).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from humove.motion.body_model import standin_model
from humove.motion.fitting import FitConfig, fit_keypoints
from humove.motion.smoothing import SmoothingConfig, smooth_motion
from humove.motion.synthetic import FOCAL, keypoints_from_clip, walking_clip


def _timed(fn, repeats: int = 1) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def bench_fitter(frames: int) -> tuple[str, str, float]:
    clip = walking_clip(frames=frames)
    track = keypoints_from_clip(clip, pixel_noise=1.0)
    model = standin_model()
    seconds = _timed(lambda: fit_keypoints(track, model, clip.fps, FitConfig(), focal=FOCAL))
    return "offline fitter (300+60 Adam steps)", f"{frames} frames, cpu", frames / seconds


def bench_mediapipe(frames: int) -> tuple[str, str, float]:
    from humove.keypoints.mediapipe_pose import MediaPipePoseDetector
    from humove.motion.synthetic import draw_cartoon_person

    video = np.stack([draw_cartoon_person(arm_swing=float(t % 10)) for t in range(frames)])
    boxes = np.tile([150.0, 70.0, 390.0, 700.0], (frames, 1))
    with MediaPipePoseDetector() as detector:
        seconds = _timed(lambda: detector.detect_track(video, boxes))
    return "mediapipe Pose keypoints (complexity 1)", f"{frames} frames 720x540, cpu", frames / seconds


def bench_smoothing(frames: int, method: str) -> tuple[str, str, float]:
    clip = walking_clip(frames=frames)
    model = standin_model()
    seconds = _timed(lambda: smooth_motion(clip, SmoothingConfig(method=method), model), repeats=3)
    return f"smoothing ({method}, incl. smplx joints)", f"{frames} frames, cpu", frames / seconds


def _forward_fps(module: torch.nn.Module, inputs: tuple, device: torch.device, repeats: int) -> float:
    batch = inputs[0].shape[0]

    def run():
        module(*inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return batch / _timed(run, repeats=repeats)


@torch.no_grad()
def bench_hmr(device: str, batch_size: int, dtype: str, batches: int) -> list[tuple[str, str, float]]:
    from humove.hmr.camerahmr import CameraHMR
    from humove.hmr.flnet import FLNet

    dev, dt = torch.device(device), getattr(torch, dtype)
    setting = f"batch {batch_size}, {device}, {dtype}"
    images = torch.randn(batch_size, 3, 256, 256, device=dev, dtype=dt)
    info = torch.randn(batch_size, 3, device=dev, dtype=dt) * 0.1
    hmr_fps = _forward_fps(CameraHMR().to(dev).half_backbone(dt).eval(), (images, info), dev, batches)
    flnet_fps = _forward_fps(FLNet().to(dev).eval(), (images.float(),), dev, batches)  # float32, as the stage runs it
    return [
        ("CameraHMR forward (ViT-H + head)", setting, hmr_fps),
        ("FLNet forward (HRNet-W48, float32)", setting, flnet_fps),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keypoint-frames", type=int, default=30)
    parser.add_argument("--fit-frames", type=int, default=60)
    parser.add_argument("--smooth-frames", type=int, default=300)
    parser.add_argument("--hmr", action="store_true", help="also time CameraHMR/FLNet at real size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    np.random.seed(0)
    rows = [bench_fitter(args.fit_frames)]
    rows += [bench_smoothing(args.smooth_frames, m) for m in ("gaussian", "savgol", "one_euro")]
    rows.append(bench_mediapipe(args.keypoint_frames))  # last: its worker threads outlive the call
    if args.hmr:
        dtype = "float32" if args.device == "cpu" else args.dtype
        rows += bench_hmr(args.device, args.batch_size, dtype, args.batches)
    else:
        rows.append(("CameraHMR forward", "skipped (pass --hmr, ideally --device cuda)", float("nan")))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}")
    print(f"{'benchmark':42s} {'setting':44s} {'frames/s':>10s}")
    for name, setting, fps in rows:
        print(f"{name:42s} {setting:44s} {fps:10.1f}")


if __name__ == "__main__":
    main()
