"""EchoMotion training-step throughput (tokens/s, MFU) and data-loader speed against the step time.

    python -m bench.bench_train                                   # tiny config on CPU (default)
    python -m bench.bench_train --config wan2.1-1.3b --device cuda --grad-ckpt
        # paper shapes: 81 frames 480×832 → 32,760 video tokens + 81·51 = 4,131 motion tokens
    python -m bench.bench_train --config wan2.1-1.3b --loader-only --workers 2   # loader at real sizes, CPU

The step is the real one (tasks.py inputs, DiT forward/backward, AdamW), on random latents / motion / text so that
it measures the network, not the encoders. FLOPs per step are counted with torch's FlopCounterMode on one step
(matmuls and attention, forward + backward); MFU = FLOPs per second / peak (bf16 dense peak of the GPU, from
--peak-tflops or a small table; none on CPU). The loader part reads shards (given with --shards, else small ones
written to a temporary folder at the benchmark's video size) with the configured workers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from humove.model.config import DiTConfig
from humove.model.dit import EchoMotionDiT
from humove.model.tasks import TaskConfig, build_training_inputs, flow_losses

# bf16 dense tensor-core peaks (TFLOP/s) by device-name fragment.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0}
SHAPES = {  # preset → (frames, height, width, spatial stride of its VAE)
    "tiny": (9, 64, 64, 8),
    "wan2.1-1.3b": (81, 480, 832, 8),
    "wan2.2-5b": (121, 704, 1280, 16),
}


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_TFLOPS.items() if key in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_step(args) -> dict:
    device = torch.device(args.device)
    config = DiTConfig.preset(args.config, **({"text_len": 16} if args.config == "tiny" else {}))
    frames, height, width, stride = SHAPES[args.config]
    frames, height, width = args.frames or frames, args.height or height, args.width or width
    torch.manual_seed(0)
    model = EchoMotionDiT(config).to(device)
    if args.grad_ckpt:
        model.enable_gradient_checkpointing(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=8e-6, weight_decay=1e-3)
    latent = (args.batch, config.in_channels, 1 + (frames - 1) // 4, height // stride, width // stride)
    video = torch.randn(latent, device=device)
    motion = torch.randn(args.batch, frames, 235, device=device)
    context = torch.randn(args.batch, min(config.text_len, 128), config.text_dim, device=device)
    tasks = TaskConfig(p_joint=1.0, p_motion_to_video=0.0, p_video_to_motion=0.0)  # both modalities generated
    generator = torch.Generator().manual_seed(0)
    use_bf16 = device.type == "cuda"

    def step() -> None:
        inputs = build_training_inputs(tasks, video, motion, context, generator=generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            video_pred, motion_pred = model(inputs.video, inputs.motion, inputs.t_video, inputs.t_motion,
                                            inputs.context, inputs.task)
        loss = flow_losses(inputs, video_pred, motion_pred)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    for _ in range(args.warmup):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    step_s = (time.perf_counter() - start) / args.steps
    pt, ph, pw = config.patch_size
    video_tokens = latent[2] // pt * (latent[3] // ph) * (latent[4] // pw)
    motion_tokens = frames * 51
    peak = peak_tflops(device, args.peak_tflops)
    result = {
        "config": args.config, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "video_tokens": video_tokens,
        "motion_tokens": motion_tokens, "batch": args.batch, "step_s": step_s,
        "tokens_per_s": args.batch * (video_tokens + motion_tokens) / step_s,
        "tflops_per_step": flops / 1e12, "achieved_tflops": flops / step_s / 1e12,
        "mfu": flops / step_s / (peak * 1e12) if peak else None,
    }
    if device.type == "cuda":
        result["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def bench_loader(args, step_s: float) -> dict:
    from humove.model.data import DataConfig, make_loader

    frames, height, width, _ = SHAPES[args.config]
    frames, height, width = args.frames or frames, args.height or height, args.width or width
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards
        if shards is None:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "model"))
            from trainer_fixtures import write_paired_shards

            source_frames = int(frames / 16 * 30) + 8  # 30 fps sources long enough for the window
            write_paired_shards(Path(tmp), num_samples=8, per_shard=4, frames=source_frames, fps=30,
                                width=width * 3 // 2, height=height * 3 // 2)
            shards = tmp
        config = DataConfig(shards=[shards], num_frames=frames, fps=16, height=height, width=width,
                            batch_size=args.batch, num_workers=args.workers, shuffle_buffer=8)
        loader, _ = make_loader(config)
        iterator = iter(loader)
        next(iterator)  # start-up (worker processes) is not throughput
        start = time.perf_counter()
        for _ in range(args.loader_batches):
            next(iterator)
        batch_s = (time.perf_counter() - start) / args.loader_batches
    return {"loader_workers": args.workers, "loader_samples_per_s": args.batch / batch_s,
            "train_samples_per_s": args.batch / step_s, "loader_batch_s": batch_s}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--grad-ckpt", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (bf16 dense)")
    parser.add_argument("--shards", default=None, help="shard folder for the loader part (default: synthetic)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--loader-batches", type=int, default=8)
    parser.add_argument("--skip-loader", action="store_true")
    parser.add_argument("--loader-only", action="store_true", help="only the data loader (e.g. real sizes on CPU)")
    args = parser.parse_args(argv)

    if args.loader_only:
        result = {"config": args.config, **bench_loader(args, float("nan"))}
    else:
        result = bench_step(args)
        if not args.skip_loader:
            result.update(bench_loader(args, result["step_s"]))
    print(f"{'metric':<24} value")
    print("-" * 44)
    for key, value in result.items():
        if value is None:
            text = "n/a"
        elif isinstance(value, float):
            text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
        else:
            text = f"{value:,}" if isinstance(value, int) else str(value)
        print(f"{key:<24} {text}")


if __name__ == "__main__":
    main(sys.argv[1:])
