"""Motion file v3 loads straight into smplx and carries which joints were seen; v1 and v2 files still read; `humove smpl
convert` writes a pickle that `smplx.create` loads unchanged."""

import contextlib
import io
import pickle
import sys
import types

import numpy as np
import pytest
import smplx
import torch
from typer.testing import CliRunner

from humove.motion.body_model import build_standin_arrays, clip_joints, standin_model
from humove.motion.cli import smpl_app
from humove.motion.convert import convert_smpl
from humove.schemas.motion import (
    SMPL_PARAMETER_KEYS,
    MotionClip,
    MotionFileError,
    load_motion,
    motion_to_bytes,
    save_motion,
)


def standin_clip(frames: int = 5, seed: int = 0) -> MotionClip:
    rng = np.random.default_rng(seed)
    model = standin_model()
    betas = np.tile(rng.normal(size=(1, 10)), (frames, 1)).astype(np.float32)
    global_orient = rng.normal(scale=0.3, size=(frames, 3)).astype(np.float32)
    body_pose = rng.normal(scale=0.3, size=(frames, 23, 3)).astype(np.float32)
    transl = rng.normal(size=(frames, 3)).astype(np.float32)
    return MotionClip(
        betas=betas, global_orient=global_orient, body_pose=body_pose, transl=transl,
        joints=clip_joints(model, betas, global_orient, body_pose, transl), focal=np.full(frames, 500.0, np.float32),
        image_size=np.array([96, 128], np.int32), valid=np.ones(frames, bool), fps=30.0, body_model=model.name,
    ).validate()


def quiet_smpl(**kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return smplx.SMPL(**kwargs)


def test_a_v3_motion_file_goes_straight_into_smplx(tmp_path):
    clip = standin_clip()
    save_motion(tmp_path / "clip.motion.npz", clip)
    data = np.load(tmp_path / "clip.motion.npz")
    assert data["body_pose"].shape == (5, 69) and int(data["schema_version"]) == 3
    body = quiet_smpl(model_path=str(tmp_path), data_struct=smplx.utils.Struct(**build_standin_arrays()))
    out = body(**{key: torch.tensor(data[key]) for key in SMPL_PARAMETER_KEYS})
    np.testing.assert_allclose(out.joints[:, :24].detach().numpy(), clip.joints, atol=1e-5)
    assert clip.smpl_parameters()["body_pose"].shape == (5, 69)
    assert clip.body_rotations.shape == (5, 23, 3)


def test_v1_files_still_load_and_a_wrong_pose_layout_is_refused(tmp_path):
    clip = standin_clip(frames=4)
    arrays = clip.to_arrays()
    arrays["body_pose"] = arrays["body_pose"].reshape(4, 23, 3)
    arrays["schema_version"] = np.asarray(1, np.int32)
    np.savez(tmp_path / "v1.npz", **arrays)
    loaded = load_motion(tmp_path / "v1.npz")
    np.testing.assert_array_equal(loaded.body_pose, clip.body_pose)
    np.testing.assert_array_equal(loaded.body_rotations, arrays["body_pose"])

    arrays["schema_version"] = np.asarray(2, np.int32)  # a v2 file must hold the flat pose
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(MotionFileError, match="body_pose.*v2 file"):
        load_motion(tmp_path / "bad.npz")
    assert load_motion(motion_to_bytes(clip)).body_pose.shape == (4, 69)


def test_joint_valid_round_trips_and_older_files_count_every_joint_of_a_valid_frame():
    clip = standin_clip(frames=4)
    clip.valid = np.array([True, True, False, True])
    joint_valid = np.ones((4, 24), bool)
    joint_valid[1, [4, 5, 7, 8]] = False  # knees and ankles hidden on frame 1
    clip = MotionClip(**{**vars(clip), "joint_valid": joint_valid})  # narrowed to the valid frames
    assert not clip.joint_valid[2].any() and clip.joint_valid[[0, 3]].all()
    arrays = np.load(io.BytesIO(motion_to_bytes(clip)))
    assert arrays["joint_valid"].dtype == bool and arrays["joint_valid"].shape == (4, 24)
    loaded = load_motion(motion_to_bytes(clip))
    np.testing.assert_array_equal(loaded.joint_valid, clip.joint_valid)

    v2 = dict(clip.to_arrays())
    del v2["joint_valid"]
    v2["schema_version"] = np.asarray(2, np.int32)
    buffer = io.BytesIO()
    np.savez(buffer, **v2)
    old = load_motion(buffer.getvalue())
    np.testing.assert_array_equal(old.joint_valid, np.repeat(clip.valid[:, None], 24, axis=1))


def test_a_file_whose_joint_valid_breaks_the_contract_is_refused():
    clip = standin_clip(frames=4)

    def saved(**changes) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, **{**clip.to_arrays(), **changes})
        return buffer.getvalue()

    hidden_frame = np.array([True, False, True, True])
    with pytest.raises(MotionFileError, match="joint_valid.*not valid"):  # a joint seen on an invalid frame
        load_motion(saved(valid=hidden_frame))
    with pytest.raises(MotionFileError, match=r"joint_valid.*shape \(4, 23\)"):
        load_motion(saved(joint_valid=np.ones((4, 23), bool)))
    with pytest.raises(MotionFileError, match="joint_valid.*dtype"):
        load_motion(saved(joint_valid=np.ones((4, 24), np.float32)))
    with pytest.raises(MotionFileError, match=r"lacks keys \['joint_valid'\]"):
        arrays = dict(clip.to_arrays())
        del arrays["joint_valid"]
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        load_motion(buffer.getvalue())
    clip.valid = hidden_frame  # changed in place: the file still says no joint is seen on that frame
    assert load_motion(motion_to_bytes(clip)).joint_valid.tolist() == [[v] * 24 for v in hidden_frame]


def test_convert_writes_a_pickle_that_smplx_create_loads(tmp_path, monkeypatch):
    # An official-style source: a chumpy array inside (a fake chumpy module, absent again while converting).
    fake_ch = types.ModuleType("chumpy.ch")

    class Ch:  # fake of chumpy.ch.Ch: only its pickled form matters
        def __init__(self, x):
            self.x = x

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    fake_ch.Ch = Ch
    monkeypatch.setitem(sys.modules, "chumpy", types.ModuleType("chumpy"))
    monkeypatch.setitem(sys.modules, "chumpy.ch", fake_ch)
    arrays = build_standin_arrays(seed=4)
    source = tmp_path / "download" / "basicmodel_f_lbs.pkl"
    source.parent.mkdir()
    source.write_bytes(pickle.dumps({**arrays, "shapedirs": Ch(arrays["shapedirs"])}, protocol=2))
    monkeypatch.delitem(sys.modules, "chumpy.ch")
    monkeypatch.delitem(sys.modules, "chumpy")

    result = CliRunner().invoke(smpl_app, ["convert", str(source), str(tmp_path / "models" / "SMPL_FEMALE.npz")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "models" / "smpl" / "SMPL_FEMALE.pkl").exists() and "smplx.create" in result.output
    with contextlib.redirect_stdout(io.StringIO()):
        body = smplx.create(str(tmp_path / "models"), model_type="smpl", gender="female")
    reference = quiet_smpl(model_path=str(tmp_path), data_struct=smplx.utils.Struct(**arrays))
    clip = standin_clip(frames=3, seed=1)
    params = {key: torch.from_numpy(value) for key, value in clip.smpl_parameters().items()}
    torch.testing.assert_close(body(**params).vertices, reference(**params).vertices)

    with pytest.raises(ValueError, match="overwrite the source"):  # never clobber the user's own file
        convert_smpl(tmp_path / "models" / "smpl" / "SMPL_FEMALE.pkl", tmp_path / "models" / "SMPL_FEMALE.npz")


def test_npz_reader_matches_numpy_and_names_a_broken_archive(tmp_path):
    """`read_npz` gives what `np.load` gives (dtype, shape, values, writable), also for headers its fast path does
    not parse (Fortran order) and for archives its record walk leaves to `zipfile` (compressed members, a
    comment); a file that is not an archive, or a member whose bytes no longer match its CRC-32, is a
    MotionFileError."""
    import io
    import zipfile

    from humove.schemas.motion import _stored_members, read_npz

    arrays = {"a": np.arange(12, dtype="<f4").reshape(3, 4), "b": np.asfortranarray(np.ones((2, 3), ">i2")),
              "c": np.asarray("smpl-neutral"), "d": np.asarray(2.5, np.float32), "e": np.zeros(0, bool)}
    buffer, compressed = io.BytesIO(), io.BytesIO()
    np.savez(buffer, **arrays)
    np.savez_compressed(compressed, **arrays)
    with zipfile.ZipFile(commented := io.BytesIO(buffer.getvalue()), "a") as archive:
        archive.comment = b"a comment"
    assert _stored_members(buffer.getvalue()) is not None  # what np.savez writes takes the record walk
    assert _stored_members(compressed.getvalue()) is None and _stored_members(commented.getvalue()) is None
    path = tmp_path / "x.npz"
    path.write_bytes(buffer.getvalue())
    for source in (buffer.getvalue(), path, compressed.getvalue(), commented.getvalue()):
        read = read_npz(source)
        with np.load(path) as reference:
            assert sorted(read) == sorted(reference.files)
            for name in reference.files:
                assert read[name].dtype == reference[name].dtype and read[name].shape == reference[name].shape
                np.testing.assert_array_equal(read[name], reference[name])
                assert read[name].flags.writeable
    with pytest.raises(MotionFileError, match="not a readable .npz"):
        read_npz(b"not a zip file at all")
    damaged = bytearray(buffer.getvalue())
    damaged[damaged.index(np.arange(12, dtype="<f4").tobytes()) + 5] ^= 0xFF  # one byte of member "a"
    with pytest.raises(MotionFileError, match="bad CRC-32 for member 'a.npy'"):
        read_npz(bytes(damaged))
