"""Stand-in body model, converted SMPL files and the `humove smpl convert` command."""

import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse
import torch
from typer.testing import CliRunner

from humove.motion.body_model import (
    STANDIN_NAME,
    STANDIN_REST_JOINTS,
    BodyModel,
    build_standin_arrays,
    load_body_model,
    load_smpl_file,
    standin_model,
)
from humove.motion.cli import smpl_app
from humove.motion.convert import convert_smpl, read_smpl_pickle


def _random_pose(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 10, generator=g),
        0.5 * torch.randn(batch, 3, generator=g),
        0.3 * torch.randn(batch, 23, 3, generator=g),
        torch.randn(batch, 3, generator=g),
    )


def test_standin_has_smpl_layout_and_human_proportions():
    arrays = build_standin_arrays()
    assert arrays["v_template"].shape == (6890, 3)
    assert arrays["shapedirs"].shape == (6890, 3, 10)
    assert arrays["posedirs"].shape == (6890, 3, 207)
    assert arrays["J_regressor"].shape == (24, 6890)
    np.testing.assert_allclose(arrays["weights"].sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(arrays["J_regressor"].sum(1), 1.0, atol=1e-5)
    joints = arrays["J_regressor"] @ arrays["v_template"]
    np.testing.assert_allclose(joints, STANDIN_REST_JOINTS, atol=1e-5)
    height = arrays["v_template"][:, 1].max() - arrays["v_template"][:, 1].min()
    assert 1.6 < height < 1.9, height  # adult height in metres
    # Deterministic: built in code, the same every time.
    np.testing.assert_array_equal(build_standin_arrays()["shapedirs"], arrays["shapedirs"])


def test_standin_runs_through_smplx_and_fast_joints_match():
    model = standin_model()
    assert model.name == STANDIN_NAME
    out = model(*_random_pose(4))
    assert out.joints.shape == (4, 24, 3) and out.vertices.shape == (4, 6890, 3)
    assert torch.isfinite(out.vertices).all()
    # The fitter's joints-only path is the same function as smplx's joints.
    torch.testing.assert_close(model.joints_only(*_random_pose(4)), out.joints, atol=1e-5, rtol=0)
    # Shape changes the body: beta 0 scales the height.
    zero = torch.zeros(1, 3)
    tall = model(torch.tensor([[2.0] + [0.0] * 9]), zero, torch.zeros(1, 23, 3), zero).joints
    rest = model(torch.zeros(1, 10), zero, torch.zeros(1, 23, 3), zero).joints
    assert (tall[0, 15, 1] - tall[0, 7, 1]) > (rest[0, 15, 1] - rest[0, 7, 1])


def test_unknown_body_model_names_are_refused(monkeypatch):
    monkeypatch.delenv("HUMOVE_SMPL_DIR", raising=False)
    with pytest.raises(ValueError, match="unknown body model"):
        load_body_model("mano")
    with pytest.raises(FileNotFoundError, match="HUMOVE_SMPL_DIR"):
        load_body_model("smpl-neutral")
    assert load_body_model(STANDIN_NAME) is standin_model()


def _fake_chumpy_pickle(tmp_path, monkeypatch):
    """Write a pickle shaped like an official SMPL file: chumpy Ch arrays, sparse J_regressor, protocol 2."""
    fake_ch = types.ModuleType("chumpy.ch")

    class Ch:  # a fake of chumpy.ch.Ch: only its pickled form matters
        def __init__(self, x):
            self.x = x

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    fake_ch.Ch = Ch
    monkeypatch.setitem(sys.modules, "chumpy", types.ModuleType("chumpy"))
    monkeypatch.setitem(sys.modules, "chumpy.ch", fake_ch)
    arrays = build_standin_arrays(seed=3)
    payload = dict(arrays)
    payload["shapedirs"] = Ch(arrays["shapedirs"].astype(np.float64))
    payload["v_template"] = Ch(arrays["v_template"].astype(np.float64))
    payload["J_regressor"] = scipy.sparse.csc_matrix(arrays["J_regressor"].astype(np.float64))
    payload["bs_style"] = "lbs"
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    monkeypatch.delitem(sys.modules, "chumpy.ch")  # conversion must not need chumpy
    monkeypatch.delitem(sys.modules, "chumpy")
    return path, arrays


def test_convert_round_trip_without_chumpy(tmp_path, monkeypatch):
    src, arrays = _fake_chumpy_pickle(tmp_path, monkeypatch)
    dst = convert_smpl(src, tmp_path / "out" / "SMPL_NEUTRAL.npz")
    with np.load(dst) as data:
        for key in ("v_template", "shapedirs", "J_regressor", "weights", "posedirs", "f", "kintree_table"):
            np.testing.assert_allclose(data[key], arrays[key], atol=1e-6, err_msg=key)
    user = load_smpl_file(dst)
    assert user.name == "smpl-neutral"
    reference = BodyModel("reference", arrays)
    torch.testing.assert_close(user(*_random_pose(2)).vertices, reference(*_random_pose(2)).vertices)
    monkeypatch.setenv("HUMOVE_SMPL_DIR", str(dst.parent))
    assert load_body_model("smpl-neutral").name == "smpl-neutral"


def test_convert_cli_and_clear_errors(tmp_path, monkeypatch):
    src, _ = _fake_chumpy_pickle(tmp_path, monkeypatch)
    runner = CliRunner()
    result = runner.invoke(smpl_app, ["convert", str(src), str(tmp_path / "SMPL_NEUTRAL.npz")])
    assert result.exit_code == 0, result.output
    assert "smpl-neutral" in result.output and (tmp_path / "SMPL_NEUTRAL.npz").exists()
    bad = runner.invoke(smpl_app, ["convert", str(tmp_path / "missing.pkl"), str(tmp_path / "x.npz")])
    assert bad.exit_code == 1
    # A pickle that tries to call anything outside numpy/scipy/chumpy is refused, naming the culprit.
    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    with pytest.raises(ValueError, match="os.system"):
        read_smpl_pickle(hostile)
    with pytest.raises(ValueError, match="chumpy"):
        load_smpl_file(src)


def test_info_cli_gives_a_one_line_error_for_a_missing_file_or_a_pickle(tmp_path, monkeypatch):
    src, _ = _fake_chumpy_pickle(tmp_path, monkeypatch)
    runner = CliRunner()
    for path, expected in ((tmp_path / "missing.npz", "no such file"), (src, "humove smpl convert")):
        result = runner.invoke(smpl_app, ["info", str(path)])
        assert result.exit_code == 2, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "Traceback" not in result.output and expected in result.output
        assert len(result.output.strip().splitlines()) == 1
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    result = runner.invoke(smpl_app, ["info", str(garbage)])
    assert result.exit_code == 2 and "not a readable .npz" in result.output
    good = runner.invoke(smpl_app, ["convert", str(src), str(tmp_path / "SMPL_NEUTRAL.npz")])
    assert good.exit_code == 0, good.output
    info = runner.invoke(smpl_app, ["info", str(tmp_path / "SMPL_NEUTRAL.npz")])
    assert info.exit_code == 0 and "v_template" in info.output
