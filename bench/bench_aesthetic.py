"""Throughput of the `aesthetic` stage against its bare scorer, in scored frames per second.

    python -m bench.bench_aesthetic [--clips 8]                              # CPU: offline technical-quality
    python -m bench.bench_aesthetic --backend laion-v2 --device cuda --encoder DIR --head HEAD.pth
    python -m bench.bench_aesthetic --backend laion-v2 --device cuda --random-weights   # same architecture, no files

Clips (320×240, 48 frames, 16 fps) are drawn in code and encoded once; each is scored at 3 frames. Rows: the bare
scorer on frames already decoded and prepared (technical measures on luma, or encoder + head on normalised
pixels, batched), then the stage through its worker (decode, prepare, score, records), and their ratio.
`--random-weights` builds the real encoder architecture (CLIP ViT-L/14, SigLIP so400m) with random weights and
a random head: the throughput of the real model where its weights are not at hand; the scores mean nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import numpy as np

from bench import best_seconds
from humove.video import probe, write_mp4
from humove.worker import StageWorker

FPS, FRAMES = 16, 48


def _frames(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:240, 0:320]
    base = np.stack([60 + 120 * xx / 320, 80 + 90 * yy / 240, 150 - 60 * xx / 320], axis=-1)
    base += rng.normal(0, 3, base.shape)
    frames = []
    for index in range(FRAMES):
        image = np.clip(base, 0, 255).astype(np.uint8)
        x = 30 + index * 5
        image[90:170, x:x + 40] = (200, 60, 40)
        frames.append(image)
    return frames


def _clip(folder: str, index: int) -> dict:
    path = f"{folder}/clip{index}.mp4"
    write_mp4(path, _frames(index), fps=FPS)
    info = probe(path)
    clip_id = f"bench{index}"
    return {"clip_id": clip_id, "input_id": clip_id, "clip_path": path, "clip_sha256": "", "clip_bytes": 0,
            "clip_fps": info.fps, "clip_num_frames": info.num_frames, "clip_width": info.width,
            "clip_height": info.height, "start_s": 0.0, "end_s": info.duration_s}


def _random_weights(folder: str, backend: str) -> tuple[str, str]:
    """A real-size encoder folder and head file with random weights."""
    if backend == "laion-v2":  # CLIP ViT-L/14 at 224 + the LAION head
        from bench.random_models import CLIP_VIT_L14, clip_aesthetic

        return clip_aesthetic(folder, CLIP_VIT_L14)
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from bench.random_models import random_head
    from humove.quality.aesthetic import make_head

    torch.manual_seed(0)  # so400m-patch14-384
    config = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                num_attention_heads=16, image_size=384, patch_size=14)
    encoder = f"{folder}/encoder"
    SiglipVisionModel(config).save_pretrained(encoder)
    return encoder, random_head(make_head(backend, 1152), f"{folder}/head.pth")


def measure(config: dict, clips: int = 8, folder: str | None = None, repeats: int = 3) -> dict:
    """Time the bare scorer (frames already decoded and prepared) and the stage through its worker (decode,
    prepare, score, records) on `clips` drawn clips, 3 frames each, best of `repeats` → {"frames", "bare_s",
    "stage_s", "records"}."""
    own = folder is None
    if folder:
        os.makedirs(folder, exist_ok=True)
    folder = folder or tempfile.mkdtemp(prefix="humove-bench-aesthetic-")
    try:
        rows = [_clip(folder, i) for i in range(clips)]
        worker = StageWorker("aesthetic", config, f"{folder}/run")
        stage = worker.stage
        prepared = [stage.prepare(row) for row in rows]
        inputs = [p["aesthetic_inputs"] for p in prepared]
        if stage.config.backend == "technical-quality":
            from humove.quality.technical import technical_quality

            def bare():
                return [technical_quality(y) for x in inputs for y in x]
        else:
            pixels = np.concatenate(inputs)
            stage.predictor.score(pixels[:2])  # warm-up: kernels, allocator

            import torch

            def bare():
                stage.predictor.score(pixels, chunk=stage.config.frames_per_forward)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
        bare_s = best_seconds(bare, repeats)
        records: list = []
        stage_s = best_seconds(lambda: records.append(worker.process([{"item": r, "attempt": 1} for r in rows])),
                               repeats)
        return {"frames": sum(len(x) for x in inputs), "bare_s": bare_s, "stage_s": stage_s,
                "records": [r[0] for r in records[-1]]}
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="technical-quality",
                        choices=["technical-quality", "laion-v2", "aesthetic-v2.5"])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--encoder")
    parser.add_argument("--head")
    parser.add_argument("--random-weights", action="store_true")
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="humove-bench-aesthetic-")
    try:
        config = {"backend": args.backend, "device": args.device}
        if args.backend != "technical-quality":
            encoder, head = _random_weights(folder, args.backend) if args.random_weights else (args.encoder,
                                                                                             args.head)
            config.update(encoder=encoder, head=head)
            if args.random_weights and args.backend != "laion-v2":  # the SigLIP stand-in is vision-only: no
                config["content_prompts"] = {}                            # text tower for the content-type prompts
        result = measure(config, args.clips, folder)
        count, bare_s, stage_s, records = result["frames"], result["bare_s"], result["stage_s"], result["records"]
        print(f"aesthetic: {args.backend} on {args.device}, {args.clips} clips × 3 frames")
        print(f"{'what':34} {'frames/s':>9} {'stage/bare':>10}")
        print(f"{'  bare scorer':34} {count / bare_s:9.1f}")
        print(f"{'  stage (decode+prepare+score)':34} {count / stage_s:9.1f} {bare_s / stage_s:10.2f}")
        means = [r["aesthetic_mean"] for r in records if r.get("aesthetic_mean") is not None]
        statuses = sorted({r["status"] for r in records})
        print(f"records: {statuses}, mean score {np.mean(means):.2f} on {records[0]['aesthetic_scale']}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
