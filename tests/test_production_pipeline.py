"""`pipelines/humove.yaml` itself — its stage list and real backends — end to end through both executors, on
random-weight models of the production architectures built by `bench.random_models` (YOLO11, a DWPose-interface
ONNX, CLIP ViT-L/14-architecture with its tokenizer + the LAION head, CameraHMR + FLNet, Qwen2 and Qwen2.5-VL
through transformers) and one rendered demo video, under the overlay of test-only settings from
`bench.production`: a pipeline file that `extends: humove.yaml` (device, sizes, decisions relaxed so that items
flow, one worker per stage, the body model set once in `run.env`).

Where the run differs from production, and why:
- keywords and caption: their `transformers` backends, not vLLM (GPU-only, not installed here). The model and
  processor classes are the production ones (Qwen2 causal LM, Qwen2.5-VL with its processor); both language
  models are scripted fakes that answer one fixed valid answer (`bench.random_models.fake_keyword_lm`,
  `fake_qwen25_vl`), because random weights write garbage that those stages rightly refuse.
- download: yt-dlp fetches the rendered video from a `file://` URL template (`allowed_schemes` widened to file)
  instead of searching YouTube.
- smpl: CameraHMR + FLNet at the small sizes of `humove.hmr.random_weights` (`smpl.hmr_size` / `flnet_size`);
  the body model is `smpl-neutral`, read from `HUMOVE_SMPL_DIR` (a converted-SMPL file holding the stand-in body).
- person: the random YOLO's person-class bias is raised so its boxes pass ByteTrack's thresholds.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

from bench.production import HUMOVE_YAML, keyword_video, overlay_pipeline, production_overlay
from bench.random_models import build_all
from humove.config import builtin_pipeline, load_pipeline
from humove.engine import Runner
from humove.executors import resource_problems
from humove.ledger import Ledger
from humove.schemas.shard import read_dataset

REPO = HUMOVE_YAML.parents[1]
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
def production_videos(tmp_path_factory) -> str:
    """The one keyword the scripted LM writes ("boxing") finds `<videos>/boxing.mp4`: demo_02_walk, one 3 s shot
    of a walking person (320×240, 20 fps)."""
    return keyword_video(tmp_path_factory.mktemp("production-videos"))


@pytest.fixture(scope="session")
def production_pipeline(production_models, production_videos, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("production-pipeline")
    return overlay_pipeline(folder / "humove-test.yaml", production_overlay(production_models, production_videos))


def test_the_overlay_extends_humove_yaml_and_changes_only_settings(production_pipeline, production_models):
    assert yaml.safe_load(Path(production_pipeline).read_text())["extends"] == "humove.yaml"
    assert builtin_pipeline("humove.yaml").read_text() == HUMOVE_YAML.read_text()  # what `extends` finds
    base_config, base = load_pipeline(HUMOVE_YAML)
    config, stages = load_pipeline(production_pipeline)
    assert [(s.name, s.ref) for s in stages] == [(s.name, s.ref) for s in base]  # the same stages and classes
    for production, test in zip(base, stages, strict=True):
        backend = getattr(production.config, "backend", None)
        assert getattr(test.config, "backend", None) == SWAPPED.get(production.name, {}).get(backend, backend)
        assert test.resources.num_gpus == 0 and (test.resources.concurrency or 1) == 1, test.name
    # The body model is set once, for smpl and smooth on every worker; the SMPL folder is nowhere else.
    assert config.run.env == {"HUMOVE_SMPL_DIR": production_models.smpl_dir}
    assert "smpl_dir" not in Path(production_pipeline).read_text()
    smpl = next(s for s in stages if s.name == "smpl")
    assert smpl.config.body_model == "smpl-neutral" and smpl.config.smpl_dir is None
    official = next(s for s in base if s.name == "smpl").config.hmr_size
    assert smpl.config.hmr_size.depth == production_models.hmr_size["depth"] != official.depth
    # The pre-flight passes on a 2-CPU machine (humove.yaml alone asks for GPUs and pools of 8 there).
    two_cpus = [{"CPU": 2.0, "memory": 8 * 1024**3}]
    assert resource_problems(stages, two_cpus) == [] and len(resource_problems(base, two_cpus)) >= 6


def test_the_gpu_overlay_fits_its_pools_to_the_gpus(production_models, production_videos, tmp_path):
    """`make gpu-check` on a node with fewer GPUs than humove.yaml's pools of 8: each pool shrinks to fit."""
    one_gpu = [{"GPU": 1.0, "CPU": 16.0, "memory": 128 * 1024**3}]
    overlay = production_overlay(production_models, production_videos, "cuda", gpus=1)
    _, stages = load_pipeline(overlay_pipeline(tmp_path / "gpu.yaml", overlay))
    assert resource_problems(stages, one_gpu) == []
    assert {s.name: s.resources.concurrency for s in stages if s.resources.num_gpus} == {
        "keywords": 1, "aesthetic": 1, "person": 1, "pose": 1, "smpl": 1, "caption": None}
    overlay = production_overlay(production_models, production_videos, "cuda", gpus=4)
    _, stages = load_pipeline(overlay_pipeline(tmp_path / "gpu4.yaml", overlay))
    assert {s.resources.concurrency for s in stages if s.name in ("aesthetic", "person", "pose", "smpl")} == {4}
    assert all(s.config.device == "cuda" for s in stages if hasattr(s.config, "device"))


def test_the_scripted_fakes_are_named_so_and_no_default_path_reaches_them(production_models):
    for folder in (production_models.fake_keyword_lm, production_models.fake_caption_vl):
        assert Path(folder).name.startswith("fake-") and "Scripted fake" in (Path(folder) / "FAKE_MODEL.md").read_text()
    # The installed package (humove, stages, model, schemas, shipped pipelines) never imports the bench modules
    # nor names a class of them (`stage: bench.production:…`); docstrings may cite a benchmark.
    installed = [path for package in ("humove", "stages", "model", "schemas", "pipelines")
                 for path in (REPO / package).rglob("*") if path.suffix in (".py", ".yaml")]
    assert len(installed) > 50
    reaching = re.compile(r"^\s*(?:from|import)\s+bench\b|stage:\s*['\"]?bench\.|['\"]bench\.[\w.]+:|random_models",
                          re.MULTILINE)
    assert [str(path) for path in installed if reaching.search(path.read_text())] == []


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
    assert row["keywords"]["keyword_model"] == production_models.fake_keyword_lm  # the record names the fake
    assert row["download"]["download_webpage"].endswith("/boxing.mp4")
    assert row["aesthetic"]["content_type"] in row["aesthetic"]["content_type_labels"]  # CLIP's text tower ran
    assert len(row["aesthetic"]["content_type_scores"]) == 7 and 0.0 < row["aesthetic"]["synthetic_score"] < 1.0
    assert row["person"]["person_model"] == Path(production_models.yolo).name
    assert row["pose"]["pose_model"] == "dw-ll_ucoco_384.onnx"
    checkpoint = Path(production_models.camerahmr) / "camerahmr_checkpoint_cleaned.ckpt"
    assert row["smpl"]["smpl_model_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    body_file = str((Path(production_models.smpl_dir) / "SMPL_NEUTRAL.npz").resolve())
    assert row["smpl"]["smpl_body_model"] == "smpl-neutral" and row["smpl"]["smpl_body_model_file"] == body_file
    assert row["smooth"]["motion_body_model"] == "smpl-neutral"  # smooth found the same file through run.env
    assert row["caption"]["caption_model"] == production_models.fake_caption_vl
    assert not row["caption"]["caption_is_template"] and row["caption"]["caption_tries"] == 1  # valid JSON at once
    processor = json.loads((Path(production_models.fake_caption_vl) / "processor_config.json").read_text())
    assert processor["processor_class"] == "Qwen2_5_VLProcessor"

    manifest = read_dataset(str(Path(run_dir) / "dataset"), verify=True)  # every shard's checksum checked
    assert manifest.total_samples == len(current["shards"].to_pylist()) == len(current["caption"].to_pylist())
    assert sum(split.with_motion for split in manifest.splits.values()) == manifest.total_samples
