"""Deciding like a curator: the person and pose stages of the demo pipeline (offline backends, its config) on
rendered shots with known bodies (`humove.samples.CURATOR_SPECS`). Wide poses and unusual bodies are kept,
framings that cut the body are refused with the reason a curator would write, people beside the main one count at
any size, and the same shot mirrored, letterboxed, at half size or resampled to 12 fps gets the same decision.
The body-part rule is also checked on the shots' true keypoints (what an ideal keypoint model, e.g. DWPose in the
real pipeline, would give), where the offline detector cannot see a body (legs only)."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from humove import samples
from humove.config import load_pipeline
from humove.stage import Rejection, StageContext
from humove.video import probe, write_mp4
from humove.worker import StageWorker, apply_decision

REPO = Path(__file__).resolve().parent.parent
SPECS = {spec.name.removeprefix("curator_").removesuffix(".mp4"): spec for spec in samples.CURATOR_SPECS}
KEPT = ("t_pose", "arms_out", "jumping_jacks", "bicycle", "crouch", "lying")
VARIANTS = ("mirrored", "letterboxed", "half_size", "fps12")
# Shots whose variants are run through the stages (a wide full body, a crouch, both close-ups); every shot's
# variants are checked on the true keypoints.
VARIED = ("bicycle", "crouch", "waist_up", "head_shoulders")
BAR = 40  # letterbox bar height, pixels (320×240 → 320×320)


def demo_config(stage: str) -> dict:
    _, stages = load_pipeline(REPO / "pipelines" / "demo.yaml")
    (found,) = [s for s in stages if s.name == stage]
    return found.config.model_dump()


def variant(frames: np.ndarray, fps: int, kind: str) -> tuple[np.ndarray, int]:
    """The same footage changed in a way that must not change a curator's decision."""
    if kind == "original":
        return frames, fps
    if kind == "mirrored":
        return np.ascontiguousarray(frames[:, :, ::-1]), fps
    if kind == "letterboxed":
        return np.pad(frames, ((0, 0), (BAR, BAR), (0, 0), (0, 0))), fps
    if kind == "half_size":
        return np.stack([cv2.resize(f, (f.shape[1] // 2, f.shape[0] // 2), interpolation=cv2.INTER_AREA)
                         for f in frames]), fps
    if kind == "fps12":
        return frames[resampled(len(frames), fps, 12)], 12
    raise ValueError(kind)


def resampled(count: int, fps: int, rate: int) -> np.ndarray:
    """Source frame index of each frame at `rate` (nearest earlier frame, as a frame-rate converter drops)."""
    return np.minimum(np.floor(np.arange(int(round(count * rate / fps))) * fps / rate + 1e-6).astype(int),
                      count - 1)


def clip_row(folder: Path, clip_id: str, frames: np.ndarray, fps: int) -> dict:
    path = str(folder / f"{clip_id}.mp4")
    write_mp4(path, list(frames), fps=fps)
    info = probe(path)
    return {"clip_id": clip_id, "input_id": clip_id, "clip_path": path, "clip_sha256": "",
            "clip_bytes": info.size_bytes, "clip_fps": info.fps, "clip_num_frames": info.num_frames,
            "clip_width": info.width, "clip_height": info.height, "start_s": 0.0, "end_s": info.duration_s}


@pytest.fixture(scope="module")
def rendered():
    """Every curator shot rendered once: name → (frames, fps, ground truth)."""
    out = {}
    for name, spec in SPECS.items():
        frames, truth = samples.render_sample(spec)
        out[name] = (frames, spec.fps, truth)
    return out


@pytest.fixture(scope="module")
def decided(rendered, tmp_path_factory):
    """(shot, variant) → (person record, pose record or None): the demo pipeline's person and pose stages."""
    tmp = tmp_path_factory.mktemp("curator")
    rows = []
    for name, (frames, fps, _) in rendered.items():
        for kind in ("original", *(VARIANTS if name in VARIED else ())):
            rows.append(clip_row(tmp, f"{name}-{kind}", *variant(frames, fps, kind)))
    person = StageWorker("person", demo_config("person"), str(tmp / "run"))
    people = {r[0]["id"]: r[0] for r in person.process([{"item": row, "attempt": 1} for row in rows])}
    found = [{**row, **{k: v for k, v in people[row["clip_id"]].items() if k.startswith("person_")}}
             for row in rows if people[row["clip_id"]]["status"] == "ok"]
    pose = StageWorker("pose", demo_config("pose"), str(tmp / "run"))
    poses = {r[0]["id"]: r[0] for r in pose.process([{"item": row, "attempt": 1} for row in found])}
    return {tuple(row["clip_id"].rsplit("-", 1)): (people[row["clip_id"]], poses.get(row["clip_id"]))
            for row in rows}


def outcome(person: dict, pose: dict | None) -> tuple[str | None, str | None]:
    """(refusing stage, reason); (None, None) when both stages keep the clip."""
    if person["status"] != "ok":
        return "person", person["reason"]
    if pose["status"] != "ok":
        return "pose", pose["reason"]
    return None, None


@pytest.mark.parametrize("name", KEPT)
def test_wide_poses_and_unusual_bodies_are_kept(decided, name):
    """T-pose, arms out, jumping jacks, a person beside a bicycle, crouching, lying down: full bodies, whatever
    the box shape (box aspect up to ~2.7 here)."""
    person, pose = decided[(name, "original")]
    assert outcome(person, pose) == (None, None), (person.get("detail"), pose and pose.get("detail"))
    assert pose["pose_part_seen"] == pytest.approx([1.0] * 5, abs=0.1)


@pytest.mark.parametrize("name, reason", [("head_shoulders", "close_up"), ("waist_up", "close_up"),
                                          ("side_by_side", "several_people"),
                                          ("beside_crouching", "several_people")])
def test_cut_framings_and_several_people_are_refused_for_the_right_reason(decided, name, reason):
    person, pose = decided[(name, "original")]
    expected = SPECS[name].expected
    assert outcome(person, pose) == (expected["stage"], reason), (person.get("detail"), pose and pose.get("detail"))
    record = person if expected["stage"] == "person" else pose
    assert "(needs " in record["detail"]  # measured beside the threshold


def test_close_up_detail_names_the_parts_in_frame_and_the_threshold(decided):
    _, pose = decided[("waist_up", "original")]
    assert pose["detail"].startswith("close_up: 3 of 5 body parts in frame (knees, ankles cut by the frame")
    assert pose["detail"].endswith("(needs each part seen in ≥ 50% of frames)")


def test_a_person_beside_the_main_one_counts_at_any_size(decided):
    """The crouching person's box is half the main one's height: the size rule alone would pass them as one."""
    person, _ = decided[("beside_crouching", "original")]
    assert person["person_second_ratio"] < 0.6 and person["person_near_fraction"] == 1.0


def test_legs_only_offline_is_nobody_not_a_brief_person(decided):
    """mediapipe finds a body from its face: a shot of legs only has nobody for the offline detector (with YOLO +
    DWPose the pose stage says legs_only, see the true-keypoint test below), never main_person_too_brief."""
    person, _ = decided[("legs_only", "original")]
    assert (person["status"], person["reason"]) == ("rejected", "no_person")


@pytest.mark.parametrize("name", VARIED)
@pytest.mark.parametrize("kind", VARIANTS)
def test_same_decision_mirrored_letterboxed_half_size_and_at_12_fps(decided, name, kind):
    original = outcome(*decided[(name, "original")])
    changed = decided[(name, kind)]
    assert outcome(*changed) == original, (changed[0].get("detail"), changed[1] and changed[1].get("detail"))
    assert original == (SPECS[name].expected["stage"], (SPECS[name].expected["reasons"] or [None])[0])


def test_letterbox_bars_are_not_picture(decided):
    person, pose = decided[("waist_up", "letterboxed")]
    assert person["person_picture_box"] == [0.0, BAR, 320.0, 240.0 + BAR]
    original, _ = decided[("waist_up", "original")]
    assert person["person_size"] == pytest.approx(original["person_size"], abs=0.05)  # of the picture, not frame


# The rule on true keypoints ----------------------------------------------------------------------------------

# SMPL joint of each COCO-17 point (the face points all at SMPL's head joint)
COCO17_FROM_SMPL = np.array([15, 15, 15, 15, 15, 16, 17, 18, 19, 20, 21, 1, 2, 4, 5, 7, 8])


def true_keypoints(frames: np.ndarray, fps: int, truth: dict, kind: str):
    """The rendered body's projected joints as COCO-17 keypoints of an ideal model (visible where the joint is in
    the image), carried through the same variant as the frames → xy (F, 17, 2), visible (F, 17), boxes (F, 4),
    picture (4,)."""
    xy = truth["extras"]["joints2d"][:, COCO17_FROM_SMPL].astype(np.float64)
    visible = truth["extras"]["joints_visible"][:, COCO17_FROM_SMPL]
    height, width = frames.shape[1:3]
    picture = np.array([0.0, 0.0, width, height])
    if kind == "mirrored":
        xy[..., 0] = width - xy[..., 0]
    elif kind == "letterboxed":
        xy[..., 1] += BAR
        picture = np.array([0.0, BAR, width, height + BAR])
    elif kind == "half_size":
        xy, picture = xy / 2, picture / 2
    elif kind == "fps12":
        index = resampled(len(xy), fps, 12)
        xy, visible = xy[index], visible[index]
    shown = np.where(visible[..., None], xy, np.nan)
    boxes = np.concatenate([np.nanmin(shown, axis=1), np.nanmax(shown, axis=1)], axis=1)
    boxes = np.clip(boxes, picture[[0, 1, 0, 1]], picture[[2, 3, 2, 3]])
    return xy, visible, boxes, picture


@pytest.mark.parametrize("name", [n for n in SPECS if SPECS[n].expected["stage"] != "person"])
def test_body_part_rule_on_true_keypoints_of_every_shot_and_variant(rendered, name, tmp_path):
    from humove.stages.pose import PoseConfig, PoseStage, body_measures, part_measures

    frames, fps, truth = rendered[name]
    stage = PoseStage(PoseConfig(**demo_config("pose")), StageContext(str(tmp_path), "pose"))
    expected = SPECS[name].expected
    for kind in ("original", *VARIANTS):
        xy, visible, boxes, picture = true_keypoints(frames, fps, truth, kind)
        seen = np.isfinite(boxes).all(axis=1)
        record = {"status": "ok", "pose_frames_seen": int(seen.sum()),
                  **body_measures(xy, visible.astype(np.float32), visible, boxes, seen, 0.1),
                  **part_measures(xy, visible, boxes, seen, picture)}
        decided = apply_decision(stage, record)
        reason = expected["reasons"][0] if expected["stage"] == "pose" else None
        assert decided["reason"] == reason, (kind, decided["detail"])


def test_rejection_detail_puts_the_measure_beside_the_threshold():
    assert Rejection("main_person_too_brief", 0.4, "seen 0.40 s at a stretch", "≥ 1 s").detail == \
        "main_person_too_brief: seen 0.40 s at a stretch (needs ≥ 1 s)"
    assert Rejection("too_short", 0.5).detail == "too_short (measured 0.5)"  # stages that give no words yet
