"""Training on shards written here: a tiny model overfits, resume is exact, phase 1 freezes video, sampling."""

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_fixtures import TINY_OVERRIDES, check_sample_outputs, synthetic_motion, write_paired_shards
from typer.testing import CliRunner

from humove.model.cli import model_app
from humove.model.data import DataConfig, ShardDataError
from humove.model.train import TrainConfig, TrainingError, load_train_config, train
from humove.schemas.motion import save_motion


@pytest.fixture(scope="module")
def paired_shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("paired")
    write_paired_shards(folder, num_samples=4, per_shard=2, stats=True)
    return folder


def tiny_config(run_dir, shards, **kw):
    data = dict(shards=[str(shards)], num_frames=9, fps=16, height=64, width=64, batch_size=2, num_workers=0,
                shuffle_buffer=4)
    data.update(kw.pop("data", {}))
    values = dict(run_dir=str(run_dir), model="tiny", model_overrides=TINY_OVERRIDES, phase=2, steps=4,
                  lr=3e-3, log_every=1, checkpoint_every=1000, device="cpu", data=DataConfig(**data),
                  vae="standin", text_encoder="standin")
    values.update(kw)
    return TrainConfig(**values)


def read_log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_tiny_model_overfits_a_few_shard_samples(tmp_path, paired_shards):
    config = tiny_config(tmp_path / "run", paired_shards, steps=50, log_every=10, lr=5e-3,
                         data={"batch_size": 4, "random_window": False})
    train(config)
    log = read_log(tmp_path / "run")
    first, last = log[0], log[-1]  # means over steps 1–10 and 41–50
    assert last["loss"] < 0.75 * first["loss"], (first, last)
    assert last["loss_video"] < 0.5 * first["loss_video"]
    assert last["loss_motion"] < first["loss_motion"]
    assert last["tokens_per_s"] > 0 and last["samples_per_s"] > 0


def test_resume_reproduces_the_next_steps_exactly(tmp_path, paired_shards):
    common = dict(steps=4, checkpoint_every=1, checkpoint_keep_last=3, ema_decay=0.9, data={"num_workers": 2})
    train(tiny_config(tmp_path / "a", paired_shards, **common))
    uninterrupted = read_log(tmp_path / "a")
    kept = sorted(p.name for p in (tmp_path / "a" / "checkpoints").glob("step-*"))
    assert kept == ["step-00000002", "step-00000003", "step-00000004"]  # the newest 3 of 4

    # A second run that starts from run a's step-2 checkpoint, as if a job had been killed after step 4 had been
    # logged but before its checkpoint: the log already holds steps 3 and 4, which are trained again.
    checkpoints = tmp_path / "b" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-00000002", checkpoints / "step-00000002")
    (checkpoints / "latest").write_text("step-00000002")
    shutil.copy(tmp_path / "a" / "log.jsonl", tmp_path / "b" / "log.jsonl")
    train(tiny_config(tmp_path / "b", paired_shards, **common))
    resumed = read_log(tmp_path / "b")

    assert [m["step"] for m in resumed] == [1, 2, 3, 4]  # one line per step
    assert [m["last_loss"] for m in resumed] == [m["last_loss"] for m in uninterrupted]
    final_a = tmp_path / "a" / "checkpoints" / "step-00000004"
    final_b = checkpoints / "step-00000004"
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(final_a / name)), load_file(str(final_b / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state = json.loads((final_b / "state.json").read_text())
    assert state["vae"] == "standin-vae" and state["text_encoder"] == "standin-text"
    assert state["data_positions"][0]["batches"] == 4 and state["skipped_total"] == 0


def test_phase_one_trains_motion_only_with_the_video_branch_frozen(tmp_path):
    write_paired_shards(tmp_path / "motion", num_samples=4, motion_only=True, stats=True)
    train(tiny_config(tmp_path / "run", tmp_path / "motion", phase=1, steps=3, checkpoint_every=1))
    log = read_log(tmp_path / "run")
    assert log and all(m["loss_motion"] > 0 for m in log)
    first = load_file(str(tmp_path / "run" / "checkpoints" / "step-00000001" / "model.safetensors"))
    last = load_file(str(tmp_path / "run" / "checkpoints" / "step-00000003" / "model.safetensors"))
    from humove.model.dit import is_motion_key

    video_keys = [k for k in first if not is_motion_key(k) or k.startswith("task_embedding.")]
    motion_keys = [k for k in first if is_motion_key(k)]
    assert video_keys and all(torch.equal(first[k], last[k]) for k in video_keys)
    assert any(not torch.equal(first[k], last[k]) for k in motion_keys)

    # Phase 2 starts from phase 1's weights and keeps its motion normalisation (not the paired shards' own).
    write_paired_shards(tmp_path / "paired", num_samples=2, frames=30, stats=True)
    train(tiny_config(tmp_path / "phase2", tmp_path / "paired", steps=1, init_checkpoint=str(tmp_path / "run"),
                      data={"batch_size": 1}))
    stats = [(path / "checkpoints" / name / "motion_stats.json").read_text()
             for path, name in ((tmp_path / "run", "step-00000003"), (tmp_path / "phase2", "step-00000001"))]
    assert stats[0] == stats[1]
    assert stats[1] != json.dumps(json.loads((tmp_path / "paired" / "dataset.json").read_text())["feature_stats"])


def test_cli_trains_and_samples_all_three_modes(tmp_path, paired_shards):
    runner = CliRunner()
    result = runner.invoke(model_app, ["train", "model/configs/tiny.yaml", "--set", f"run_dir={tmp_path / 'run'}",
                                       "steps=2", "--set", f"data.shards=[{paired_shards}]"])  # several per --set
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])["step"] == 2
    motion_file = tmp_path / "clip.motion.npz"
    save_motion(motion_file, synthetic_motion(30, 30.0))
    video_file = next(paired_shards.glob("*.tar"))  # any video: take one out of a shard
    import webdataset as wds

    (tmp_path / "clip.mp4").write_bytes(next(iter(wds.WebDataset(str(video_file), shardshuffle=False)))["mp4"])
    prompt = ["--prompt", "a person"]
    for mode, extra in (("joint", prompt), ("motion2video", [*prompt, "--motion", str(motion_file)]),
                        ("video2motion", ["--video", str(tmp_path / "clip.mp4")])):
        out = tmp_path / mode
        result = runner.invoke(model_app, ["sample", str(tmp_path / "run"), "--mode", mode, "--steps", "2",
                                           "--out", str(out), "--body-model", "standin-smpl", *extra])
        assert result.exit_code == 0, result.output
        check_sample_outputs(out, mode, json.loads((out / "sample.json").read_text()))
    result = runner.invoke(model_app, ["sample", str(tmp_path / "run"), "--mode", "motion2video"])
    assert result.exit_code == 1 and "needs --motion" in result.output
    result = runner.invoke(model_app, ["sample", str(tmp_path / "run"), "--mode", "video2motion", *prompt,
                                       "--video", str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "refused")])
    assert result.exit_code == 1 and "takes no prompt" in result.output and not (tmp_path / "refused").exists()


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: tiny\ndata:\n  shards: [x]\n  num_frame: 9\n")
    with pytest.raises(ValueError, match="num_frame"):
        load_train_config(path)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        DataConfig(num_frames=10)


@pytest.mark.parametrize("copy_weights", [True, False])
def test_init_wan_copies_into_the_motion_branch_only_when_asked(tmp_path, copy_weights):
    from safetensors.torch import save_file

    from humove.model.config import DiTConfig
    from humove.model.dit import EchoMotionDiT
    from humove.model.train import build_model
    from humove.model.weights import wan_state_dict

    torch.manual_seed(1)
    wan = EchoMotionDiT(DiTConfig.preset("tiny", **TINY_OVERRIDES))
    save_file(wan_state_dict(wan), str(tmp_path / "wan.safetensors"))
    model = build_model(tiny_config(tmp_path / "run", tmp_path, init_wan=str(tmp_path / "wan.safetensors"),
                                    init_motion_from_video=copy_weights), torch.device("cpu"))
    params = dict(model.named_parameters())
    last = len(model.blocks) - 1  # a dual-modality block (the first ones are video-only)
    video_q, motion_q = params[f"blocks.{last}.self_attn.q.weight"], params[f"blocks.{last}.motion.self_attn.q.weight"]
    assert torch.equal(video_q, wan_state_dict(wan)[f"blocks.{last}.self_attn.q.weight"])
    assert torch.equal(motion_q, video_q) == copy_weights


def test_nonfinite_steps_are_skipped_and_weights_stay_finite(tmp_path, caplog):
    """One sample with huge finite values (1e30 m) makes its batches' loss non-finite: those steps are skipped and
    counted, every checkpoint holds finite weights, and the run ends normally."""
    shards = tmp_path / "shards"
    write_paired_shards(shards, num_samples=4, motion_only=True, stats=True, huge=(1,))
    config = tiny_config(tmp_path / "run", shards, phase=1, steps=6, checkpoint_every=2, max_nonfinite_steps=3,
                         data={"batch_size": 1})
    with caplog.at_level(logging.WARNING):
        metrics = train(config)
    log = read_log(tmp_path / "run")
    assert [m["step"] for m in log] == [1, 2, 3, 4, 5, 6]
    assert metrics["skipped_total"] >= 1 and sum(m["skipped"] for m in log) == metrics["skipped_total"]
    assert all(math.isfinite(m["loss"]) for m in log)
    assert "clip0001" in caplog.text and "batch skipped" in caplog.text
    for step in (2, 4, 6):
        weights = load_file(str(tmp_path / "run" / "checkpoints" / f"step-{step:08d}" / "model.safetensors"))
        assert all(torch.isfinite(value).all() for value in weights.values())


def test_too_many_nonfinite_steps_in_a_row_stop_with_the_sample_names(tmp_path):
    shards = tmp_path / "shards"
    write_paired_shards(shards, num_samples=2, motion_only=True, huge=(0, 1))
    from humove.motion.representation import MotionStats, motion_to_features

    manifest = json.loads((shards / "dataset.json").read_text())  # finite statistics of normal motion
    manifest["feature_stats"] = MotionStats.from_features([motion_to_features(synthetic_motion(24, 30))]).to_dict()
    (shards / "dataset.json").write_text(json.dumps(manifest))
    config = tiny_config(tmp_path / "run", shards, phase=1, steps=5, max_nonfinite_steps=2, data={"batch_size": 1})
    with pytest.raises(TrainingError, match=r"2 batches in a row.*clip000[01].*clip000[01]"):
        train(config)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_checkpoint_is_never_written_with_nonfinite_weights(tmp_path):
    from humove.model.checkpoint import NonFiniteWeightsError, save_checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    with torch.no_grad():
        model.weight[0, 1] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="weight"):
        save_checkpoint(tmp_path, 1, model, optimizer, torch.Generator(), {}, {})
    assert not (tmp_path / "checkpoints").exists()


def test_phase_two_on_motion_only_shards_is_an_error_at_start_up(tmp_path):
    write_paired_shards(tmp_path / "motion", num_samples=2, motion_only=True, stats=True)
    result = CliRunner().invoke(model_app, ["train", "model/configs/tiny.yaml", "--set", f"run_dir={tmp_path / 'r'}",
                                            "--set", f"data.shards=[{tmp_path / 'motion'}]"])
    assert result.exit_code == 1
    assert "cannot feed phase 2" in result.output and "no video" in result.output


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_parallel_without_torchrun_says_what_to_run(tmp_path, paired_shards, monkeypatch, mode):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(TrainingError, match=r"torchrun --nproc-per-node N -m humove.model.train CONFIG"):
        train(tiny_config(tmp_path / "run", paired_shards, parallel=mode))


def test_fsdp_gathers_bf16_parameters_and_reduces_in_fp32_on_gpu(tmp_path):
    from humove.model.train import fsdp_mixed_precision

    config = tiny_config(tmp_path, tmp_path)
    policy = fsdp_mixed_precision(config, torch.device("cuda", 0))  # precision auto → bf16 on GPU
    assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == torch.float32
    assert fsdp_mixed_precision(config, torch.device("cpu")) is None
    config.precision = "fp32"
    assert fsdp_mixed_precision(config, torch.device("cuda", 0)) is None


def test_startup_log_shows_normalised_second_moments(tmp_path, paired_shards, caplog):
    with caplog.at_level(logging.INFO, logger="humove.train"):
        train(tiny_config(tmp_path / "run", paired_shards, steps=1))
    line = next(r.getMessage() for r in caplog.records if "E[z²]" in r.getMessage())
    assert all(f" {group} " in line for group in ("v", "η", "θ", "γ", "β")), line


def test_data_where_every_sample_is_skipped_is_an_error_not_an_endless_loop(tmp_path):
    write_paired_shards(tmp_path / "short", num_samples=2, frames=5, motion_only=True, stats=True)  # < the window
    with pytest.raises(ShardDataError, match="none of its 2 samples can be used"):
        train(tiny_config(tmp_path / "run", tmp_path / "short", phase=1, steps=2))


def test_training_on_a_shard_edited_in_place_stops_with_one_line_naming_it(tmp_path):
    """Issue 22 item 5: the same shards untampered train (above); one changed caption byte stops the run."""
    from hostile.trainer.corpus import tamper_same_size

    shards = write_paired_shards(tmp_path / "motion", num_samples=4, per_shard=2, motion_only=True, stats=True)
    tamper_same_size(Path(shards[1]), b"walks", b"talks")
    result = CliRunner().invoke(model_app, ["train", "model/configs/tiny.yaml", "--set", f"run_dir={tmp_path / 'r'}",
                                            "--set", "phase=1", "--set", "steps=2",
                                            "--set", f"data.shards=[{tmp_path / 'motion'}]"])
    assert result.exit_code == 1
    line = next(line for line in result.output.splitlines() if line.startswith("error:"))
    assert line.startswith(f"error: shard {shards[1]} does not match its blake3 in dataset.json"), result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_overrides_take_several_values_per_set_and_every_set_counts(monkeypatch, tmp_path, capsys):
    """`python -m humove.model.train` (and `humove train`, which hands it its arguments): a second --set adds to the
    first, it does not replace it; a key given twice and a value that is not YAML are errors naming them."""
    import humove.model.train as trainer

    started = []
    monkeypatch.setattr(trainer, "train", started.append)
    trainer.main(["model/configs/tiny.yaml", "--set", f"run_dir={tmp_path}", "steps=7", "--set",
                  "data.batch_size=3", "tasks.p_joint=0.5", "loss_weighting=pooled"])
    (config,) = started
    assert (config.run_dir, config.steps, config.data.batch_size) == (str(tmp_path), 7, 3)
    assert (config.tasks.p_joint, config.loss_weighting) == (0.5, "pooled")
    for bad, message in ((["steps=1", "steps=2"], "'steps' is given twice"), (["steps"], "not KEY=VALUE"),
                         (["data.shards=[a"], "not YAML"), (["loss_weighting=sum"], "loss_weighting='sum'")):
        with pytest.raises(SystemExit):
            trainer.main(["model/configs/tiny.yaml", "--set", *bad])
        error = capsys.readouterr().err
        assert error.startswith("error: ") and message in error and error.count("\n") == 1, error
    assert len(started) == 1


def test_a_run_continues_only_with_its_own_model_configuration(tmp_path, caplog):
    """Resuming with another model configuration (e.g. another RoPE time scale) would train another network on
    top of the checkpoint: an error naming the field and how to keep it. Starting from another run's weights with
    other values is allowed, with a warning naming them."""
    from types import SimpleNamespace

    from humove.model.config import DiTConfig
    from humove.model.train import check_same_model

    config = tiny_config(tmp_path / "run", tmp_path)
    saved = DiTConfig.preset("tiny", **TINY_OVERRIDES, rope_time_scale=4.0)
    ours = DiTConfig.preset("tiny", **TINY_OVERRIDES, rope_time_scale=1.0)
    resume = SimpleNamespace(path=tmp_path / "step-00000001", model_config=saved)
    with pytest.raises(TrainingError, match=r"rope_time_scale 4.0 → 1.0.*model_overrides: \{rope_time_scale: 4.0\}"):
        check_same_model(config, ours, resume)
    check_same_model(config, saved, resume)  # the same configuration: nothing to say

    phase1 = tmp_path / "phase1"
    phase1.mkdir()
    (phase1 / "state.json").write_text("{}")
    (phase1 / "model_config.json").write_text(json.dumps(saved.to_dict()))
    config.init_checkpoint = str(phase1)
    with caplog.at_level(logging.WARNING, logger="humove.train"):
        check_same_model(config, ours, None)
    assert "rope_time_scale 4.0 → 1.0" in caplog.text and str(phase1) in caplog.text
