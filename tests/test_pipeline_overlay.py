"""Pipeline files that extend another one (`extends:` + overrides), and `run.env`: what workers are given."""

from pathlib import Path

import pytest
import yaml

from humove.config import ConfigError, load_pipeline, worker_environment


def write(path: Path, content: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def toy_base(tmp_path: Path) -> Path:
    return write(tmp_path / "base" / "toy.yaml", {
        "name": "toy", "description": "the base",
        "run": {"max_attempts": 2, "executor": "local", "env": {"HUMOVE_A": "base", "HUMOVE_B": "base"}},
        "stages": [{"stage": "toy_stages:ToySource", "config": {"count": 5, "unreadable": [1]}},
                   {"stage": "toy_stages:ToySquare", "config": {"multiplier": 3, "fail_numbers": [2]},
                    "resources": {"batch_size": 3, "num_cpus": 0.5}},
                   {"stage": "toy_stages:ToySum"}]})


def test_the_production_pipeline_extended_by_name_with_stages_dropped_and_merged(tmp_path):
    overlay = write(tmp_path / "small.yaml", {
        "extends": "humove.yaml",
        "run": {"executor": "local", "env": {"HUMOVE_SMPL_DIR": "/models/smpl"}},
        "remove": ["keywords", "download"],
        "stages": [{"stage": "person", "config": {"device": "cpu"}, "resources": {"num_gpus": 0}},
                   {"stage": "caption", "config": {"engine_args": {"max_num_seqs": 4}}}]})
    config, stages = load_pipeline(overlay, ["person.image_size=320"])
    base, base_stages = load_pipeline(Path(__file__).parent.parent / "pipelines" / "humove.yaml")
    by_name = {stage.name: stage for stage in stages}
    assert [s.name for s in stages] == [s.name for s in base_stages if s.name not in ("keywords", "download")]
    assert config.name == base.name == "humove" and config.run.max_attempts == base.run.max_attempts
    assert config.run.executor == "local" and config.run.env == {"HUMOVE_SMPL_DIR": "/models/smpl"}
    person, base_person = by_name["person"], {s.name: s for s in base_stages}["person"]
    assert person.config.device == "cpu" and person.config.image_size == 320, "--set applies after the merge"
    assert person.config.weights == base_person.config.weights == "/models/yolo11x.pt"
    assert person.resources.num_gpus == 0 and person.resources.concurrency == base_person.resources.concurrency == 8
    engine_args = by_name["caption"].config.engine_args
    assert engine_args == {"max_model_len": 32768, "gpu_memory_utilization": 0.9, "max_num_seqs": 4}


def test_a_chain_of_overlays_merges_in_order_and_places_new_stages(tmp_path):
    base = toy_base(tmp_path)
    write(tmp_path / "middle" / "middle.yaml", {
        "extends": f"../base/{base.name}",
        "name": "middle",
        "run": {"env": {"HUMOVE_B": "middle"}},
        "stages": [{"stage": "toy_square", "config": {"multiplier": 5}},
                   {"stage": "toy_stages:ToyEnv", "after": "toy_square"}]})
    top = write(tmp_path / "top.yaml", {
        "extends": "middle/middle.yaml",
        "run": {"max_attempts": 4},
        "remove": ["toy_sum"],
        "stages": [{"stage": "toy_stages:ToySquare", "config": {"fail_numbers": []}, "resources": {"batch_size": 1}},
                   {"stage": "toy_stages:ToyFrames", "before": "toy_env"}]})
    config, stages = load_pipeline(top)
    assert [s.name for s in stages] == ["toy_source", "toy_square", "toy_frames", "toy_env"]
    assert config.name == "middle" and config.description == "the base"
    assert config.run.max_attempts == 4 and config.run.executor == "local"
    assert config.run.env == {"HUMOVE_A": "base", "HUMOVE_B": "middle"}
    square = stages[1]
    assert (square.config.multiplier, square.config.fail_numbers) == (5, [])
    assert (square.resources.batch_size, square.resources.num_cpus) == (1, 0.5)
    assert stages[0].config.count == 5 and stages[0].config.unreadable == [1]


@pytest.mark.parametrize(("overlay", "message"), [
    ({"stages": [{"stage": "toy_squares", "config": {"multiplier": 2}}]}, "stage 'toy_squares': no stage"),
    ({"stages": [{"stage": "toy_stages:ToyEnv", "config": {"variable": "X"}}]}, "stage 'toy_env': no stage"),
    ({"remove": ["toy_frames"]}, "remove: no stage 'toy_frames'"),
    ({"remove": "toy_sum"}, "remove: expected a list"),
    ({"remove": ["toy_sum"], "stages": [{"stage": "toy_sum"}]}, "stage 'toy_sum': no stage 'toy_sum'"),
    ({"stages": [{"stage": "toy_stages:ToyEnv", "after": "nope"}]}, "after: no stage 'nope'"),
    ({"stages": [{"stage": "toy_stages:ToySquare", "after": "toy_source"}]}, "already in the base pipeline"),
    ({"stages": [{"stage": "toy_stages:ToyEnv", "after": "toy_source", "before": "toy_sum"}]}, "not both"),
    ({"stages": [{"config": {"count": 1}}]}, "names its stage"),
    ({"stages": [{"stage": "toy_stages:ToySquare", "config": {"no_such": 1}}]}, "no_such"),
])
def test_overlay_mistakes_are_one_error_naming_what_is_wrong(tmp_path, overlay, message):
    toy_base(tmp_path)
    top = write(tmp_path / "top.yaml", {"extends": "base/toy.yaml", **overlay})
    with pytest.raises(ConfigError, match=message) as caught:
        load_pipeline(top)
    if "no stage" in message:
        assert "toy_source, toy_square" in str(caught.value) and "base/toy.yaml" in str(caught.value)


def test_extends_cycles_missing_bases_and_removes_without_a_base_are_errors(tmp_path):
    first = write(tmp_path / "a.yaml", {"extends": "b.yaml", "name": "a"})
    write(tmp_path / "b.yaml", {"extends": "sub/../a.yaml", "name": "b"})  # the same file by another path
    (tmp_path / "sub").mkdir()
    with pytest.raises(ConfigError, match="makes a cycle"):
        load_pipeline(first)
    itself = write(tmp_path / "self.yaml", {"extends": "self.yaml"})
    with pytest.raises(ConfigError, match="makes a cycle"):
        load_pipeline(itself)
    missing = write(tmp_path / "missing.yaml", {"extends": "nowhere.yaml"})
    with pytest.raises(ConfigError, match="'nowhere.yaml': neither .*nowhere.yaml nor a built-in pipeline"):
        load_pipeline(missing)
    lone = write(tmp_path / "lone.yaml", {"name": "x", "remove": ["a"], "stages": []})
    with pytest.raises(ConfigError, match="only a pipeline that extends another"):
        load_pipeline(lone)


def test_run_env_takes_names_and_plain_values_and_refuses_secrets(tmp_path):
    base = toy_base(tmp_path)
    path = write(tmp_path / "env.yaml", {"extends": f"base/{base.name}",
                                         "run": {"env": {"HF_HUB_OFFLINE": 1, "HUMOVE_SCALE": 0.5}}})
    config, _ = load_pipeline(path)
    assert config.run.env == {"HUMOVE_A": "base", "HUMOVE_B": "base", "HF_HUB_OFFLINE": "1", "HUMOVE_SCALE": "0.5"}
    for env, message in (({"HUMOVE_LLM_API_KEY": "k"}, "looks like a secret"),
                         ({"AWS_SECRET_ACCESS_KEY": "k"}, "looks like a secret"),
                         ({"HF_TOKEN": "k"}, "looks like a secret"),
                         ({"HF_HUB_OFFLINE": True}, "as a string"),
                         ({"BAD NAME": "1"}, "not an environment variable name")):
        write(path, {"extends": f"base/{base.name}", "run": {"env": env}})
        with pytest.raises(ConfigError, match=message):
            load_pipeline(path)


def test_workers_get_the_forwarded_variables_and_run_env_but_no_secrets(monkeypatch):
    for name, value in {"HUMOVE_SMPL_DIR": "/models/smpl", "HF_HOME": "/cache/hf", "YOLO_OFFLINE": "1",
                        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "TRANSFORMERS_OFFLINE": "1",
                        "AWS_SECRET_ACCESS_KEY": "s3cr3t", "HF_TOKEN": "hf_x", "HUMOVE_LLM_API_KEY": "k",
                        "CUDA_VISIBLE_DEVICES": "3", "HOME": "/root"}.items():
        monkeypatch.setenv(name, value)
    env = worker_environment({"MY_TOOL_HOME": "/opt/tool", "HF_HOME": "/run/hf"})
    assert env["HUMOVE_SMPL_DIR"] == "/models/smpl" and env["YOLO_OFFLINE"] == "1"
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["MY_TOOL_HOME"] == "/opt/tool" and env["HF_HOME"] == "/run/hf", "run.env wins"
    for name in ("AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "HUMOVE_LLM_API_KEY", "CUDA_VISIBLE_DEVICES", "HOME"):
        assert name not in env
