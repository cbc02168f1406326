"""`caption` throughput: output tokens/s of the stage against the same engine fed the same inputs directly.

    python -m bench.bench_caption                                   # CPU: tiny random-weight Qwen2-VL, transformers
    python -m bench.bench_caption --backend vllm --model /models/Qwen2.5-VL-7B-Instruct --clips 256 --batch 64

Clips are drawn by `humove.samples` and written once; their frames are sampled as the stage's `prepare` does (on
CPU workers of their own in a Ray run, so that time is reported apart). Rows:
- engine, one call: every request in one `generate` call (vLLM schedules them with continuous batching);
- engine, plain loop: the same requests in batches of `--batch`, one `generate` call per batch;
- stage: `CaptionStage.process_batch` on the same prepared clips and batches (prompting, JSON parsing, the one
  retry of malformed answers, records). Goal: the stage reaches ≥ 90 % of the one-call engine rate.
The tiny CPU model answers garbage, so the stage retries every clip once; tokens/s counts every generated token.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from humove.captioning.backends import VideoRequest
from humove.captioning.prompts import caption_messages
from humove.language.clients import GenerationSettings
from humove.stage import StageContext
from humove.stages.caption import CaptionConfig, CaptionStage
from humove.video import write_mp4

FPS = 16


def bench_clips(count: int, seconds: float, width: int, height: int) -> list[dict]:
    """Joined-row stand-ins for `count` distinct clips (written once, cached in the temp folder)."""
    folder = os.path.join(tempfile.gettempdir(), "humove-bench", "caption")
    os.makedirs(folder, exist_ok=True)
    frames = int(round(seconds * FPS))
    rows = []
    for index in range(count):
        path = os.path.join(folder, f"clip_{index:04d}_{width}x{height}_{frames}f.mp4")
        if not os.path.exists(path):
            tmp = f"{path}.tmp.mp4"
            write_mp4(tmp, _frames(index, frames, width, height), fps=FPS)
            os.replace(tmp, path)
        rows.append({"clip_id": f"c{index:04d}", "input_id": f"c{index:04d}", "clip_path": path,
                     "clip_num_frames": frames, "clip_fps": float(FPS), "clip_width": width, "clip_height": height,
                     "start_s": 0.0, "end_s": seconds})
    return rows


def _frames(seed: int, count: int, width: int, height: int):
    """A coloured gradient with a square moving across it, different per clip."""
    rng = np.random.default_rng(seed)
    base = np.zeros((height, width, 3), np.uint8)
    base[:] = rng.integers(0, 256, 3)
    base[:, :, 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    side = max(4, height // 4)
    for i in range(count):
        frame = base.copy()
        x = int((width - side) * i / max(1, count - 1))
        frame[height // 3: height // 3 + side, x: x + side] = 255
        yield frame


def make_stage(args) -> CaptionStage:
    config = CaptionConfig(backend="transformers" if args.backend == "tiny" else args.backend, model=args.model,
                           max_tokens=args.max_tokens, sample_fps=args.sample_fps, max_frames=args.max_frames,
                           max_pixels=args.max_pixels, engine_args=_engine_args(args))
    stage = CaptionStage(config, StageContext(tempfile.mkdtemp(prefix="bench-caption-"), "caption"))
    if args.backend == "tiny":
        from humove.captioning.backends import TransformersCaptioner
        from humove.captioning.tiny import tiny_processor, tiny_vl_model

        processor = tiny_processor()
        stage.captioner = TransformersCaptioner("tiny-random-qwen2-vl", GenerationSettings(max_tokens=args.max_tokens),
                                                processor=processor, loaded_model=tiny_vl_model(processor))
    stage.setup()
    return stage


def _engine_args(args) -> dict:
    if args.backend != "vllm":
        return {}
    return {"max_model_len": args.max_model_len, "gpu_memory_utilization": 0.9,
            "max_num_seqs": max(args.batch, 64)}


def _rate(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["tiny", "transformers", "vllm"], default="tiny")
    parser.add_argument("--model", default="tiny-random-qwen2-vl")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--sample-fps", type=float, default=2.0)
    parser.add_argument("--max-frames", type=int, default=16)
    parser.add_argument("--max-pixels", type=int, default=112 * 196)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--max-model-len", type=int, default=16384)
    args = parser.parse_args(argv)

    rows = bench_clips(args.clips, args.seconds, args.width, args.height)
    stage = make_stage(args)
    started = time.perf_counter()
    prepared = [stage.prepare(row) for row in rows]
    prepare_s = time.perf_counter() - started
    batches = [prepared[i:i + args.batch] for i in range(0, len(prepared), args.batch)]
    requests = [VideoRequest(p["caption_input_frames"], p["caption_input_fps"], caption_messages()) for p in prepared]
    engine = stage.captioner
    engine.generate(requests[:1])  # warm-up: compile, allocate

    started = time.perf_counter()
    one_call = sum(g.output_tokens for g in engine.generate(requests))
    one_call_s = time.perf_counter() - started

    started = time.perf_counter()
    loop = sum(g.output_tokens for i in range(0, len(requests), args.batch)
               for g in engine.generate(requests[i:i + args.batch]))
    loop_s = time.perf_counter() - started

    started = time.perf_counter()
    records = [r for batch in batches for r in stage.process_batch(batch)]
    stage_s = time.perf_counter() - started
    stage_tokens = sum(int(r.get("caption_output_tokens") or 0) for r in records)
    ok = sum(1 for r in records if r.get("status") == "ok")

    base = _rate(one_call, one_call_s)
    print(f"caption bench: backend={args.backend} model={args.model} clips={args.clips} batch={args.batch} "
          f"frames/clip={len(prepared[0]['caption_input_frames'])} max_tokens={args.max_tokens}")
    print(f"frame preparation (CPU, separate workers in a run): {prepare_s:.2f} s = "
          f"{prepare_s / len(rows) * 1000:.0f} ms/clip")
    print(f"{'path':<28}{'seconds':>10}{'out tokens':>12}{'tokens/s':>12}{'vs one call':>13}")
    for name, tokens, seconds in (("engine, one call", one_call, one_call_s), ("engine, plain loop", loop, loop_s),
                                  ("stage (process_batch)", stage_tokens, stage_s)):
        rate = _rate(tokens, seconds)
        print(f"{name:<28}{seconds:>10.2f}{tokens:>12d}{rate:>12.1f}{rate / base:>12.0%}")
    print(f"stage records: {ok} ok, {len(records) - ok} rejected (caption_malformed expected for random weights)")


if __name__ == "__main__":
    main()
