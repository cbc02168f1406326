"""The motion stages (`smpl` offline fitter → `smooth`) on synthetic person and pose artifacts with known motion."""

from __future__ import annotations

import numpy as np
import pytest

from humove.artifacts import npz_bytes
from humove.keypoints.coco import COCO17, LAYOUT_COCO17
from humove.motion.body_model import clip_joints, standin_model
from humove.motion.evaluate import pa_mpjpe
from humove.motion.quality import project_joints
from humove.motion.synthetic import walking_clip
from humove.schemas.motion import load_motion
from humove.stage import StageContext
from humove.stages.smooth import SmoothConfig, SmoothStage
from humove.stages.smpl import SmplConfig, SmplStage
from humove.storage import Storage
from humove.worker import apply_decision

FRAMES = 32


def _clip_row(tmp_path, clip, seen: np.ndarray, scatter: float = 0.0) -> dict:
    """A joined input row as the engine gives it after `pose`: shots, person and pose columns, artifacts."""
    height, width = (int(v) for v in clip.image_size)
    joints2d = project_joints(clip)                               # (F, 24, 2)
    kp, smpl, _ = COCO17.smpl_indices()
    xy = np.zeros((FRAMES, 17, 2), np.float32)
    xy[:, kp] = joints2d[:, smpl]
    if scatter:  # keypoints no body explains (a cartoon, clutter): each point off by `scatter` person heights
        height_px = np.ptp(xy[..., 1], axis=1)[:, None, None]
        xy += np.random.default_rng(0).normal(scale=scatter, size=xy.shape) * height_px
    world = np.zeros((FRAMES, 17, 3), np.float32)  # metric landmarks about the hip midpoint, as mediapipe gives
    world[:, kp] = clip.joints[:, smpl] - clip.joints[:, [1, 2]].mean(axis=1, keepdims=True)
    scores = np.zeros((FRAMES, 17), np.float32)
    scores[:, kp] = 0.9
    scores[~seen] = 0.0
    xy[~seen] = np.nan
    lo, hi = joints2d.min(axis=1), joints2d.max(axis=1)
    box = np.concatenate([lo - 20, hi + 20], axis=1).astype(np.float32)
    box[~seen] = np.nan
    storage = Storage(str(tmp_path))
    person_url = storage.join("artifacts", "person", "c1.npz")
    pose_url = storage.join("artifacts", "pose", "c1.npz")
    storage.write_bytes(person_url, npz_bytes(main_box=box, main_visible=seen, main_score=seen * 0.9))
    storage.write_bytes(pose_url, npz_bytes(keypoints=xy, scores=scores, layout=np.array(LAYOUT_COCO17),
                                            visible=scores > 0.3, world=world))
    return {"clip_id": "c1", "input_id": "c1", "clip_path": "unused.mp4", "clip_num_frames": FRAMES,
            "clip_fps": clip.fps, "clip_width": width, "clip_height": height, "start_s": 0.0,
            "end_s": FRAMES / clip.fps, "person_boxes_path": person_url, "pose_keypoints_path": pose_url}


def _run(stage_cls, config, tmp_path, row):
    stage = stage_cls(config, StageContext(run_dir=str(tmp_path), stage=stage_cls.name))
    stage.setup()
    record = stage.process(stage.prepare(row))
    return stage, record


def _extract(tmp_path, row, **smooth):
    _, raw = _run(SmplStage, SmplConfig(backend="offline-fit", fit_iterations=150), tmp_path, row)
    stage, record = _run(SmoothStage, SmoothConfig(**smooth), tmp_path, {**row, **raw})
    return raw, stage, apply_decision(stage, {**record, "input_id": "c1"})


def test_a_clear_person_is_kept_with_every_frame_valid(tmp_path):
    truth = _placed("walk", 30.0, heading=1.2)  # a walk with planted feet (walking_clip's feet slide)
    raw, _, record = _extract(tmp_path, _clip_row(tmp_path, truth, np.ones(FRAMES, bool)))
    assert raw["smpl_model"] == "offline-fitter" and raw["smpl_body_model"] == "standin-smpl"
    assert record["status"] == "ok", record
    assert record["motion_valid_fraction"] == 1.0
    assert record["motion_agreement_pck"] > 0.9 and record["motion_limb_length_error"] < 0.1
    motion = load_motion(Storage(record["motion_path"]).read_bytes(record["motion_path"]))
    assert motion.num_frames == FRAMES
    # 2D keypoints and metric landmarks: after alignment the pose must be close to the truth.
    print(f"\nclear walker: PA-MPJPE {1000 * pa_mpjpe(motion.joints, truth.joints):.1f} mm, foot sliding "
          f"{record['motion_foot_sliding_mps']:.2f} m/s")
    assert pa_mpjpe(motion.joints, truth.joints) < 0.035  # metres


def test_hidden_frames_are_invalid_not_invented(tmp_path):
    truth = walking_clip(frames=FRAMES)
    seen = np.ones(FRAMES, bool)
    seen[12:20] = False  # behind a passing van for 8 frames (a gap smoothing would bridge)
    _, _, record = _extract(tmp_path, _clip_row(tmp_path, truth, seen))
    motion = load_motion(Storage(record["motion_path"]).read_bytes(record["motion_path"]))
    assert not motion.valid[12:20].any()
    assert motion.valid[:12].all() and motion.valid[20:].all()
    assert record["motion_valid_fraction"] == pytest.approx(24 / 32)


def test_a_body_the_fit_cannot_explain_is_refused(tmp_path):
    truth = walking_clip(frames=FRAMES)
    _, stage, record = _extract(tmp_path, _clip_row(tmp_path, truth, np.ones(FRAMES, bool), scatter=0.15))
    assert record["status"] == "rejected"
    assert record["reason"] in {"fit_reprojection_high", "fit_disagrees_with_keypoints", "limb_lengths_disagree",
                                "few_valid_frames"}, record


def test_smooth_settings_change_only_the_smooth_stage(tmp_path):
    truth = walking_clip(frames=FRAMES)
    row = _clip_row(tmp_path, truth, np.ones(FRAMES, bool))
    _, raw = _run(SmplStage, SmplConfig(backend="offline-fit", fit_iterations=100), tmp_path, row)
    a = _run(SmoothStage, SmoothConfig(sigma=1.0), tmp_path, {**row, **raw})[1]
    b = _run(SmoothStage, SmoothConfig(sigma=4.0), tmp_path, {**row, **raw})[1]
    assert a["motion_sha256"] != b["motion_sha256"]
    assert '"rotation_sigma": 4.0' in b["motion_settings"]
    assert SmoothConfig(sigma=4.0).fingerprint_dict() != SmoothConfig(sigma=1.0).fingerprint_dict()


def _placed(motion: str, fps: float, shape: float = 0.5, start=(-0.9, 3.6), heading: float = 0.2):
    """A person moving through `demo_motion(motion)` with planted feet, in front of a 320×240 camera (focal
    380 px): FRAMES frames. The default start is on the left, with room to move right."""
    from dataclasses import replace

    from humove.motion.synthetic import demo_motion, place_motion

    pose, root, travel = demo_motion(motion, FRAMES, fps)
    betas = np.zeros(10, np.float32)
    betas[0] = shape
    clip, _ = place_motion(pose, root, travel, betas, start=start, heading=heading, floor_y=0.95)
    return replace(clip, focal=np.full(FRAMES, 380.0, np.float32), image_size=np.array([240, 320], np.int32),
                   fps=fps)


def _smooth_a_motion_file(tmp_path, motion, seen_as):
    """The smooth stage on a given raw motion file (of the stand-in body), with keypoints projected from
    `seen_as` (what the video shows); the smpl columns as the smpl stage records them."""
    import hashlib
    from dataclasses import replace

    from humove.schemas.motion import motion_to_bytes

    body = standin_model()
    motion = replace(motion, body_model=body.name,
                     joints=clip_joints(body, motion.betas, motion.global_orient,
                                        motion.body_pose.reshape(FRAMES, 23, 3), motion.transl))
    row = _clip_row(tmp_path, seen_as, np.ones(FRAMES, bool))
    data = motion_to_bytes(motion)
    url = Storage(str(tmp_path)).join("artifacts", "smpl", "c1.motion.npz")
    Storage(str(tmp_path)).write_bytes(url, data)
    row.update(smpl_motion_path=url, smpl_motion_sha256=hashlib.sha256(data).hexdigest(),
               smpl_body_model=body.name, smpl_body_model_file=body.source, smpl_body_model_sha256=body.sha256)
    stage, record = _run(SmoothStage, SmoothConfig(), tmp_path, row)
    return apply_decision(stage, {**record, "input_id": "c1"})


def test_implausible_motion_is_refused_for_what_is_wrong_with_it(tmp_path):
    """A still person's motion file, then the same with feet skating (the whole body glides 1 m/s), with depth
    drifting 0.2 m/s away while the image shows no change of size, with β₀ = −4, and with all three."""
    from dataclasses import replace

    fps = 16.0
    t = (np.arange(FRAMES) / fps)[:, None]

    def moving(clip, velocity):  # the whole body carried at `velocity` (m/s, camera frame)
        shift = (t * np.asarray(velocity, np.float32)).astype(np.float32)
        return replace(clip, transl=clip.transl + shift, joints=clip.joints + shift[:, None])

    still = _placed("still", fps)
    skating = moving(still, [1.0, 0, 0])
    drifting = moving(still, [0, 0, 0.2])
    odd_shape = _placed("still", fps, shape=-4.0)
    everything, skating_odd = moving(odd_shape, [1.0, 0, 0.2]), moving(odd_shape, [1.0, 0, 0])

    kept = _smooth_a_motion_file(tmp_path, still, seen_as=still)
    assert kept["status"] == "ok", kept
    assert kept["motion_foot_sliding_mps"] < 0.02 and kept["motion_depth_drift_mps"] < 0.01
    assert kept["motion_max_abs_beta"] == pytest.approx(0.5)
    cases = {"foot_sliding": (skating, skating), "depth_drift": (drifting, still),
             "implausible_shape": (odd_shape, odd_shape)}
    for reason, (motion, seen_as) in cases.items():
        record = _smooth_a_motion_file(tmp_path, motion, seen_as)
        assert (record["status"], record["reason"]) == ("rejected", reason), record
    # All at once: the record holds every measure; the reason is the first in the stage's order.
    record = _smooth_a_motion_file(tmp_path, everything, seen_as=skating_odd)
    assert (record["status"], record["reason"]) == ("rejected", "implausible_shape"), record
    config = SmoothConfig()
    assert record["motion_max_abs_beta"] > config.max_abs_beta
    assert record["motion_depth_drift_mps"] > config.max_depth_drift_mps
    assert record["motion_foot_sliding_mps"] > config.max_foot_sliding_mps


def test_camerahmr_backend_runs_its_real_code_path_at_a_configured_size(tmp_path):
    import hashlib

    from humove.hmr.random_weights import SMALL_FLNET_SIZE, SMALL_HMR_SIZE, write_random_camerahmr
    from humove.video import write_mp4

    weights = write_random_camerahmr(tmp_path / "weights", SMALL_HMR_SIZE, SMALL_FLNET_SIZE)
    frames = np.random.default_rng(0).integers(0, 255, size=(6, 96, 128, 3), dtype=np.uint8)
    write_mp4(str(tmp_path / "clip.mp4"), frames, fps=16.0)
    seen = np.array([True, True, True, False, True, True])
    box = np.tile(np.array([[30, 10, 90, 90]], np.float32), (6, 1))
    box[~seen] = np.nan
    storage = Storage(str(tmp_path))
    person_url = storage.join("artifacts", "person", "c1.npz")
    storage.write_bytes(person_url, npz_bytes(main_box=box, main_visible=seen))
    row = {"clip_id": "c1", "input_id": "c1", "clip_path": str(tmp_path / "clip.mp4"), "clip_num_frames": 6,
           "clip_fps": 16.0, "clip_width": 128, "clip_height": 96, "start_s": 0.0, "end_s": 6 / 16,
           "person_boxes_path": person_url}
    config = SmplConfig(backend="camerahmr", weights_dir=str(tmp_path / "weights"), device="cpu",
                        dtype="bfloat16", hmr_size=SMALL_HMR_SIZE, flnet_size=SMALL_FLNET_SIZE)
    stage, record = _run(SmplStage, config, tmp_path, row)
    assert stage.runner.hmr.config.depth == SMALL_HMR_SIZE["depth"]
    checkpoint_sha = hashlib.sha256(open(weights.checkpoint, "rb").read()).hexdigest()
    assert record["smpl_model"] == "camerahmr+flnet" and record["smpl_model_sha256"] == checkpoint_sha
    motion = load_motion(Storage(record["smpl_motion_path"]).read_bytes(record["smpl_motion_path"]))
    assert motion.num_frames == 6 and motion.valid.tolist() == seen.tolist()  # unseen frame: not valid
    assert np.isfinite(motion.focal).all() and (motion.focal > 0).all()


def test_camerahmr_backend_without_weights_names_the_missing_file(tmp_path):
    stage = SmplStage(SmplConfig(backend="camerahmr", weights_dir=str(tmp_path / "none"), device="cpu"),
                      StageContext(run_dir=str(tmp_path), stage="smpl"))
    with pytest.raises(FileNotFoundError, match="camerahmr_checkpoint_cleaned.ckpt"):
        stage.setup()


def _smpl_folder(folder, scale: float = 1.0):
    """A folder of converted SMPL files (the stand-in's arrays saved as SMPL_NEUTRAL.npz; `scale` makes another
    body under the same name)."""
    from humove.motion.body_model import build_standin_arrays

    arrays = build_standin_arrays()
    arrays["v_template"] = arrays["v_template"] * scale
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "SMPL_NEUTRAL.npz", **arrays)
    return folder


def test_one_body_model_setting_serves_smpl_and_smooth(tmp_path, monkeypatch):
    monkeypatch.delenv("HUMOVE_SMPL_DIR", raising=False)
    folder = _smpl_folder(tmp_path / "smpl-files")
    row = _clip_row(tmp_path, walking_clip(frames=FRAMES), np.ones(FRAMES, bool))
    smpl = SmplConfig(backend="offline-fit", fit_iterations=10, fit_root_iterations=5, body_model="smpl-neutral",
                      smpl_dir=str(folder))
    _, raw = _run(SmplStage, smpl, tmp_path, row)
    assert raw["smpl_body_model"] == "smpl-neutral"
    assert raw["smpl_body_model_file"] == str((folder / "SMPL_NEUTRAL.npz").resolve())
    _, record = _run(SmoothStage, SmoothConfig(), tmp_path, {**row, **raw})  # smooth has no setting of its own
    assert record["status"] == "ok" and record["motion_body_model"] == "smpl-neutral"

    _smpl_folder(folder, scale=1.1)  # another body under the same file name: caught, never used
    with pytest.raises(ValueError, match=r"^smooth: body model 'smpl-neutral' from .* sha256"):
        _run(SmoothStage, SmoothConfig(), tmp_path / "changed", {**row, **raw})
    (folder / "SMPL_NEUTRAL.npz").unlink()  # not on this node: the stage, the file sought, how to provide it
    with pytest.raises(FileNotFoundError, match=r"^smooth: .*smpl-files/SMPL_NEUTRAL\.npz.*HUMOVE_SMPL_DIR"):
        _run(SmoothStage, SmoothConfig(), tmp_path / "missing", {**row, **raw})
    monkeypatch.setenv("HUMOVE_SMPL_DIR", str(_smpl_folder(tmp_path / "copy")))  # e.g. smooth re-run elsewhere
    _, again = _run(SmoothStage, SmoothConfig(), tmp_path / "copied", {**row, **raw})
    assert again["motion_sha256"] == record["motion_sha256"]


def test_smpl_without_body_model_files_names_the_stage_the_file_and_the_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("HUMOVE_SMPL_DIR", raising=False)
    stage = SmplStage(SmplConfig(backend="offline-fit", body_model="smpl-neutral"),
                      StageContext(run_dir=str(tmp_path), stage="smpl"))
    with pytest.raises(FileNotFoundError, match=r"^smpl: .*SMPL_NEUTRAL\.npz.*HUMOVE_SMPL_DIR.*smpl\.smpl_dir"):
        stage.setup()


def test_an_old_smooth_smpl_dir_setting_says_where_the_setting_moved(tmp_path):
    from humove.config import ConfigError, load_pipeline

    pipeline = tmp_path / "old.yaml"
    pipeline.write_text("name: old\nstages:\n  - stage: smooth\n    config: {smpl_dir: /models/smpl}\n")
    with pytest.raises(ConfigError, match=r"(?s)smooth.smpl_dir is gone.*HUMOVE_SMPL_DIR.*smpl\.smpl_dir"):
        load_pipeline(pipeline)


# Rendered footage with body parts hidden, through the offline path: mediapipe keypoints (COCO-17 with metric
# landmarks, as the pose stage gives them) → smpl (offline fitter) → smooth. 2 s at 12 fps, rendered once.
RENDER_FPS = 12
HIPS_DOWN = [1, 2, 4, 5, 7, 8, 10, 11]  # hips, knees, ankles, feet (SMPL joints)


@pytest.fixture(scope="module")
def occluded(tmp_path_factory):
    """name → (RenderedPerson, keypoints xy, scores, world): `walker`, whose legs a box hides from 0.75 s to 1.5 s
    (frames 9-17), and `waist_up`, a waving person 1.6 m from a camera 1.3 m high: upper body only."""
    pytest.importorskip("mediapipe")
    from humove import samples
    from humove.keypoints.mediapipe_coco import MediaPipeCoco17

    detector = MediaPipeCoco17()
    shots = {"walker": (samples.Person("walk", (-1.0, 4.0), 1.2, shape=(0.5, 0.0)), samples.Occluder(0.75, 1.5),
                        samples.CAMERA_HEIGHT),
             "waist_up": (samples.Person("wave", (0.0, 1.6), -0.1, clothing=1), None, 1.3)}
    out = {}
    for name, (person, occluder, camera_height) in shots.items():
        rendered = samples.render_person(person, 2.0, RENDER_FPS, occluder=occluder, camera_height=camera_height)
        crops = detector.prepare(rendered.frames, rendered.boxes, np.ones(len(rendered.frames), bool))
        out[name] = (rendered, *detector.infer([crops])[0])
    return out


def _rendered_row(tmp_path, rendered, xy, scores, world) -> dict:
    """The row the engine gives after `pose` for a rendered person and the keypoints mediapipe found."""
    frames = len(rendered.frames)
    storage = Storage(str(tmp_path))
    person_url = storage.join("artifacts", "person", "c1.npz")
    pose_url = storage.join("artifacts", "pose", "c1.npz")
    storage.write_bytes(person_url, npz_bytes(main_box=rendered.boxes, main_visible=np.ones(frames, bool)))
    storage.write_bytes(pose_url, npz_bytes(keypoints=xy, scores=scores, layout=np.array(LAYOUT_COCO17),
                                            visible=scores > 0.3, world=world))
    height, width = rendered.frames.shape[1:3]
    return {"clip_id": "c1", "input_id": "c1", "clip_path": "unused.mp4", "clip_num_frames": frames,
            "clip_fps": float(RENDER_FPS), "clip_width": width, "clip_height": height, "start_s": 0.0,
            "end_s": frames / RENDER_FPS, "person_boxes_path": person_url, "pose_keypoints_path": pose_url}


def _smooth_rendered(tmp_path, row, raw, **smooth):
    stage, record = _run(SmoothStage, SmoothConfig(**smooth), tmp_path, {**row, **raw})
    record = apply_decision(stage, {**record, "input_id": "c1"})
    return record, load_motion(Storage(record["motion_path"]).read_bytes(record["motion_path"]))


def test_legs_hidden_by_an_occluder_make_those_frames_invalid_never_invented(tmp_path, occluded):
    rendered, *keypoints = occluded["walker"]
    row = _rendered_row(tmp_path, rendered, *keypoints)
    _, raw = _run(SmplStage, SmplConfig(backend="offline-fit", fit_iterations=150), tmp_path, row)
    hidden = ~rendered.joints_visible[:, HIPS_DOWN].any(axis=1)  # the truth: no leg joint in view
    assert hidden.tolist() == [False] * 9 + [True] * 9 + [False] * 6

    record, motion = _smooth_rendered(tmp_path, row, raw)  # required_parts: hips, knees, ankles
    print(f"\noccluded walker: valid {motion.valid.astype(int)}, {record['status']} {record.get('reason')}")
    assert not motion.valid[hidden].any()  # mediapipe calls a leg behind the box visible now and then: not valid
    assert not motion.joint_valid[hidden].any()
    assert motion.valid[~hidden].mean() > 0.8 and motion.joint_valid[motion.valid][:, HIPS_DOWN].mean() > 0.9
    assert record["motion_required_parts_fraction"] == pytest.approx(15 / 24)
    assert record["motion_valid_fraction"] <= 15 / 24

    # A dataset that promises only the upper body: those frames may be valid (where the fit explains the upper
    # body), with the legs marked unseen.
    record, upper = _smooth_rendered(tmp_path / "upper", row, raw, required_parts=["shoulders"])
    print(f"upper body promised: valid {upper.valid.astype(int)}")
    # (mediapipe misses the shoulders on a frame here and there: nearly every frame, not every one)
    assert record["motion_required_parts_fraction"] > 0.9 and upper.valid[hidden].any()
    assert not upper.joint_valid[hidden][:, [7, 8, 10, 11]].any()  # ankles and feet: never seen there


def test_upper_body_footage_is_valid_only_where_the_dataset_promises_the_upper_body(tmp_path, occluded):
    rendered, *keypoints = occluded["waist_up"]
    assert not rendered.joints_visible[:, [4, 5, 7, 8, 10, 11]].any()  # knees, ankles, feet below the frame
    row = _rendered_row(tmp_path, rendered, *keypoints)
    _, raw = _run(SmplStage, SmplConfig(backend="offline-fit", fit_iterations=150), tmp_path, row)

    record, motion = _smooth_rendered(tmp_path, row, raw)  # required_parts: hips, knees, ankles
    assert (record["status"], record["reason"]) == ("rejected", "required_parts_hidden"), record
    assert record["motion_required_parts_fraction"] == 0.0
    assert not motion.valid.any() and not motion.joint_valid.any()

    record, upper = _smooth_rendered(tmp_path / "upper", row, raw, required_parts=["shoulders"])
    assert record["status"] == "ok", record
    assert upper.valid.all()
    seen, truth = upper.joint_valid, rendered.joints_visible
    print(f"\nwaist up: joints seen {seen.sum(axis=0)}, in the picture {truth.sum(axis=0)}")
    assert seen[:, [0, 1, 2, 3, 6, 9, 12, 15, 16, 17]].all()  # pelvis, hips, spine, neck, head, shoulders
    # Elbows and wrists where in the picture (COCO-17 hands follow the wrists: a raised hand may be just past the
    # edge while its wrist is in view).
    assert seen[:, 18:22].mean() > 0.8 and not (seen[:, 18:22] & ~truth[:, 18:22]).any()
    assert not seen[:, [4, 5, 7, 8, 10, 11]].any()  # knees, ankles, feet: below the frame, never claimed
    assert record["motion_joint_valid_fraction"][4] == 0.0 and record["motion_joint_valid_fraction"][16] == 1.0
