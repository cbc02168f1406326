"""`pipelines/humove.yaml` — its stage list and real backends — run on stand-in models (`bench.random_models`).

`production_overlay` is a pipeline file that extends humove.yaml (`extends: humove.yaml`, the overlay users
write too) with test-only settings: model paths, device, CameraHMR's size, decisions relaxed so that items flow
(random weights decide nothing), a rendered video as the one search result (`keyword_video`), the body model set
once (`run.env`), and worker pools the machine can hold. `overlay_pipeline` writes it where `humove.config.
load_pipeline` and `humove run` read it. Used by `tests/test_production_pipeline.py` (CPU) and `bench.gpu_check`.

What differs from a production run, and why:
- keywords and caption run their `transformers` backends: vLLM (the production engine) is GPU-only and not in
  the CPU environment; the model classes, tokenizer and processor classes are the production ones, the weights
  scripted fakes (`random_models.fake_keyword_lm`, `fake_qwen25_vl`) that always give one valid answer.
- download: the search is a `file://` URL template (`<videos>/{query}.mp4`, `allowed_schemes` widened to file)
  instead of `ytsearch`: no network.
- smpl: CameraHMR + FLNet at `smpl.hmr_size` / `flnet_size`, the sizes `random_models.camerahmr` wrote (the
  official sizes at "full").
- resources: on a CPU, no GPU requests and one worker per stage; on a GPU node, every fixed pool no larger than
  the node's GPUs hold (humove.yaml asks for 8 on several stages).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from bench.random_models import FAKE_KEYWORD_ANSWER, ProductionModels
from humove.registry import load_stage_class
from humove.stage import MapStage

HUMOVE_YAML = Path(__file__).resolve().parents[1] / "pipelines" / "humove.yaml"
NEVER = 1.0e9  # a threshold no random-weight measure reaches

# Thresholds (`decision()` settings, plus the frame-validity settings of smooth) that let every item through.
RELAXED = {
    "ingest": {"min_side_px": 64},  # the demo videos are 320×240; humove.yaml asks for 360 px
    "aesthetic": {"min_score": -NEVER},
    "person": {"min_presence_s": 0.0, "min_score_mean": 0.0, "min_person_size": 0.0, "min_span_s": 0.0,
               "max_second_person_ratio": NEVER, "max_near_fraction": NEVER, "unstable_box_iou": 0.0},
    "pose": {"min_visible_keypoints": 0.0, "min_full_body_fraction": 0.0, "min_part_fraction": 0.0,
             "max_outside_fraction": NEVER, "min_score_mean": 0.0, "min_in_box_fraction": 0.0},
    "smooth": {"min_score": 0.0, "min_frame_keypoints": 0, "min_frame_pck": 0.0, "max_jitter_mps2": NEVER,
               "max_foot_sliding_mps": NEVER, "max_depth_drift_mps": NEVER,
               "max_abs_beta": NEVER, "max_reprojection_rel": NEVER, "min_agreement_pck": 0.0,
               "max_limb_length_error": NEVER, "min_valid_fraction": 0.0, "min_longest_valid_s": 0.0},
}


def keyword_video(folder: str | Path, demo: str = "demo_02_walk.mp4") -> str:
    """Write the video the scripted keyword finds, `<folder>/<keyword>.mp4`: a demo video (`humove.samples`;
    demo_02_walk: one 3 s shot of a walking person, demo_00_walk_wave: two shots) → the folder."""
    from humove.samples import DEMO_SPECS, write_sample

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = next(spec for spec in DEMO_SPECS if spec.name == demo)
    write_sample(spec, str(folder / f"{FAKE_KEYWORD_ANSWER.removeprefix('- ')}.mp4"))
    return str(folder)


def production_overlay(models: ProductionModels, videos: str | Path, device: str = "cpu", gpus: int = 0) -> dict:
    """The overlay pipeline (a dict in the pipeline-file layout) over humove.yaml. `videos`: the folder
    `keyword_video` wrote; `device`: "cpu" or "cuda"; `gpus`: the GPUs the run may use (a GPU node's count)."""
    cuda = device.startswith("cuda")
    config = {
        "keywords": {"backend": "transformers", "model": models.fake_keyword_lm, "device": device,
                     "categories": ["Combat Sports"], "keywords_per_category": 1},
        "download": {"search": f"file://{Path(videos).resolve()}/{{query}}.mp4",
                     "allowed_schemes": ["http", "https", "file"], "results_per_keyword": 1,
                     "per_host_interval_s": 0.0},
        "aesthetic": {"encoder": models.aesthetic_encoder, "head": models.aesthetic_head, "device": device},
        "person": {"weights": models.yolo, "device": device, "image_size": 640 if cuda else 160},
        "pose": {"weights": models.dwpose, "device": device},
        "smpl": {"weights_dir": models.camerahmr, "device": device, **({} if cuda else {"dtype": "float32"}),
                 **{key: size for key, size in (("hmr_size", models.hmr_size), ("flnet_size", models.flnet_size))
                    if size is not None}},
        "caption": {"backend": "transformers", "model": models.fake_caption_vl, "device": device},
    }
    for stage, relaxed in RELAXED.items():
        config[stage] = {**config.get(stage, {}), **relaxed}
    stages = []
    for spec in yaml.safe_load(HUMOVE_YAML.read_text())["stages"]:
        changes = {"config": config.get(spec["stage"]), "resources": _resources(spec, cuda, gpus)}
        if any(changes.values()):
            stages.append({"stage": spec["stage"], **{key: value for key, value in changes.items() if value}})
    return {
        "extends": "humove.yaml",
        "name": "humove-overlay",
        "description": f"{HUMOVE_YAML.name} with test-only settings (bench/production.py)",
        "run": {"env": {"HUMOVE_SMPL_DIR": models.smpl_dir}},  # one body model for smpl and smooth, on every worker
        "stages": stages,
    }


def _resources(spec: dict, cuda: bool, gpus: int) -> dict:
    """What changes in a humove.yaml stage's resources so that this machine holds its workers."""
    if not issubclass(load_stage_class(spec["stage"]), MapStage):
        return {}  # shards runs in the driver: no resources apply (giving it some is an error)
    wanted = spec.get("resources", {})
    if cuda:  # a fixed pool of GPU workers no larger than the GPUs hold
        if wanted.get("num_gpus") and wanted.get("concurrency"):
            fits = max(1, int(gpus // wanted["num_gpus"]))
            return {"concurrency": fits} if wanted["concurrency"] > fits else {}
        return {}
    # One worker per stage, no GPU requests. A stage with a preparation step asks for both CPUs of a 2-core
    # machine, so its model worker prepares its own items (as the local executor does) instead of a second pool
    # starting beside it: on 2 cores that second process costs more than it saves.
    prepares = getattr(load_stage_class(spec["stage"]), "prepare_resources", None) is not None
    resources = {"num_cpus": min(2, os.cpu_count() or 1) if prepares else 1}
    resources.update({key: value for key, value in (("num_gpus", 0), ("concurrency", 1)) if key in wanted})
    return resources


def overlay_pipeline(path: str | Path, overlay: dict) -> str:
    """Write the overlay (`production_overlay`) as the pipeline file `path` → its path."""
    Path(path).write_text(yaml.safe_dump(overlay, sort_keys=False))
    return str(path)
