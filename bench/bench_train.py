"""EchoMotion training-step speed: step time, peak memory, model-FLOP MFU and hardware FLOP use; data-loader speed.

    python -m bench.bench_train --skip-loader     # GPU: Wan2.1-1.3B shapes, bf16, FSDP2 on one rank, checkpointing
                                                  # no GPU: the same code on a tiny model on CPU (a dry run)
    python -m bench.bench_train --config wan2.1-1.3b --loader-only --workers 2   # loader at real sizes, CPU

`measure_echomotion` (also used by `make gpu-check`) builds EchoMotion with random weights on the device and runs
the trainer's step (tasks.py inputs, DiT forward/backward, clipping, AdamW) on random latents / motion / text, so
it measures the network, not the encoders, wrapped as the trainer wraps it (train.wrap_parallel: FSDP2 with the
bf16 policy of train.fsdp_mixed_precision, bf16 autocast, gradient checkpointing). 1.3B shapes: 81 frames
480×832 → 32,760 video tokens + 81·51 = 4,131 motion tokens. Nothing is downloaded.

Two utilisations, both against the GPU's dense bf16 peak (`--peak-tflops` or a small table; none on CPU):
- `mfu` (model FLOPs): the analytic forward count of `humove.model.flops` × 3 per sample per step: 1.041 PFLOP at
  the 1.3B shapes. Recomputation is not useful work and is not counted. Goal ≥ 0.45 on an H100 (≈ 2.3 s/sample).
- `hfu` (hardware FLOPs): what the GPU actually runs: the model FLOPs plus the blocks' forward recomputed by
  gradient checkpointing (+33 %) and the fused attention backward's recomputed scores (+12 %): 1.46× the model
  FLOPs at the 1.3B shapes with checkpointing.
The loader part reads shards (given with --shards, else small ones written to a temporary folder at the
benchmark's video size) with the configured workers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from humove.model.config import DiTConfig
from humove.model.dit import EchoMotionDiT
from humove.model.flops import forward_flops
from humove.model.tasks import TaskConfig, build_training_inputs, flow_losses
from humove.model.train import TrainConfig, uses_bf16, wrap_parallel
from humove.motion.representation import TOKENS_PER_FRAME

# Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment; the first fragment found in the name wins.
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0,
               "A10G": 125.0, "4090": 165.0}
MFU_GOAL = 0.45  # on an H100 at the 1.3B shapes
SHAPES = {  # preset → (frames, height, width)
    "tiny": (9, 64, 64),
    "wan2.1-1.3b": (81, 480, 832),
    "wan2.2-5b": (121, 704, 1280),
}


def peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_TFLOPS.items() if key in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def single_rank_group(device: torch.device) -> bool:
    """A one-process group for FSDP2 when none exists (True: created here, to be destroyed by the caller)."""
    if dist.is_initialized():
        if dist.get_world_size() != 1:
            raise ValueError(f"measure_echomotion runs in one process; this one is rank {dist.get_rank()} of "
                             f"{dist.get_world_size()}")
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return True


def measure_echomotion(device: str | torch.device | None = None, *, preset: str | None = None, batch: int = 1,
                       steps: int = 3, warmup: int = 1, frames: int | None = None, height: int | None = None,
                       width: int | None = None, parallel: str = "fsdp", precision: str = "bf16",
                       gradient_checkpointing: bool = True, peak: float | None = None) -> dict:
    """Time the trainer's step on random inputs; returns step time, peak memory, MFU and hardware FLOP use.

    device: "cuda", "cpu" or None (CUDA when available). preset: DiTConfig preset, by default "wan2.1-1.3b" on
    CUDA and "tiny" on CPU (a dry run of the same code: `note` says so; without a peak there is no MFU).
    parallel: "fsdp" (FSDP2 on one rank, a process group is started when none exists) or "none".
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    preset = preset or ("wan2.1-1.3b" if device.type == "cuda" else "tiny")
    config = DiTConfig.preset(preset, **({"text_len": 16} if preset == "tiny" else {}))
    frames, height, width = frames or SHAPES[preset][0], height or SHAPES[preset][1], width or SHAPES[preset][2]
    latent = (batch, *config.latent_shape(frames, height, width))
    train_config = TrainConfig(model=preset, parallel=parallel, precision=precision, device=device.type,
                               gradient_checkpointing=gradient_checkpointing)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    owns_group = parallel == "fsdp" and single_rank_group(device)
    try:
        torch.manual_seed(0)
        with torch.device(device):  # random initialisation on the device itself (seconds, not minutes, at 1.3B)
            model = EchoMotionDiT(config)
        model.enable_gradient_checkpointing(gradient_checkpointing)
        model, mode = wrap_parallel(model, train_config, 1, device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=8e-6, weight_decay=1e-3)
        video = torch.randn(latent, device=device)
        motion = torch.randn(batch, frames, 235, device=device)
        context = torch.randn(batch, min(config.text_len, 128), config.text_dim, device=device)
        tasks = TaskConfig(p_joint=1.0, p_motion_to_video=0.0, p_video_to_motion=0.0)  # same tokens as any task
        generator = torch.Generator().manual_seed(0)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(train_config, device))

        def step() -> torch.Tensor:
            inputs = build_training_inputs(tasks, video, motion, context, generator=generator)
            with autocast:
                video_pred, motion_pred = model(inputs.video, inputs.motion, inputs.t_video, inputs.t_motion,
                                                inputs.context, inputs.task)
            loss = flow_losses(inputs, video_pred, motion_pred)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            return loss

        for _ in range(warmup):
            step()
        synchronize(device)
        start = time.perf_counter()
        losses = [step() for _ in range(steps)]
        synchronize(device)
        step_s = (time.perf_counter() - start) / steps
        loss = losses[-1].item()
    finally:
        if owns_group:
            dist.destroy_process_group()

    pt, ph, pw = config.patch_size
    video_tokens = latent[2] // pt * (latent[3] // ph) * (latent[4] // pw)
    flops = forward_flops(config, video_tokens, frames * TOKENS_PER_FRAME)
    model_flops = batch * flops.training_step()
    hardware_flops = batch * flops.hardware_step(gradient_checkpointing)
    peak = peak_tflops(device, peak)
    result = {
        "config": preset, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "parallel": mode, "precision": precision, "gradient_checkpointing": gradient_checkpointing,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "video_tokens": video_tokens,
        "motion_tokens": frames * TOKENS_PER_FRAME, "batch": batch, "step_s": step_s, "s_per_sample": step_s / batch,
        "tokens_per_s": batch * (video_tokens + frames * TOKENS_PER_FRAME) / step_s, "loss": loss,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "model_pflop_per_step": model_flops / 1e15, "hardware_pflop_per_step": hardware_flops / 1e15,
        "peak_tflops": peak,
        "mfu": model_flops / step_s / (peak * 1e12) if peak else None,
        "hfu": hardware_flops / step_s / (peak * 1e12) if peak else None,
        "mfu_goal": MFU_GOAL if device.type == "cuda" else None,
    }
    if device.type != "cuda":
        result["note"] = (f"no GPU: a dry run of the same code on CPU ({preset} model); the speed means nothing and "
                          "there is no peak to compute MFU against")
    return result


def bench_loader(args, step_s: float) -> dict:
    from humove.model.data import DataConfig, make_loader

    frames, height, width = SHAPES[args.config]
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
    parser.add_argument("--config", default=None, choices=sorted(SHAPES),
                        help="DiT preset (default: wan2.1-1.3b on CUDA, tiny on CPU)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--parallel", default="fsdp", choices=["fsdp", "none"],
                        help="fsdp: FSDP2 on one rank, as the trainer wraps the model (default)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--no-grad-ckpt", action="store_true", help="without gradient checkpointing")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (bf16 dense)")
    parser.add_argument("--shards", default=None, help="shard folder for the loader part (default: synthetic)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--loader-batches", type=int, default=8)
    parser.add_argument("--skip-loader", action="store_true")
    parser.add_argument("--loader-only", action="store_true", help="only the data loader (e.g. real sizes on CPU)")
    args = parser.parse_args(argv)

    if args.loader_only:
        args.config = args.config or "tiny"
        result = {"config": args.config, **bench_loader(args, float("nan"))}
    else:
        result = measure_echomotion(args.device, preset=args.config, batch=args.batch, steps=args.steps,
                                    warmup=args.warmup, frames=args.frames, height=args.height, width=args.width,
                                    parallel=args.parallel, precision=args.precision,
                                    gradient_checkpointing=not args.no_grad_ckpt, peak=args.peak_tflops)
        args.config = result["config"]
        if not args.skip_loader:
            result.update(bench_loader(args, result["step_s"]))
    note = result.pop("note", None)
    print(f"{'metric':<24} value")
    print("-" * 44)
    for key, value in result.items():
        if value is None:
            text = "n/a"
        elif isinstance(value, float):
            text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
        else:
            text = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
        print(f"{key:<24} {text}")
    if note:
        print(f"note: {note}")


if __name__ == "__main__":
    main(sys.argv[1:])
