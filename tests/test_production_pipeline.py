"""`pipelines/humove.yaml` itself — its stage list and real backends — end to end through both executors, on
random-weight models of the production architectures built by `bench.random_models` (YOLO11, a DWPose-interface
ONNX, CLIP ViT-L/14-architecture + the LAION head, CameraHMR + FLNet, Qwen2 and Qwen2.5-VL through transformers)
and one rendered demo video, with the overlay of test-only settings from `bench.production` (device, sizes,
decisions relaxed so that items flow, one worker per stage).

Where the run differs from production, and why:
- keywords and caption: their `transformers` backends, not vLLM (GPU-only, not installed here). The model and
  processor classes are the production ones (Qwen2 causal LM, Qwen2.5-VL with its processor); both language
  models are scripted fakes that answer one fixed valid answer (see `bench.random_models`), because random
  weights write garbage that those stages rightly refuse.
- download: yt-dlp fetches the rendered video from a `file://` URL template (`enable_file_urls`) instead of
  searching YouTube.
- smpl: CameraHMR + FLNet at the tiny sizes through `bench.production.CameraHMRAtSize` (the stage has no size
  setting yet); the body model is `smpl-neutral`, read from a converted-SMPL file holding the stand-in body.
- person: the random YOLO's person-class bias is raised so its boxes pass ByteTrack's fixed thresholds.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

from bench.production import HUMOVE_YAML, keyword_video, overlay_pipeline, production_overrides
from bench.random_models import build_all
from humove.config import load_pipeline
from humove.engine import Runner
from humove.ledger import Ledger
from humove.registry import load_stage_class
from humove.schemas.shard import read_dataset

# The backend each stage's records name: the production backend's own name (transformers for the two vLLM stages).
BACKENDS = {
    "keywords": r"transformers", "download": r"yt-dlp", "ingest": r"pyav-[\d.]+",
    "shots": r"pyav-[\d.]+\+scenedetect-[\d.]+\+libx264", "aesthetic": r"laion-v2",
    "person": r"ultralytics-[\d.]+-yolo\+bytetrack\(.*\)", "pose": r"onnxruntime-[\d.]+-dwpose\(CPUExecutionProvider\)",
    "smpl": r"camerahmr\(camerahmr\+flnet\)", "smooth": r"humove\.motion", "caption": r"transformers",
}
SWAPPED = {"keywords": {"vllm": "transformers"}, "caption": {"vllm": "transformers"}}  # vLLM is not installed here


@pytest.fixture(scope="session")
def production_models(tmp_path_factory):
    return build_all(tmp_path_factory.mktemp("production-models"), "tiny")


@pytest.fixture(scope="session")
def production_pipeline(production_models, tmp_path_factory) -> str:
    """The overlay pipeline file. The one keyword the scripted LM writes ("boxing") finds `<videos>/boxing.mp4`:
    demo_02_walk, one 3 s shot of a walking person (320×240, 20 fps)."""
    folder = tmp_path_factory.mktemp("production-pipeline")
    overrides = production_overrides(production_models, keyword_video(folder / "videos"))
    return overlay_pipeline(folder / "humove-test.yaml", overrides)


def test_overlay_keeps_the_production_stage_list_and_backends(production_pipeline):
    production = yaml.safe_load(HUMOVE_YAML.read_text())["stages"]
    overlay = yaml.safe_load(Path(production_pipeline).read_text())["stages"]
    assert [load_stage_class(s["stage"]).name for s in overlay] == [s["stage"] for s in production]
    for base, test in zip(production, overlay, strict=True):
        backend = base.get("config", {}).get("backend")
        assert test["config"].get("backend") == SWAPPED.get(base["stage"], {}).get(backend, backend), base["stage"]


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_humove_yaml_runs_its_real_backends_to_verified_shards(production_pipeline, production_models, executor,
                                                               tmp_path):
    config, stages = load_pipeline(production_pipeline)
    run_dir = str(tmp_path / "run")
    Runner(config, stages, run_dir, executor=executor).run()
    current = Ledger(run_dir).current()
    for stage in stages:
        records = current[stage.name].to_pylist()
        assert records and all(r["status"] == "ok" for r in records), (stage.name, records)
        if stage.name in BACKENDS:
            assert all(re.fullmatch(BACKENDS[stage.name], r["backend"]) for r in records), (stage.name, records)
    row = {name: current[name].to_pylist()[0] for name in current}
    assert row["keywords"]["keyword_text"] == "boxing" and row["keywords"]["keyword_fine_category"] == "Boxing"
    assert row["download"]["download_webpage"].endswith("/boxing.mp4")
    assert row["person"]["person_model"] == Path(production_models.yolo).name
    assert row["pose"]["pose_model"] == "dw-ll_ucoco_384.onnx"
    checkpoint = Path(production_models.camerahmr) / "camerahmr_checkpoint_cleaned.ckpt"
    assert row["smpl"]["smpl_model_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert row["smpl"]["smpl_body_model"] == "smpl-neutral"
    assert row["caption"]["caption_model"] == production_models.caption_vl and not row["caption"]["caption_is_template"]
    assert row["caption"]["caption_tries"] == 1  # the scripted answer is valid JSON the first time
    processor = json.loads((Path(production_models.caption_vl) / "processor_config.json").read_text())
    assert processor["processor_class"] == "Qwen2_5_VLProcessor"

    manifest = read_dataset(str(Path(run_dir) / "dataset"), verify=True)  # every shard's checksum checked
    assert manifest.total_samples == len(current["shards"].to_pylist()) == len(current["caption"].to_pylist())
    assert sum(split.with_motion for split in manifest.splits.values()) == manifest.total_samples
