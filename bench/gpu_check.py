"""`make gpu-check`: one table that says how the production path performs on a lent GPU (meant to take under 10
minutes on one H100; not yet run on one). Nothing is downloaded: every model is a random-weight stand-in of the
production architecture (`bench.random_models`).

1. The production pipeline: `pipelines/humove.yaml` with the test overlay (`bench.production`) on one rendered
   video through the local executor, on the GPU, to verified shards.
2. Each GPU stage's throughput against the same model called bare in a loop on the same inputs (goal: the stage
   reaches ≥ 80 % of the bare model): aesthetic (CLIP ViT-L/14 + LAION head), person (YOLO11x + ByteTrack), pose
   (a DWPose-scale ONNX on onnxruntime's CUDA provider), smpl (CameraHMR ViT-H + FLNet). keywords runs on vLLM in
   production: its engine is measured by the caption row.
3. EchoMotion at the Wan2.1-1.3B shapes (random init, bf16, FSDP2 on one rank, gradient checkpointing): step time,
   peak memory and model-FLOP MFU (goal ≥ 45 % on an H100, about 2.3 s per sample) — `bench_train.measure_echomotion`.
4. Caption tokens/s of the stage's vLLM backend against the bare vLLM engine fed the same requests (goal ≥ 90 %),
   when vLLM is installed — `bench_caption.measure_caption`.

Without a GPU the same code runs at tiny sizes on the CPU (a dry run: the numbers are not GPU numbers, so no row
is judged against its goal), says so, and exits 0. Exit status 1 means a check failed to run.

    python -m bench.gpu_check [--keep DIR]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

STAGE_GOAL = 0.80


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="build the models and runs in this folder and keep them")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never a download, never a hub look-up
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    print(f"gpu-check on {torch.cuda.get_device_name(0) if cuda else 'CPU (no GPU found)'}; torch {torch.__version__}")
    if not cuda:
        print("no GPU: a dry run of the same code at tiny sizes on the CPU; the numbers are not GPU numbers")
    folder = Path(args.keep or tempfile.mkdtemp(prefix="humove-gpu-check-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    try:
        start = time.perf_counter()
        models = _run(rows, "stand-in models", lambda: build_row(folder, cuda))
        if models is not None:
            models = models["models"]
            _run(rows, "production pipeline", lambda: pipeline_row(models, device, folder))
            _run(rows, "aesthetic", lambda: aesthetic_row(models, device, folder))
            _run(rows, "person + pose", lambda: filter_rows(models, device, folder))
            _run(rows, "smpl", lambda: smpl_row(device))
        rows.append({"check": "keywords (vLLM in production)", "result": "skipped: its engine is vLLM, measured by "
                     "the caption row; the transformers path ran in the pipeline row"})
        _run(rows, "EchoMotion", lambda: echomotion_row(cuda))
        _run(rows, "caption", caption_row)
        print_table(rows, cuda, time.perf_counter() - start)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 1 if any(row.get("result", "").startswith("error") for row in rows) else 0


def _run(rows: list[dict], check: str, fn):
    """Run one check; its rows (a dict or a list of dicts) are added, an exception becomes one error row. The GPU
    memory the check's models held is released before the next (the training step and vLLM want most of it)."""
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - the table reports it and goes on with the next check
        traceback.print_exc(file=sys.stderr)
        rows.append({"check": check, "result": f"error: {type(exc).__name__}: {exc}".splitlines()[0][:160]})
        return None
    finally:
        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if isinstance(result, dict):
        rows.append(result)
    elif isinstance(result, list):
        rows.extend(result)
    return result


def build_row(folder: Path, cuda: bool) -> dict:
    from bench.random_models import build_all

    start = time.perf_counter()
    models = build_all(folder / "models", "full" if cuda else "tiny")
    return {"check": "stand-in models", "setting": f"{models.size} sizes", "models": models,
            "measured": f"built in {time.perf_counter() - start:.0f} s", "result": "ok"}


def _rate_row(check: str, setting: str, unit: str, items: int, bare_s: float, stage_s: float,
              goal: float = STAGE_GOAL) -> dict:
    ratio = bare_s / stage_s
    return {"check": check, "setting": setting, "bare": f"{items / bare_s:.1f} {unit}",
            "stage": f"{items / stage_s:.1f} {unit}", "ratio": ratio, "goal": goal}


def pipeline_row(models, device: str, folder: Path) -> dict:
    """humove.yaml + the overlay through the local executor on `device`, one rendered video → verified shards."""
    import torch

    from bench.production import keyword_video, overlay_pipeline, production_overlay
    from humove.config import load_pipeline
    from humove.engine import Runner
    from humove.schemas.shard import read_dataset

    # two shots on a GPU; on a CPU one short shot
    videos = keyword_video(folder / "videos", "demo_00_walk_wave.mp4" if device == "cuda" else "demo_02_walk.mp4")
    overlay = production_overlay(models, videos, device, torch.cuda.device_count() if device == "cuda" else 0)
    config, stages = load_pipeline(overlay_pipeline(folder / "humove-gpu-check.yaml", overlay))
    run_dir = folder / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    results = Runner(config, stages, str(run_dir), executor="local").run()
    seconds = time.perf_counter() - start
    manifest = read_dataset(str(run_dir / "dataset"), verify=True)
    slowest = max(results, key=lambda r: r.seconds)
    return {"check": "production pipeline (humove.yaml)", "setting": f"1 video, {len(stages)} stages, {device}",
            "measured": f"{manifest.total_samples} clip{'s' * (manifest.total_samples != 1)} to verified shards in "
                        f"{seconds:.0f} s (slowest: {slowest.stage} {slowest.seconds:.0f} s, model loading included)",
            "result": "ok" if manifest.total_samples else "error: no clip reached the shards"}


def aesthetic_row(models, device: str, folder: Path) -> dict:
    from bench.bench_aesthetic import measure

    clips = 32 if device == "cuda" else 4
    config = {"backend": "laion-v2", "encoder": models.aesthetic_encoder, "head": models.aesthetic_head,
              "device": device}
    result = measure(config, clips, str(folder / "aesthetic"))
    return _rate_row("aesthetic: CLIP ViT-L/14 + LAION head" if models.size == "full" else "aesthetic: CLIP + head",
                     f"{clips} clips × 3 frames", "frames/s", result["frames"], result["bare_s"], result["stage_s"])


def filter_rows(models, device: str, folder: Path) -> list[dict]:
    from bench.bench_filters import measure

    frames = 128 if device == "cuda" else 16
    person = {"backend": "yolo", "weights": models.yolo, "device": device, "tracker": "bytetrack",
              **({} if device == "cuda" else {"image_size": 160})}
    result = measure(person, {"backend": "dwpose", "weights": models.dwpose, "device": device}, frames,
                     str(folder / "filters"))
    count = result["frames"]
    return [_rate_row(f"person: {Path(models.yolo).stem} + ByteTrack", f"{count} frames 320×240", "frames/s", count,
                      result["person"]["bare_s"], result["person"]["stage_s"]),
            _rate_row("pose: DWPose-interface ONNX", f"{count} crops 288×384, {result['pose']['backend']}",
                      "frames/s", count, result["pose"]["bare_s"], result["pose"]["stage_s"])]


def smpl_row(device: str) -> dict:
    from bench.bench_motion_stages import bench_camerahmr

    if device == "cuda":
        frames, check = 128, "smpl: CameraHMR ViT-H + FLNet W48"
        _, setting, bare, staged = bench_camerahmr(frames, "cuda", 64, "bfloat16")
    else:  # the sizes of the pipeline row's stand-in
        from humove.hmr.random_weights import SMALL_FLNET_SIZE, SMALL_HMR_SIZE
        from humove.stages.smpl import SmplConfig

        frames, check = 16, "smpl: CameraHMR + FLNet (small)"
        small = SmplConfig(hmr_size=SMALL_HMR_SIZE, flnet_size=SMALL_FLNET_SIZE)
        _, setting, bare, staged = bench_camerahmr(frames, "cpu", 8, "float32", small.hmr_config(),
                                                   small.flnet_config())
    return _rate_row(check, setting, "frames/s", frames, frames / bare, frames / staged)  # rates → seconds


def echomotion_row(cuda: bool) -> dict:
    measure = _optional("bench.bench_train", "measure_echomotion")
    if measure is None:
        return {"check": "EchoMotion training step", "result": "skipped: not available in this build"}
    result = measure()
    if result.get("mfu") is not None:
        measured = (f"{result['s_per_sample']:.2f} s/sample, peak {result['peak_mem_gib']:.1f} GiB, "
                    f"MFU {result['mfu']:.1%} (hardware FLOP use {result['hfu']:.1%})")
    else:  # a CPU dry run, or a GPU whose bf16 peak the bench does not know
        measured = f"{result['s_per_sample']:.2f} s/sample, no MFU ({'dry run' if not cuda else 'peak unknown'})"
    return {"check": f"EchoMotion step ({result['config']})", "setting": f"{result['precision']}, "
            f"{result['parallel']}, checkpointing {'on' if result['gradient_checkpointing'] else 'off'}",
            "measured": measured, "ratio": result.get("mfu"), "goal": result.get("mfu_goal")}


def caption_row() -> dict:
    measure = _optional("bench.bench_caption", "measure_caption")
    if measure is None:
        return {"check": "caption: vLLM stage vs engine", "result": "skipped: not available in this build"}
    result = measure()
    row = {"check": "caption: vLLM stage vs engine", "setting": result.get("model", "")}
    if result["status"] != "ok":
        return {**row, "result": result["status"]}
    return {**row, "setting": f"{result['clips']} clips, batch {result['batch']}",
            "bare": f"{result['engine_tokens_per_s']:.0f} tok/s", "stage": f"{result['stage_tokens_per_s']:.0f} tok/s",
            "ratio": result["ratio"], "goal": result["goal"]}


def _optional(module: str, name: str):
    """A measuring function another part of the project provides, or None when this build has none."""
    return getattr(importlib.import_module(module), name, None)


def print_table(rows: list[dict], cuda: bool, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"gpu-check ({'GPU' if cuda else 'dry run on CPU, tiny sizes'}), {seconds:.0f} s")
    for column in ("check", "setting", "bare model", "stage / measured", "ratio", "goal", "result"):
        table.add_column(column, overflow="fold")
    for row in rows:
        ratio, goal = row.get("ratio"), row.get("goal")
        result = row.get("result")
        if result is None and ratio is not None and goal is not None:
            result = ("meets goal" if ratio >= goal else "BELOW GOAL") if cuda else "dry run: not judged"
        table.add_row(row["check"], row.get("setting", ""), row.get("bare", ""),
                      row.get("stage") or row.get("measured", ""), "" if ratio is None else f"{ratio:.0%}",
                      "" if goal is None else f"≥ {goal:.0%}", result or "ok")
    Console(width=max(160, shutil.get_terminal_size().columns)).print(table)


if __name__ == "__main__":
    sys.exit(main())
