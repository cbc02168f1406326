"""The `person` stage: offline backend for real on rendered clips (one person, two people, nobody, a person hidden
for a while, a close-up), YOLO through the real code path with random weights, decisions re-applied without
recompute, trimmed clips read through `current_clip`, and an undecodable clip as one error record."""

import io
import os
import re

import cv2
import numpy as np
import pytest

from bench import random_models
from humove.clips import current_clip
from humove.motion.synthetic import draw_cartoon_person
from humove.stage import StageContext
from humove.video import probe, write_mp4
from humove.worker import StageWorker, apply_decision

FPS = 16
WIDTH, HEIGHT = 320, 240
BACKGROUND = (200, 210, 220)
OFFLINE = {"backend": "mediapipe", "tracker": "iou", "detect_every": 2, "min_span_s": 0.5}


def _figure(height: int) -> np.ndarray:
    return cv2.resize(draw_cartoon_person(), (height * 3 // 4, height), interpolation=cv2.INTER_AREA)


FIGURE = _figure(180)


def render(case: str, frames: int) -> list[np.ndarray]:
    """Frames of one test case: 'one' (a full-body person walking right), 'two' (two people of similar size),
    'none' (empty background), 'hidden' (one person hidden by a grey board for frames 8–15), 'closeup' (only
    head and shoulders, filling the frame)."""
    out = []
    for t in range(frames):
        image = np.full((HEIGHT, WIDTH, 3), BACKGROUND, np.uint8)
        if case in ("one", "hidden"):
            image[40:220, 60 + t:195 + t] = FIGURE
        elif case == "two":
            image[40:220, 10 + t // 2:145 + t // 2] = FIGURE
            image[45:225, 175 - t // 2:310 - t // 2] = FIGURE
        elif case == "closeup":
            top = draw_cartoon_person()[40:330]  # head and shoulders of the 720-px figure
            image[:, 60:260] = cv2.resize(top, (200, HEIGHT), interpolation=cv2.INTER_AREA)
        if case == "hidden" and 8 <= t < 16:
            image[:, :] = (90, 90, 90)
        out.append(image)
    return out


def clip_row(tmp_path, case: str, frames: int = 16) -> dict:
    """A joined input row as the engine gives the person stage: the shots columns of one rendered clip."""
    path = str(tmp_path / f"{case}.mp4")
    write_mp4(path, render(case, frames), fps=FPS)
    info = probe(path)
    return {"clip_id": case, "input_id": case, "clip_path": path, "clip_sha256": "", "clip_bytes": info.size_bytes,
            "clip_fps": info.fps, "clip_num_frames": info.num_frames, "clip_width": info.width,
            "clip_height": info.height, "start_s": 10.0, "end_s": 10.0 + info.duration_s}


def run_stage(stage: str, config: dict, run_dir, rows: list[dict]) -> dict[str, dict]:
    worker = StageWorker(stage, config, str(run_dir))
    out = worker.process([{"item": row, "attempt": 1} for row in rows])
    return {records[0]["id"]: records[0] for records in out}


@pytest.fixture(scope="module")
def offline_records(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("person")
    rows = [clip_row(tmp, "one"), clip_row(tmp, "two"), clip_row(tmp, "none", 8), clip_row(tmp, "hidden", 32),
            clip_row(tmp, "closeup", 8)]
    return {r["clip_id"]: r for r in rows}, run_stage("person", OFFLINE, tmp / "run", rows), tmp / "run"


def test_offline_backend_keeps_one_clear_person_and_stores_its_boxes(offline_records):
    _, records, _ = offline_records
    one = records["one"]
    assert one["status"] == "ok", one
    assert one["backend"].startswith("mediapipe-0.10.21") and one["person_count_reliable"] is False
    assert one["person_model"].startswith("builtin:") and len(one["person_model_sha256"]) == 64
    assert one["person_coverage"] == 1.0 and one["person_clip_path"] is None
    assert 0.6 < one["person_box_height"] < 0.8  # the figure is 180 of 240 px tall
    with np.load(one["person_boxes_path"]) as art:
        assert art["main_box"].shape == (16, 4) and art["main_visible"].all()
        assert art["frame_size"].tolist() == [WIDTH, HEIGHT]
        assert art["detections"].shape[1] == 7
        x_centre = art["main_box"][:, [0, 2]].mean(axis=1)
        assert 110 < x_centre[0] < 150 and x_centre[-1] > x_centre[0] + 8  # follows the walk to the right


def test_offline_backend_refuses_two_people_and_nobody(offline_records):
    _, records, _ = offline_records
    two, none = records["two"], records["none"]
    assert two["status"] == "rejected" and two["reason"] == "several_people"
    assert two["person_people_max"] == 2 and two["person_second_ratio"] > 0.9
    assert none["status"] == "rejected" and none["reason"] == "no_person" and none["person_main_track_id"] == -1


def test_a_close_up_is_left_to_the_pose_stage(offline_records):
    """A box's shape is no proof of a close-up (arms out make a full body wide): the person stage keeps a clear
    person and the pose stage judges which body parts are in the picture (tests/test_pose.py)."""
    _, records, _ = offline_records
    closeup = records["closeup"]
    assert closeup["status"] == "ok" and closeup["person_touch_bottom"] == 1.0, closeup
    assert closeup["person_picture_box"] == [0.0, 0.0, WIDTH, HEIGHT]


def test_hidden_person_is_trimmed_to_the_visible_span_and_later_stages_see_that_clip(offline_records):
    rows, records, _ = offline_records
    hidden = records["hidden"]
    assert hidden["status"] == "ok", hidden
    assert (hidden["person_span_start_frame"], hidden["person_span_end_frame"]) == (16, 32)
    assert hidden["person_clip_num_frames"] == 16 and os.path.getsize(hidden["person_clip_path"]) > 0
    clip = current_clip({**rows["hidden"], **hidden})
    assert clip.trimmed and clip.path == hidden["person_clip_path"] and clip.num_frames == 16
    assert clip.start_s == pytest.approx(10.0 + 16 / FPS)
    assert probe(clip.path).num_frames == 16
    with np.load(hidden["person_boxes_path"]) as art:
        assert art["main_box"].shape == (16, 4)  # aligned to the trimmed clip
    untrimmed = current_clip({**rows["one"], **records["one"]})
    assert not untrimmed.trimmed and untrimmed.path == rows["one"]["clip_path"]


def test_a_short_visible_span_is_refused_with_its_length(offline_records):
    """Raising `min_span_s` re-decides the stored record: the 1 s span becomes too short, without recompute."""
    _, records, run_dir = offline_records
    from humove.stages.person import PersonConfig, PersonStage

    strict = PersonStage(PersonConfig(**{**OFFLINE, "min_span_s": 1.5}), StageContext(str(run_dir), "person"))
    hidden = apply_decision(strict, records["hidden"])
    assert hidden["status"] == "rejected" and hidden["reason"] == "occluded" and hidden["value"] == 1.0
    one = apply_decision(strict, records["one"])
    assert one["reason"] == "main_person_too_brief"
    lenient = PersonStage(PersonConfig(**{**OFFLINE, "max_second_person_ratio": 1.5, "max_near_fraction": 1.5}),
                          StageContext(str(run_dir), "person"))
    assert apply_decision(lenient, records["two"])["status"] == "ok"
    assert lenient.config.fingerprint_dict() == strict.config.fingerprint_dict()  # thresholds only


def test_undecodable_clip_is_one_error_record(tmp_path):
    bad = str(tmp_path / "bad.mp4")
    with open(bad, "wb") as handle:
        handle.write(b"not a video at all" * 10)
    row = {"clip_id": "bad", "input_id": "bad", "clip_path": bad, "clip_sha256": "", "clip_bytes": 180,
           "clip_fps": 16.0, "clip_num_frames": 16, "clip_width": 320, "clip_height": 240, "start_s": 0.0,
           "end_s": 1.0}
    good = clip_row(tmp_path, "none", 4)
    records = run_stage("person", OFFLINE, tmp_path / "run", [row, good])
    assert records["bad"]["status"] == "error" and "bad.mp4" in records["bad"]["error_message"]
    assert records["none"]["status"] == "rejected"


@pytest.fixture(scope="module")
def random_yolo(tmp_path_factory):
    """A yolo11n detector with random weights (its person bias raised: it finds boxes), saved as a local .pt like a
    real checkpoint."""
    return random_models.yolo(tmp_path_factory.mktemp("yolo"), "n")


def test_yolo_backend_runs_through_the_real_code_path(random_yolo, tmp_path):
    from humove.detection.yolo import YoloPersonDetector

    detector = YoloPersonDetector(random_yolo, image_size=160, min_score=0.0)
    found = detector.detect(render("one", 3))
    assert len(found) == 3 and detector.model == "yolo11n-random.pt" and len(detector.model_sha256) == 64
    for frame in found:  # random weights give random boxes: check their form, in frame pixels
        assert len(frame) > 0 and frame.boxes.shape == (len(frame), 4) and frame.boxes.dtype == np.float32
        assert (frame.boxes[:, 2] <= WIDTH + 1e-3).all() and (frame.boxes[:, 3] <= HEIGHT + 1e-3).all()
    config = {"backend": "yolo", "weights": random_yolo, "image_size": 160, "tracker": "bytetrack"}
    record = run_stage("person", config, tmp_path / "run", [clip_row(tmp_path, "one", 6)])["one"]
    assert record["status"] in ("ok", "rejected"), record
    assert record["backend"].startswith("ultralytics-") and "bytetrack" in record["backend"]
    with np.load(io.BytesIO(open(record["person_boxes_path"], "rb").read())) as art:
        assert art["main_box"].shape[1] == 4 and art["main_visible"].dtype == bool


def test_missing_weight_file_is_a_clear_error(tmp_path):
    from humove.detection.yolo import YoloPersonDetector

    with pytest.raises(FileNotFoundError, match=r"yolo11x\.pt.*ultralytics"):
        YoloPersonDetector(str(tmp_path / "yolo11x.pt"))
    # the stage fails at set-up, before any clip; the worker keeps the failure for the driver's one-line error
    worker = StageWorker("person", {"backend": "yolo", "weights": str(tmp_path / "yolo11x.pt")}, str(tmp_path / "run"))
    assert worker.setup_failed["type"] == "FileNotFoundError" and "yolo11x.pt" in worker.setup_failed["message"]


def test_yolo_on_a_gpu_this_node_lacks_fails_at_set_up(random_yolo, tmp_path):
    import torch

    from humove.devices import DeviceUnavailableError

    if torch.cuda.is_available():
        pytest.skip("this node has a GPU")
    config = {"backend": "yolo", "weights": random_yolo, "image_size": 160, "device": "cuda"}
    failure = StageWorker("person", config, str(tmp_path / "run")).setup_failed  # the driver's one-line error
    assert failure["type"] == DeviceUnavailableError.__name__
    assert re.match(r"person \(YOLO\): device 'cuda' requested, but torch", failure["message"])


@pytest.mark.parametrize("changes, reason, detail", [
    ({"person_main_track_id": -1}, "no_person", "no person detected in any frame"),
    ({"person_seen_s": 0.3}, "no_person", "nothing persists: seen 0.30 s (needs ≥ 0.5 s)"),
    ({"person_score_mean": 0.2}, "no_person", "mean detection score 0.20 (needs ≥ 0.3)"),  # doubted throughout
    ({"person_size": 0.1}, "person_too_small", "main person 0.10 of the picture height (needs ≥ 0.2)"),
    ({"person_size": 0.1, "person_second_ratio": 1.0}, "person_too_small", None),  # a crowd of small people
    ({"person_span_s": 0.8, "person_exit_changes": [0.3]}, "occluded", "then covered (image change 0.30"),
    ({"person_span_s": 0.8, "person_exit_changes": [0.02]}, "unstable_detection", "nothing covering them"),
    ({"person_span_s": 0.8, "person_span_count": 4}, "unstable_detection", "in 4 pieces"),
    ({"person_span_s": 0.8}, "main_person_too_brief", "seen 0.80 s at a stretch (needs ≥ 1 s)"),
    ({"person_second_ratio": 0.7}, "several_people", "second person 0.70 of the main one's height (needs < 0.6)"),
    ({"person_near_fraction": 0.5}, "several_people", "beside the main one in 50% of frames (needs < 30%)"),
    ({"person_box_stability": 0.3, "person_score_mean": 0.45}, "unstable_detection", "box stability 0.30"),
    ({"person_box_stability": 0.3}, None, None),        # jumpy boxes alone (fast motion) are no reason
    ({"person_score_mean": 0.45}, None, None),          # a middling score alone neither
    ({"person_touch_bottom": 1.0, "person_box_aspect": 1.4}, None, None),  # box shape is the pose stage's call
    ({"person_touch_side": 0.8}, None, None),
])
def test_decisions_combine_signals(offline_records, changes, reason, detail):
    from humove.stages.person import PersonConfig, PersonStage

    _, records, run_dir = offline_records
    strict = PersonStage(PersonConfig(**{**OFFLINE, "min_span_s": 1.0}), StageContext(str(run_dir), "person"))
    decided = apply_decision(strict, {**records["one"], **changes})
    assert decided["reason"] == reason, decided
    assert detail is None or detail in decided["detail"], decided["detail"]


def test_low_score_boxes_do_not_count_as_people():
    from humove.stages.person import PersonConfig, span_measures
    from humove.tracking.main_track import main_track

    rows = np.array([[f, 1, 100, 40, 170, 220, 0.9] for f in range(4)]
                    + [[f, 2, 10, 40, 80, 220, 0.2] for f in range(4)], np.float32)  # a doubtful look-alike
    main = main_track(rows, 1, 4, [0, 1, 2, 3])
    picture = np.array([0, 0, WIDTH, HEIGHT], np.float32)
    doubtful = span_measures(rows, main, 0, 4, [0, 1, 2, 3], picture, PersonConfig(count_min_score=0.4))
    assert doubtful["person_people_max"] == 1 and doubtful["person_second_ratio"] == 0.0
    counted = span_measures(rows, main, 0, 4, [0, 1, 2, 3], picture, PersonConfig(count_min_score=0.1))
    assert counted["person_people_max"] == 2 and counted["person_second_ratio"] == pytest.approx(1.0)
    assert counted["person_near_fraction"] == 1.0  # 20 px apart, feet on the same line


def test_box_stability_does_not_depend_on_speed_or_frame_rate():
    from humove.stages.person import box_stability

    steps = np.arange(12, dtype=np.float32)[:, None]
    slow = np.array([[100, 40, 160, 220]], np.float32) + steps * [4, 0, 4, 0]
    fast = np.array([[100, 40, 160, 220]], np.float32) + steps * [12, 0, 12, 0]  # the same walk at a third the rate
    assert box_stability(slow) == pytest.approx(1.0) and box_stability(fast) == pytest.approx(1.0)
    jumping = slow + (steps % 2) * [40, 0, 40, 0]
    assert box_stability(jumping) < 0.5


# Why a person is seen only briefly, on rendered frames with known boxes --------------------------------------

class FakePersonDetector:
    """A fake, named so: gives the boxes a test decided per frame (rendered people's true extents), so the stage's
    tracking, spans and decisions run on known detections."""

    name, model, model_sha256, count_reliable = "fake-detector", "fake", "", True

    def __init__(self, boxes_per_frame: list[np.ndarray]):
        self.boxes_per_frame = boxes_per_frame

    def detect(self, frames):
        from humove.detection.base import FrameDetections

        assert len(frames) == len(self.boxes_per_frame)
        return [FrameDetections(np.asarray(b, np.float32).reshape(-1, 4), np.full(len(b), 0.9, np.float32))
                for b in self.boxes_per_frame]


def rendered_shot(shot, fps: int = FPS):
    """Frames of a shot (list of (H, W, 3)) and each person's true box per frame (P, F, 4)."""
    from humove import samples

    plan = samples._shot_motion(shot, fps)
    frames = [image for image, _ in samples._shot_frames(plan, fps)]
    boxes = []
    for vertices in plan.vertices:
        xy = plan.camera.project(vertices)
        boxes.append(np.concatenate([xy.min(axis=1), xy.max(axis=1)], axis=1))
    return frames, np.clip(np.array(boxes).reshape(-1, len(frames), 4), 0, [WIDTH, HEIGHT, WIDTH, HEIGHT])


def decide_on(tmp_path, name: str, frames, boxes_per_frame, **config) -> dict:
    from humove.stages.person import PersonConfig, PersonStage, make_tracker

    path = str(tmp_path / f"{name}.mp4")
    write_mp4(path, frames, fps=FPS)
    info = probe(path)
    row = {"clip_id": name, "input_id": name, "clip_path": path, "clip_sha256": "", "clip_bytes": info.size_bytes,
           "clip_fps": info.fps, "clip_num_frames": info.num_frames, "clip_width": info.width,
           "clip_height": info.height, "start_s": 0.0, "end_s": info.duration_s}
    stage = PersonStage(PersonConfig(**{**OFFLINE, "detect_every": 1, "min_span_s": 1.0, **config}),
                        StageContext(str(tmp_path / "run"), "person"))
    stage.detector, stage.tracker = FakePersonDetector(boxes_per_frame), make_tracker(stage.config)
    return apply_decision(stage, stage.process(row))


@pytest.fixture(scope="module")
def still_person():
    """2 s of one person waving at 3.6 m, once in the open and once with a truck passing in front (fully hidden
    from 0.7 s to 1.3 s): frames of both and the person's true boxes."""
    from humove.samples import Person, Shot

    person = (Person("wave", (0.0, 3.6), clothing=2),)
    open_frames, boxes = rendered_shot(Shot(2.0, 3, person))
    covered_frames, _ = rendered_shot(Shot(2.0, 3, person, occluded=(0.7, 1.3)))
    return open_frames, covered_frames, boxes[0]


def test_a_person_covered_by_a_passing_truck_is_occluded(still_person, tmp_path):
    _, covered, boxes = still_person
    lost = {f for f in range(len(boxes)) if 0.55 <= f / FPS < 1.45}  # the truck over them, partly or wholly
    record = decide_on(tmp_path, "covered", covered, [[] if f in lost else [boxes[f]] for f in range(len(boxes))])
    assert (record["status"], record["reason"]) == ("rejected", "occluded"), record["detail"]
    assert max(record["person_exit_changes"]) > 0.12


def test_a_detector_losing_a_person_still_in_view_is_unstable_not_occluded(still_person, tmp_path):
    """The same gaps with nothing in front of the person: the detector flickers (a drawn rabbit, a blurred
    figure); nothing occludes them."""
    still, _, boxes = still_person
    lost = {f for f in range(len(boxes)) if 0.55 <= f / FPS < 1.45}
    record = decide_on(tmp_path, "flicker", still, [[] if f in lost else [boxes[f]] for f in range(len(boxes))])
    assert (record["status"], record["reason"]) == ("rejected", "unstable_detection"), record["detail"]
    # What changes in the box window is the person's own waving arm (up to ~0.07 over 0.5 s anywhere in this
    # clip): a margin under the 0.12 (min_cover_change) from which something covered them.
    assert max(record["person_exit_changes"]) < 0.08


def test_a_hallucinated_box_on_an_empty_road_is_nobody(tmp_path):
    from humove.samples import Shot

    frames, _ = rendered_shot(Shot(1.5, 0, ()))
    blips = {3: [[200, 120, 220, 170]], 4: [[201, 120, 221, 170]], 15: [[60, 100, 75, 140]]}
    record = decide_on(tmp_path, "road", frames, [blips.get(f, []) for f in range(len(frames))])
    assert (record["status"], record["reason"]) == ("rejected", "no_person"), record["detail"]
    assert record["detail"].startswith("no_person: nothing persists")


def test_a_crowd_of_small_pedestrians_is_too_small_not_nobody(tmp_path):
    """People exist, all of them far away. (The offline detector finds no one that small; YOLO does.)"""
    from humove.samples import Person, Shot

    crowd = (Person("walk", (-3.0, 19.0), heading=1.4, clothing=0),
             Person("walk", (1.5, 20.0), heading=-1.4, clothing=1, phase=1.0),
             Person("walk", (-0.5, 21.0), heading=1.5, clothing=2, phase=2.0))
    frames, boxes = rendered_shot(Shot(1.5, 5, crowd))
    record = decide_on(tmp_path, "crowd", frames, [boxes[:, f] for f in range(len(frames))])
    assert (record["status"], record["reason"]) == ("rejected", "person_too_small"), record["detail"]
    assert record["person_people_max"] == 3
