"""The demo set: every case a correct pipeline must handle is there with its expected outcome, and the ground
truth beside each video is the motion that drew it."""

import json

import numpy as np
import pytest

from humove import samples
from humove.motion.body_model import clip_joints, standin_model
from humove.motion.synthetic import DEMO_MOTIONS
from humove.schemas.motion import load_motion
from humove.stage import StageContext
from humove.stages.ingest import IngestConfig, IngestStage
from humove.video import iter_frames


def spec(name_part: str) -> samples.SampleSpec:
    (found,) = [s for s in samples.DEMO_SPECS if name_part in s.name]
    return found


def test_the_demo_set_lists_each_case_with_the_stage_that_refuses_it():
    videos = samples.demo_manifest()["videos"]
    assert len({v["name"] for v in videos}) == len(videos) == len(samples.DEMO_SPECS)
    refusals = {(v["expected"]["stage"], reason) for v in videos for reason in v["expected"]["reasons"]}
    assert {("ingest", "too_short"), ("person", "several_people"), ("person", "no_person"), ("pose", "close_up"),
            ("person", "occluded")} <= refusals
    kept = [v for v in videos if v["expected"]["stage"] is None]
    assert len(kept) >= 3 and all(v["expected"]["status"] == "ok" for v in kept)
    assert sum(len(v["shots"]) > 1 for v in kept) >= 2  # hard cuts for the shots stage to find
    for video in videos:
        assert video["expected"]["clips"] == len(video["shots"])
        people = any(shot["people"] for shot in video["shots"])
        assert (video["ground_truth"] is not None) == people
        seconds = video["num_frames"] / video["fps"]
        assert seconds < 1.0 if video["expected"]["reasons"] == ["too_short"] else 3.0 <= seconds <= 6.0


def test_the_two_people_are_of_similar_size_and_both_in_view():
    (shot,) = spec("two_people").shots
    planned = samples._shot_motion(shot, 20)
    heights = []
    for vertices in planned.vertices:
        xy = planned.camera.project(vertices)
        assert (xy >= 0).all() and (xy[..., 0] < samples.WIDTH).all() and (xy[..., 1] < samples.HEIGHT).all()
        heights.append(np.median(xy[..., 1].max(1) - xy[..., 1].min(1)))
    assert min(heights) / max(heights) > 0.8


def test_ground_truth_is_the_motion_that_drew_the_video(tmp_path):
    short = spec("too_short")
    path = samples.write_sample(short, str(tmp_path / short.name))
    frames = [f.image for f in iter_frames(path)]
    truth_path = samples.ground_truth_path(path)
    motion = load_motion(truth_path)  # a valid motion file
    with np.load(truth_path) as data:
        extras = {k: data[k] for k in data.files}
    assert motion.num_frames == len(frames) == 10 and motion.fps == 20.0
    body_pose = motion.body_pose.reshape(len(frames), 23, 3)
    joints = clip_joints(standin_model(), motion.betas, motion.global_orient, body_pose, motion.transl)
    np.testing.assert_allclose(joints, motion.joints, atol=1e-4)
    k = extras["intrinsics"]
    projected = motion.joints @ k.T
    np.testing.assert_allclose(extras["joints2d"], projected[..., :2] / projected[..., 2:], atol=1e-3)
    assert extras["visible"].all() and extras["joints_visible"].all() and motion.valid.all()
    # The rendered body is where the ground truth says: the joints' pixels differ from the empty room.
    columns, rows = np.round(extras["joints2d"][0]).astype(int).T
    room = samples.scene_background(samples._SCENES[short.shots[0].scene], samples.Camera(320, 240, samples.FOCAL))
    assert (np.abs(frames[0][rows, columns].astype(int) - room[rows, columns]).sum(-1) > 30).mean() > 0.8


def test_the_occluded_person_is_marked_hidden_for_about_a_second_in_the_middle(tmp_path):
    occluded = spec("occluded")
    samples.write_sample(occluded, str(tmp_path / occluded.name))
    with np.load(samples.ground_truth_path(str(tmp_path / occluded.name))) as data:
        visible = data["visible"]
    hidden = np.flatnonzero(~visible)
    assert visible[:10].all() and visible[-10:].all()
    assert np.array_equal(hidden, np.arange(hidden[0], hidden[-1] + 1)), "one hidden span"
    assert 0.8 <= len(hidden) / occluded.fps <= 2.0
    assert 1.5 <= hidden.mean() / occluded.fps <= 2.5


def test_ingest_lists_only_the_videos_beside_the_ground_truth(tmp_path):
    short = spec("too_short")
    samples.write_sample(short, str(tmp_path / "samples" / short.name))
    (tmp_path / "samples" / samples.MANIFEST_NAME).write_text(json.dumps(samples.demo_manifest()))
    assert samples.ground_truth_path(str(tmp_path / "samples" / short.name)).endswith(".motion.npz")
    stage = IngestStage(IngestConfig(source=str(tmp_path / "samples"), min_side_px=16),
                        StageContext(str(tmp_path / "run"), "ingest"))
    assert [item["source_path"] for item in stage.list_inputs()] == [str(tmp_path / "samples" / short.name)]
    assert [p.rsplit("/", 1)[1] for p in samples.demo_support_files(str(tmp_path / "samples"))] == [
        "demo_07_too_short.motion.npz", samples.MANIFEST_NAME]


def test_every_demo_person_stays_on_the_floor_and_whole_in_view_except_the_close_up():
    motions = set()
    for sample in samples.DEMO_SPECS:
        for shot in sample.shots:
            if not shot.people:
                continue
            planned = samples._shot_motion(shot, 10)  # 10 fps is enough to check the paths
            for person, vertices, motion in zip(shot.people, planned.vertices, planned.motions, strict=True):
                motions.add(person.motion)
                lowest = vertices[..., 1].max(axis=1)  # camera y grows downwards; the floor is below the camera
                assert lowest.max() == pytest.approx(shot.camera_height, abs=1e-4)
                assert (lowest > shot.camera_height - 0.2).all()  # hops are small
                assert np.abs(np.diff(motion.joints, axis=0)).max() > 0.005  # it moves
                xy = planned.camera.project(vertices)
                in_view = (xy >= 0).all() and (xy[..., 0] < samples.WIDTH).all() and (xy[..., 1] < samples.HEIGHT).all()
                assert in_view != ("close_up" in sample.name), sample.name
    assert motions == set(DEMO_MOTIONS)


def test_rendering_is_deterministic_whatever_torch_s_thread_count():
    import torch

    short = spec("too_short")
    first = samples.encode_sample(short, cached=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2 if threads == 1 else 1)
    try:
        second = samples.encode_sample(short, cached=False)
    finally:
        torch.set_num_threads(threads)
    assert first == second


def test_curator_shots_show_the_body_parts_their_names_say():
    """Kept shots show the whole body; the cut framings lose exactly the parts a curator would see missing (in
    most frames: a walker's swinging foot may leave the picture for a moment)."""
    from humove.schemas.motion import SMPL_JOINT_NAMES

    part = {"head": "head", "shoulders": "left_shoulder", "hips": "left_hip", "knees": "left_knee",
            "ankles": "left_ankle"}
    missing = {"head_shoulders": {"hips", "knees", "ankles"}, "waist_up": {"knees", "ankles"},
               "legs_only": {"head", "shoulders", "hips"}}
    for sample in samples.CURATOR_SPECS:
        name = sample.name.removeprefix("curator_").removesuffix(".mp4")
        (shot,) = sample.shots
        planned = samples._shot_motion(shot, 8)
        for index, vertices in enumerate(planned.vertices):
            lowest = vertices[..., 1].max(axis=1)
            # on the floor (lying included), never below it; a jumping jack hops
            assert (lowest <= shot.camera_height + 1e-4).all() and lowest.max() > shot.camera_height - 0.1
            if index == 0:
                xy = planned.camera.project(planned.motions[0].joints)
                inside = ((xy >= 0) & (xy < [samples.WIDTH, samples.HEIGHT])).all(axis=-1).mean(axis=0)  # (24,)
                out = {p for p, joint in part.items() if inside[SMPL_JOINT_NAMES.index(joint)] < 0.5}
                assert out == missing.get(name, set()), (name, out)
