"""`caption` throughput: output tokens/s of the stage against the bare engine fed the same requests.

    python -m bench.bench_caption                                   # CPU: tiny random-weight Qwen2.5-VL, transformers
    python -m bench.bench_caption --backend vllm                    # GPU: Qwen2.5-VL-7B shapes, random weights
    python -m bench.bench_caption --backend vllm --model /models/Qwen2.5-VL-7B-Instruct --clips 256 --batch 64

`measure_caption(model_path, ...)` is the GPU check's entry: it returns a dict (see its docstring) and, without
vLLM, a `skipped: vLLM not installed` result. Nothing here downloads: a model is a local folder, and without one
the vLLM run writes Qwen2.5-VL-7B's config with a tiny tokenizer and lets vLLM draw random weights
(`load_format="dummy"`).

Clips are drawn here and written once; their frames are sampled as the stage's `prepare` does (on CPU workers of
their own in a Ray run, so that time is reported apart). The stage runs `process_batch` batch after batch while
every call it makes to its model backend is recorded (the first answers and the one retry of malformed ones);
after each batch the bare engine gets exactly those calls again, with its inputs built beforehand (vLLM:
`LLM.generate` on the prompts; transformers: the backend's `generate`). One untimed stage batch warms both sides
up. Ratio = stage tokens/s ÷ bare tokens/s, goal ≥ 90 %. vLLM's prefix and multimodal caches are off, so the
second run gains nothing from the first. Random weights answer garbage: the stage retries every clip once, and
both sides count every generated token.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
import traceback

import numpy as np

from humove.captioning.backends import TransformersCaptioner, VideoRequest, vllm_inputs
from humove.language.clients import GenerationSettings
from humove.stage import StageContext
from humove.stages.caption import CaptionConfig, CaptionStage
from humove.video import write_mp4

FPS = 16
GOAL = 0.90
DEFAULT_VLLM_ARGS = {"max_model_len": 8192, "gpu_memory_utilization": 0.6, "enable_prefix_caching": False,
                     "mm_processor_cache_gb": 0}


def bench_clips(count: int, seconds: float, width: int, height: int) -> list[dict]:
    """Joined-row stand-ins for `count` distinct clips (written once, cached in the temp folder)."""
    folder = os.path.join(tempfile.gettempdir(), "humove-bench", "caption")
    os.makedirs(folder, exist_ok=True)
    frames = int(round(seconds * FPS))
    rows = []
    for index in range(count):
        path = os.path.join(folder, f"clip_{index:04d}_{width}x{height}_{frames}f.mp4")
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.tmp.mp4"
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


class RecordingBackend:
    """The stage's model backend, keeping the requests of every call so the bare engine can get the same ones."""

    def __init__(self, backend):
        self.backend = backend
        self.calls: list[list[VideoRequest]] = []

    def generate(self, requests: list[VideoRequest]):
        self.calls.append(list(requests))
        return self.backend.generate(requests)


class BareVLLM:
    """vLLM's `LLM.generate` on prompts built beforehand: the engine without the stage."""

    def __init__(self, captioner):
        self.captioner = captioner

    def prepare(self, requests: list[VideoRequest]) -> list[dict]:
        return vllm_inputs(self.captioner.processor, requests)

    def run(self, inputs: list[dict]) -> int:
        outputs = self.captioner.llm.generate(inputs, self.captioner.sampling, use_tqdm=False)
        return sum(len(out.outputs[0].token_ids) for out in outputs)


class BareTransformers:
    """The transformers backend's `generate`: the model without the stage."""

    def __init__(self, captioner):
        self.captioner = captioner

    def prepare(self, requests: list[VideoRequest]) -> list[VideoRequest]:
        return requests

    def run(self, requests: list[VideoRequest]) -> int:
        return sum(g.output_tokens for g in self.captioner.generate(requests))


def compare(stage: CaptionStage, rows: list[dict], batch: int, bare) -> dict:
    """Stage against bare engine on the same calls; `bare` has `prepare(requests)` and `run(prepared) -> tokens`."""
    started = time.perf_counter()
    prepared = [stage.prepare(row) for row in rows]
    prepare_s = time.perf_counter() - started
    batches = [prepared[i:i + batch] for i in range(0, len(prepared), batch)]
    stage.process_batch(batches[0])  # warm-up of both sides: compile, allocate, first and retry prompt shapes

    backend, records, calls = stage.captioner, [], 0
    stage_s = engine_s = 0.0
    engine_tokens = 0
    try:
        for chunk in batches:  # interleaved, so drifting machine load falls on both sides alike
            stage.captioner = recorder = RecordingBackend(backend)
            started = time.perf_counter()
            records += stage.process_batch(chunk)
            stage_s += time.perf_counter() - started
            stage.captioner = backend
            replay = [bare.prepare(requests) for requests in recorder.calls]
            started = time.perf_counter()
            engine_tokens += sum(bare.run(call) for call in replay)
            engine_s += time.perf_counter() - started
            calls += len(replay)
    finally:
        stage.captioner = backend
    stage_tokens = sum(int(r.get("caption_output_tokens") or 0) for r in records)

    stage_rate, engine_rate = _rate(stage_tokens, stage_s), _rate(engine_tokens, engine_s)
    ratio = stage_rate / engine_rate if engine_rate > 0 else float("nan")
    return {"status": "ok", "clips": len(rows), "batch": batch,
            "frames_per_clip": int(len(prepared[0]["caption_input_frames"])),
            "sample_fps": float(prepared[0]["caption_input_fps"]), "prepare_ms_per_clip": prepare_s / len(rows) * 1e3,
            "calls": calls, "retried": sum(1 for r in records if r.get("caption_tries") == 2),
            "ok": sum(1 for r in records if r.get("status") == "ok"),
            "stage_s": stage_s, "stage_tokens": stage_tokens, "stage_tokens_per_s": stage_rate,
            "engine_s": engine_s, "engine_tokens": engine_tokens, "engine_tokens_per_s": engine_rate,
            "ratio": ratio, "goal": GOAL, "meets_goal": bool(ratio >= GOAL)}


def measure_caption(model_path: str | None = None, *, clips: int = 32, batch: int = 16, max_tokens: int = 64,
                    seconds: float = 4.0, width: int = 448, height: int = 256, sample_fps: float = 2.0,
                    max_frames: int = 16, max_pixels: int = 224 * 392, engine_args: dict | None = None) -> dict:
    """Caption tokens/s of the stage's vLLM backend against the bare vLLM engine fed the same requests.

    `model_path`: a local model folder; None writes Qwen2.5-VL-7B's config (random weights drawn by vLLM,
    `load_format="dummy"`, the tiny tokenizer's vocabulary). `engine_args` add to or override `LLM(...)` arguments
    (defaults: `DEFAULT_VLLM_ARGS`, 60 % of GPU memory). Best called last or in its own process: vLLM keeps GPU
    memory until its engine is collected.

    Returns `{"name": "caption", "status": "ok" | "skipped: <why>" | "error: <one line>", "goal": 0.9, ...}` (an
    error also has `traceback`); with "ok" also `model`,
    `clips`, `batch`, `frames_per_clip`, `sample_fps`, `prepare_ms_per_clip`, `calls`, `retried`, `ok`,
    `stage_s`, `stage_tokens`, `stage_tokens_per_s`, `engine_s`, `engine_tokens`, `engine_tokens_per_s`,
    `ratio` (stage ÷ engine tokens/s) and `meets_goal`."""
    base = {"name": "caption", "goal": GOAL}
    try:
        import vllm  # noqa: F401
    except ImportError:
        return {**base, "status": "skipped: vLLM not installed"}
    if model_path is not None and not os.path.isdir(model_path):
        return {**base, "status": f"skipped: {model_path} is not a local model folder (the check never downloads)"}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = model_path
    if folder is None:
        from humove.captioning.tiny import save_vl_model

        folder = save_vl_model(tempfile.mkdtemp(prefix="humove-qwen25-vl-7b-"), "7b")
    args = {**DEFAULT_VLLM_ARGS, "max_num_seqs": max(batch, 16), **({} if model_path else {"load_format": "dummy"}),
            **(engine_args or {})}
    model = model_path or "random-weight Qwen2.5-VL-7B shapes (vLLM load_format=dummy)"
    try:
        stage = make_stage("vllm", folder, max_tokens=max_tokens, sample_fps=sample_fps, max_frames=max_frames,
                           max_pixels=max_pixels, engine_args=args)
        result = compare(stage, bench_clips(clips, seconds, width, height), batch, BareVLLM(stage.captioner))
    except Exception as exc:  # noqa: BLE001 - the check reports it in its table and goes on
        return {**base, "model": model, "status": f"error: {type(exc).__name__}: {exc}".splitlines()[0],
                "traceback": traceback.format_exc()}
    finally:
        stage = None
        gc.collect()
    return {**base, **result, "model": model}


def make_stage(backend: str, model: str, *, max_tokens: int, sample_fps: float, max_frames: int, max_pixels: int,
               engine_args: dict | None = None) -> CaptionStage:
    """The caption stage with its model backend; `backend="tiny"`: transformers with a tiny random Qwen2.5-VL."""
    config = CaptionConfig(backend="transformers" if backend == "tiny" else backend, model=model,
                           max_tokens=max_tokens, sample_fps=sample_fps, max_frames=max_frames, max_pixels=max_pixels,
                           engine_args=engine_args or {})
    stage = CaptionStage(config, StageContext(tempfile.mkdtemp(prefix="bench-caption-"), "caption"))
    if backend == "tiny":
        from humove.captioning.tiny import tiny_processor, tiny_vl_model

        processor = tiny_processor(qwen25=True)
        stage.captioner = TransformersCaptioner(model, GenerationSettings(max_tokens=max_tokens), processor=processor,
                                                loaded_model=tiny_vl_model(processor))
    stage.setup()
    return stage


def _rate(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else float("nan")


def format_result(result: dict) -> str:
    if result["status"] != "ok":
        return f"caption: {result['status']}"
    return "\n".join([
        f"caption: {result['clips']} clips in batches of {result['batch']}, {result['frames_per_clip']} frames/clip "
        f"at {result['sample_fps']:.2f} fps, model {result['model']}",
        f"frame preparation (CPU, separate workers in a run): {result['prepare_ms_per_clip']:.0f} ms/clip",
        f"{'path':<24}{'seconds':>10}{'out tokens':>12}{'tokens/s':>12}",
        f"{'bare engine':<24}{result['engine_s']:>10.2f}{result['engine_tokens']:>12d}"
        f"{result['engine_tokens_per_s']:>12.1f}",
        f"{'stage (process_batch)':<24}{result['stage_s']:>10.2f}{result['stage_tokens']:>12d}"
        f"{result['stage_tokens_per_s']:>12.1f}",
        f"stage / bare engine: {result['ratio']:.0%} (goal >= {result['goal']:.0%}); {result['calls']} calls, "
        f"{result['ok']} ok, {result['retried']} retried once (random weights answer garbage)",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["tiny", "transformers", "vllm"], default="tiny")
    parser.add_argument("--model", default=None, help="local model folder (vllm without one: random 7B shapes)")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--sample-fps", type=float, default=2.0)
    parser.add_argument("--max-frames", type=int, default=16)
    parser.add_argument("--max-pixels", type=int, default=112 * 196)
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args(argv)
    sizes = {"max_tokens": args.max_tokens, "sample_fps": args.sample_fps, "max_frames": args.max_frames,
             "max_pixels": args.max_pixels}
    if args.backend == "vllm":
        result = measure_caption(args.model, clips=args.clips, batch=args.batch, seconds=args.seconds,
                                 width=args.width, height=args.height, **sizes)
    else:
        if args.backend == "transformers" and not (args.model and os.path.isdir(args.model)):
            parser.error("--backend transformers needs --model: a local model folder")
        stage = make_stage(args.backend, args.model or "tiny-random-qwen2.5-vl", **sizes)
        rows = bench_clips(args.clips, args.seconds, args.width, args.height)
        result = {**compare(stage, rows, args.batch, BareTransformers(stage.captioner)),
                  "model": args.model or "tiny random-weight Qwen2.5-VL (transformers)"}
    print(format_result(result))


if __name__ == "__main__":
    main()
