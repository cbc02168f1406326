"""`pipelines/humove.yaml` — its stage list and real backends — run on stand-in models (`bench.random_models`).

`production_overrides` is the overlay of test-only settings: model paths, device, sizes, decisions relaxed so
that items flow (random weights decide nothing), a rendered video as the one search result (`keyword_video`),
and one worker per stage. `overlay_pipeline` writes humove.yaml with the overlay applied, as a pipeline file that
`humove.config.load_pipeline` and `humove run` read. Used by `tests/test_production_pipeline.py` (CPU) and
`bench.gpu_check` (GPU).

What differs from a production run, and why:
- keywords and caption run their `transformers` backends: vLLM (the production engine) is GPU-only and not in
  the CPU environment; the model classes, tokenizer and processor classes are the production ones.
- download: the search is a `file://` URL template (`<videos>/{query}.mp4`, fetched by yt-dlp with
  `enable_file_urls`) instead of `ytsearch`: no network.
- smpl runs `CameraHMRAtSize`, the smpl stage at the size `random_models.camerahmr` wrote (the stage has no
  size setting yet; at "full" size it is the stage itself).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

from bench.random_models import ProductionModels
from humove.registry import load_stage_class
from humove.stages.smpl import SmplStage

HUMOVE_YAML = Path(__file__).resolve().parents[1] / "pipelines" / "humove.yaml"
NEVER = 1.0e9  # a threshold no random-weight measure reaches

# Thresholds (`decision()` settings, plus the frame-validity settings of smooth) that let every item through.
RELAXED = {
    "ingest": {"min_side_px": 64},  # the demo videos are 320×240; humove.yaml asks for 360 px
    "aesthetic": {"min_score": -NEVER},
    "person": {"min_span_s": 0.0, "max_second_person_ratio": NEVER, "min_box_height": 0.0, "close_up_height": NEVER,
               "close_up_aspect": NEVER, "max_edge_touch": 1.0, "min_score_mean": 0.0, "unstable_box_iou": 0.0},
    "pose": {"min_visible_keypoints": 0.0, "min_full_body_fraction": 0.0, "min_lower_body_fraction": 0.0,
             "min_score_mean": 0.0, "min_in_box_fraction": 0.0},
    "smooth": {"min_score": 0.0, "min_frame_keypoints": 0, "min_frame_pck": 0.0, "max_jitter_mps2": NEVER,
               "max_foot_sliding_m": NEVER, "max_reprojection_rel": NEVER, "min_agreement_pck": 0.0,
               "max_limb_length_error": NEVER, "min_valid_fraction": 0.0, "min_longest_valid_s": 0.0},
}


class CameraHMRAtSize(SmplStage):
    """The smpl stage loading CameraHMR + FLNet at `random_models.camerahmr`'s tiny sizes (the same files, strict
    loading, crops and FLNet focal). Goes once the smpl stage has a backbone-size setting."""

    def load_runner(self, build_runner, weights, config):
        from humove.hmr.camerahmr import tiny_hmr_config
        from humove.hmr.flnet import tiny_hrnet_config

        return build_runner(weights, self.body_model, config, hmr_config=tiny_hmr_config(),
                            flnet_config=tiny_hrnet_config())


def keyword_video(folder: str | Path, demo: str = "demo_02_walk.mp4") -> str:
    """Write the video the scripted keyword finds, `<folder>/<keyword>.mp4`: a demo video (`humove.samples`;
    demo_02_walk: one 3 s shot of a walking person, demo_00_walk_wave: two shots) → the folder."""
    from bench.random_models import KEYWORD_ANSWER
    from humove.samples import DEMO_SPECS, write_sample

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = next(spec for spec in DEMO_SPECS if spec.name == demo)
    write_sample(spec, str(folder / f"{KEYWORD_ANSWER.removeprefix('- ')}.mp4"))
    return str(folder)


def production_overrides(models: ProductionModels, videos: str | Path, device: str = "cpu") -> dict:
    """Per stage name: `config` and `resources` settings to merge over humove.yaml's, and `stage` to replace its
    class. `videos`: the folder `keyword_video` wrote."""
    cuda = device.startswith("cuda")
    config = {
        "keywords": {"backend": "transformers", "model": models.keyword_lm, "categories": ["Combat Sports"],
                     "keywords_per_category": 1},
        "download": {"search": f"file://{Path(videos).resolve()}/{{query}}.mp4", "enable_file_urls": True,
                     "results_per_keyword": 1, "per_host_interval_s": 0.0},
        "aesthetic": {"encoder": models.aesthetic_encoder, "head": models.aesthetic_head, "device": device},
        "person": {"weights": models.yolo, "device": device, "image_size": 640 if cuda else 160},
        "pose": {"weights": models.dwpose, "device": device},
        "smpl": {"weights_dir": models.camerahmr, "smpl_dir": models.smpl_dir, "device": device,
                 **({} if cuda else {"dtype": "float32"})},
        "smooth": {"smpl_dir": models.smpl_dir},
        "caption": {"backend": "transformers", "model": models.caption_vl},
    }
    for stage, relaxed in RELAXED.items():
        config[stage] = {**config.get(stage, {}), **relaxed}
    overrides = {name: {"config": settings} for name, settings in config.items()}
    if models.size != "full":
        overrides["smpl"]["stage"] = f"{__name__}:{CameraHMRAtSize.__name__}"
    if not cuda:
        # One worker per stage, no GPU requests. A stage with a preparation step asks for both CPUs of a 2-core
        # machine, so its model worker prepares its own items (as the local executor does) instead of a second
        # pool starting beside it: on 2 cores that second process costs more than it saves.
        for spec in yaml.safe_load(HUMOVE_YAML.read_text())["stages"]:
            wanted = spec.get("resources", {})
            prepares = getattr(load_stage_class(spec["stage"]), "prepare_resources", None) is not None
            cpus = min(2, os.cpu_count() or 1) if prepares else 1
            resources = {"num_cpus": cpus, **{k: v for k, v in (("num_gpus", 0), ("concurrency", 1)) if k in wanted}}
            overrides.setdefault(spec["stage"], {})["resources"] = resources
    return overrides


def overlay_pipeline(path: str | Path, overrides: dict, name: str = "humove-overlay") -> str:
    """Write `pipelines/humove.yaml` with `overrides` (from `production_overrides`) applied to its stages, as the
    pipeline file `path` → its path. This is the one place that reads humove.yaml's stage list; once pipeline
    files can extend another, it writes `extends: humove.yaml` plus the overrides instead."""
    pipeline = yaml.safe_load(HUMOVE_YAML.read_text())
    pipeline["name"] = name
    pipeline["description"] = f"{HUMOVE_YAML.name} with test-only settings (bench/production.py)"
    unknown = set(overrides) - {spec["stage"] for spec in pipeline["stages"]}
    if unknown:
        raise ValueError(f"overrides for stages {sorted(unknown)} that {HUMOVE_YAML.name} does not have")
    for spec in pipeline["stages"]:
        change = copy.deepcopy(overrides.get(spec["stage"], {}))
        for section in ("config", "resources"):
            spec[section] = {**spec.get(section, {}), **change.pop(section, {})}
        spec.update(change)  # `stage`: another class for the same stage name
    Path(path).write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return str(path)
