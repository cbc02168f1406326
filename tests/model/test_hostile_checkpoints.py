"""Checkpoints are data only (issue 22, items 1 and 8): a pickle payload in any checkpoint file runs nothing and
is named in one line; a corrupt or hostile latest checkpoint is reported and the newest intact one is used."""

from __future__ import annotations

import shutil

import pytest
import torch
from hostile.trainer.corpus import plant_payload, truncate
from test_train import tiny_config
from trainer_fixtures import write_paired_shards

from humove.model import checkpoint as ckpt
from humove.model.train import EMA, build_model, train

STEP1, STEP2 = "step-00000001", "step-00000002"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A phase-1 run with two checkpoints (EMA on): the source every test copies and then spoils."""
    root = tmp_path_factory.mktemp("hostile-ckpt")
    write_paired_shards(root / "motion", num_samples=4, motion_only=True, stats=True)
    config = tiny_config(root / "run", root / "motion", phase=1, steps=2, checkpoint_every=1, ema_decay=0.9)
    train(config)
    return root / "run", config


def copy_run(trained_run, tmp_path):
    run, config = trained_run
    shutil.copytree(run, tmp_path / "run")
    config.run_dir = str(tmp_path / "run")
    return tmp_path / "run", config


def resume_into_fresh_model(path, config):
    """Everything resume does with a checkpoint folder, on a freshly built model."""
    model = build_model(config, torch.device("cpu"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    ema = EMA(model, 0.9)
    return ckpt.load_checkpoint(path, model, optimizer, torch.Generator(), ema.shadow)


def sample_from(path, out):
    from humove.model.sampling import SamplerConfig, generate

    return generate(path, "joint", out, prompt="a person", config=SamplerConfig(steps=1), device="cpu",
                    body_model="standin-smpl")


def test_a_pickle_payload_in_any_checkpoint_file_runs_nothing_and_is_named(trained_run, tmp_path):
    run, config = copy_run(trained_run, tmp_path)
    marker = tmp_path / "code-ran"
    names = sorted(p.name for p in (run / "checkpoints" / STEP2).iterdir())
    assert len(names) >= 8  # model, ema, optimizer, rng, state, train config, model config, motion statistics
    for name in names:
        spoilt = tmp_path / name
        shutil.copytree(run, spoilt)
        checkpoint = spoilt / "checkpoints" / STEP2
        plant_payload(checkpoint / name, marker)
        errors = {}
        for attempt, argument in ((resume_into_fresh_model, config), (sample_from, tmp_path / name / "sample")):
            try:
                attempt(checkpoint, argument)
            except ValueError as error:  # the CLIs print these as one `error:` line
                errors[attempt.__name__] = str(error)
            assert not marker.exists(), f"loading a checkpoint whose {name} is a pickle ran its code"
        assert errors, f"{name} holding a pickle was read as if it were fine"
        for message in errors.values():
            assert name in message and "\n" not in message, message
        # Resume goes on from the previous checkpoint exactly when this file made the latest one unusable.
        expected = STEP1 if "resume_into_fresh_model" in errors else STEP2
        assert ckpt.find_resume_checkpoint(spoilt).path == spoilt / "checkpoints" / expected, name
        assert not marker.exists()


def test_a_checkpoint_in_the_older_pickled_format_is_refused_unread(trained_run, tmp_path):
    run, config = copy_run(trained_run, tmp_path)
    old = run / "checkpoints" / STEP2
    marker = tmp_path / "code-ran"
    for name in [p.name for p in old.iterdir() if p.name.startswith(("optimizer.", "rng-rank"))]:
        (old / name).unlink()
    plant_payload(old / "optimizer.pt", marker)
    plant_payload(old / "rng-rank0.pt", marker)
    with pytest.raises(ValueError, match=r"older format .*init_checkpoint") as error:
        resume_into_fresh_model(old, config)
    assert STEP2 in str(error.value) and "\n" not in str(error.value)
    ckpt.load_model_weights(build_model(config, torch.device("cpu")), old)  # what init_checkpoint reads still loads
    assert not marker.exists()


def test_resume_skips_a_corrupt_latest_checkpoint_and_names_it(trained_run, tmp_path, caplog):
    run, config = copy_run(trained_run, tmp_path)
    marker = tmp_path / "code-ran"
    plant_payload(run / "checkpoints" / STEP2 / "model.safetensors", marker)
    truncate(run / "checkpoints" / STEP2 / "optimizer.safetensors")
    found = ckpt.find_resume_checkpoint(run)
    assert found.path == run / "checkpoints" / STEP1 and found.state["step"] == 1
    warning = next(r.getMessage() for r in caplog.records if STEP2 in r.getMessage())
    assert "model.safetensors" in warning and "resuming from " + STEP1 in warning and "\n" not in warning
    assert not marker.exists()


def test_a_latest_pointer_leading_out_of_the_run_is_not_followed(trained_run, tmp_path, caplog):
    run, _ = copy_run(trained_run, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(run / "checkpoints" / STEP2, elsewhere)
    for pointer in ("../../elsewhere", str(elsewhere), "\x80\x04junk"):
        (run / "checkpoints" / "latest").write_bytes(pointer.encode("utf-8", "surrogateescape"))
        assert ckpt.resolve_checkpoint(run) == run / "checkpoints" / STEP2
        assert ckpt.find_resume_checkpoint(run).path == run / "checkpoints" / STEP2
    assert "is not a checkpoint name" in caplog.text


def test_with_no_intact_checkpoint_training_stops_rather_than_starting_over(trained_run, tmp_path):
    run, config = copy_run(trained_run, tmp_path)
    for step in (STEP1, STEP2):
        truncate(run / "checkpoints" / step / "model.safetensors")
    with pytest.raises(ValueError, match=rf"no intact checkpoint in .*: {STEP2}/model.safetensors: .*; {STEP1}/model"):
        train(config)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", STEP1, STEP2]


def test_training_resumes_from_the_newest_intact_checkpoint_after_a_half_written_log_line(trained_run, tmp_path,
                                                                                          caplog):
    """Issue 22 item 8: a truncated latest model.safetensors, and log.jsonl cut in the middle of a line."""
    from hostile.trainer.corpus import half_written_log_line
    from test_train import read_log

    run, config = copy_run(trained_run, tmp_path)
    truncate(run / "checkpoints" / STEP2 / "model.safetensors")
    half_written_log_line(run / "log.jsonl")
    config.steps = 3
    train(config)
    assert [m["step"] for m in read_log(run)] == [1, 2, 3]  # whole lines only: steps 2 and 3 trained again
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and STEP2 in r.getMessage()]
    assert len(warnings) == 1 and "model.safetensors" in warnings[0] and f"resuming from {STEP1}" in warnings[0]
    assert (run / "checkpoints" / "latest").read_text() == "step-00000003"


def test_hostile_wan_weight_files_run_nothing_and_are_named(tmp_path):
    """The sweep's other user-supplied weights: Wan `.pth` (weights-only unpickler), `.safetensors`, shard index."""
    import json

    from humove.model.weights import WanWeightsError, read_state_dict

    marker = tmp_path / "code-ran"
    plant_payload(tmp_path / "wan.pth", marker)
    (tmp_path / "wan.safetensors").write_bytes(b"\x00" * 64)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../wan.safetensors"}}))
    expected = {tmp_path / "wan.pth": "not a plain tensor file (WeightsUnpickler error: Unsupported global",
                tmp_path / "wan.safetensors": "not a readable safetensors file",
                folder: "names '../wan.safetensors', not a file of its own folder"}
    for source, reason in expected.items():
        with pytest.raises(WanWeightsError) as error:
            read_state_dict(source)
        assert str(source) in str(error.value) and reason in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()


def _find_on_rank(rank: int, world: int, port: int, run, out) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        (out / f"rank{rank}").write_text(ckpt.find_resume_checkpoint(run).path.name)
    finally:
        dist.destroy_process_group()


def test_every_rank_resumes_from_the_same_checkpoint_when_one_rank_cannot_read_the_latest(trained_run, tmp_path):
    """Rank 1's RNG file of the latest checkpoint is truncated: rank 0 could read that checkpoint, but both ranks
    must go back to the previous one together (gloo, two processes)."""
    import json
    import socket

    import torch.multiprocessing as mp

    run, _ = copy_run(trained_run, tmp_path)
    for step in (STEP1, STEP2):  # make them two-rank checkpoints
        folder = run / "checkpoints" / step
        state = json.loads((folder / "state.json").read_text())
        state.update(world_size=2, data_positions=state["data_positions"] * 2)
        (folder / "state.json").write_text(json.dumps(state))
        shutil.copy(folder / "rng-rank0.json", folder / "rng-rank1.json")
    truncate(run / "checkpoints" / STEP2 / "rng-rank1.json")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.start_processes(_find_on_rank, args=(2, port, run, tmp_path), nprocs=2, start_method="fork")  # no imports
    assert [(tmp_path / f"rank{r}").read_text() for r in range(2)] == [STEP1, STEP1]
