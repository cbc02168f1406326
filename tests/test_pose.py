"""The `pose` stage: DWPose's real ONNX code path on a tiny model with its input/output names and shapes (built
here with onnx.helper), the offline mediapipe → COCO-17 backend on rendered clips, decisions and errors."""

import numpy as np
import pytest
from test_person import OFFLINE, clip_row, run_stage

from bench.random_models import dwpose, save_dwpose_graph
from humove.keypoints.base import COCO_WHOLEBODY_NAMES, MEDIAPIPE_POSE_NAMES
from humove.keypoints.coco import COCO17_NAMES, MEDIAPIPE_TO_COCO17
from humove.stage import StageContext
from humove.worker import apply_decision

PEAK_X, PEAK_Y, PEAK_SCORE = 144, 192, 0.9  # crop pixels (the model input's centre) and the peak value


def tiny_dwpose(path: str) -> str:
    """An ONNX file shaped like dw-ll_ucoco_384.onnx: input `input` (1, 3, 384, 288), outputs `simcc_x`
    (1, 133, 576) and `simcc_y` (1, 133, 768). A fake, named so: its SimCC maps are constant with one peak per
    keypoint at the crop centre (plus 0 × the input's mean, so the output depends on the graph's input)."""
    from onnx import helper, numpy_helper

    simcc_x = np.zeros((1, 133, 576), np.float32)
    simcc_y = np.zeros((1, 133, 768), np.float32)
    simcc_x[..., 2 * PEAK_X] = PEAK_SCORE
    simcc_y[..., 2 * PEAK_Y] = PEAK_SCORE
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["peaks_x", "nothing"], ["simcc_x"]),
        helper.make_node("Add", ["peaks_y", "nothing"], ["simcc_y"]),
    ]
    inits = [numpy_helper.from_array(simcc_x, "peaks_x"), numpy_helper.from_array(simcc_y, "peaks_y"),
             numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    return save_dwpose_graph(nodes, inits, path, "fake-dwpose")


def test_mediapipe_to_coco17_mapping_keeps_the_anatomy():
    assert len(COCO17_NAMES) == 17 and COCO17_NAMES == COCO_WHOLEBODY_NAMES[:17]
    assert [MEDIAPIPE_POSE_NAMES[i] for i in MEDIAPIPE_TO_COCO17] == list(COCO17_NAMES)


def test_dwpose_decodes_simcc_back_to_frame_pixels(tmp_path):
    from humove.keypoints.dwpose import DWPoseOnnx

    model = DWPoseOnnx(tiny_dwpose(str(tmp_path / "dw-ll_ucoco_384.onnx")))
    frames = np.zeros((3, 240, 320, 3), np.uint8)
    boxes = np.array([[100, 40, 160, 220], [0, 0, 50, 50], [np.nan] * 4], np.float32)
    crops = model.prepare(frames, boxes, np.array([True, True, True]))
    assert crops.images.shape == (3, 3, 384, 288) and crops.valid.tolist() == [True, True, False]
    (xy, scores), = model.infer([crops])
    assert xy.shape == (3, 133, 2) and scores.shape == (3, 133)
    np.testing.assert_allclose(xy[0, 0], [130, 130], atol=0.5)  # the crop centre is the box centre
    np.testing.assert_allclose(xy[1, 5], [25, 25], atol=0.5)
    assert np.isnan(xy[2]).all() and (scores[2] == 0).all()
    np.testing.assert_allclose(scores[:2], PEAK_SCORE)


def test_dwpose_on_a_cuda_provider_that_does_not_run_is_an_error(tmp_path, monkeypatch):
    import onnxruntime as ort

    from humove.devices import DeviceUnavailableError
    from humove.keypoints.dwpose import DWPoseOnnx

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider: the test needs a CPU-only one")
    weights = tiny_dwpose(str(tmp_path / "dw-ll_ucoco_384.onnx"))
    refused = r"pose \(DWPose\): device 'cuda' requested, .* model on \['CPUExecutionProvider'\].*onnxruntime-gpu"
    with pytest.raises(DeviceUnavailableError, match=refused):
        DWPoseOnnx(weights, device="cuda")
    # onnxruntime-gpu whose CUDA libraries fail to load lists the provider, then runs the session on the CPU
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(DeviceUnavailableError, match=r"device 'cuda:0' requested.*available: \['CUDAExecution"):
        DWPoseOnnx(weights, device="cuda:0")
    assert DWPoseOnnx(weights, device="cpu").name.endswith("(CPUExecutionProvider)")


def test_random_dwpose_has_the_release_interface_and_answers_to_the_image(tmp_path):
    """`bench.random_models.dwpose`, the production pipeline test's stand-in: the release's names and shapes, and
    keypoints that move with the image (random convolutions, not constants)."""
    from humove.keypoints.dwpose import DWPoseOnnx

    model = DWPoseOnnx(dwpose(tmp_path / "dw-ll_ucoco_384.onnx"))
    assert (model.fixed_batch, model.input_size, model.output_names) == (1, (288, 384), ["simcc_x", "simcc_y"])
    frames = np.random.default_rng(0).integers(0, 256, (2, 240, 320, 3), dtype=np.uint8)
    boxes = np.array([[100, 40, 160, 220]] * 2, np.float32)
    (xy, scores), = model.infer([model.prepare(frames, boxes, np.array([True, True]))])
    assert xy.shape == (2, 133, 2) and np.isfinite(xy).all() and ((scores > 0) & (scores < 1)).all()
    assert (xy[0] != xy[1]).any() and (scores[0] != scores[1]).any()


@pytest.fixture(scope="module")
def person_rows(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pose")
    shots = [clip_row(tmp, "one", 8), clip_row(tmp, "closeup", 8), clip_row(tmp, "hidden", 32)]
    person = run_stage("person", OFFLINE, tmp / "run", shots)
    rows = [{**row, **{k: v for k, v in person[row["clip_id"]].items() if k.startswith("person_")}} for row in shots]
    return rows, tmp


def test_dwpose_stage_runs_the_real_code_path_and_stores_aligned_keypoints(person_rows):
    rows, tmp = person_rows
    weights = tiny_dwpose(str(tmp / "dw-ll_ucoco_384.onnx"))
    records = run_stage("pose", {"backend": "dwpose", "weights": weights}, tmp / "run-dw", rows)
    one, hidden = records["one"], records["hidden"]
    assert one["status"] == "ok", one
    assert one["pose_layout"] == "coco_wholebody133" and one["pose_model"] == "dw-ll_ucoco_384.onnx"
    assert one["backend"].startswith("onnxruntime-") and len(one["pose_model_sha256"]) == 64
    assert one["pose_visible_mean"] == 17.0 and one["pose_in_box_fraction"] == 1.0
    with np.load(one["pose_keypoints_path"]) as art, np.load(rows[0]["person_boxes_path"]) as boxes:
        assert art["keypoints"].shape == (8, 133, 2) and str(art["layout"]) == "coco_wholebody133"
        centre = (boxes["main_box"][:, :2] + boxes["main_box"][:, 2:]) / 2
        np.testing.assert_allclose(art["keypoints"][:, 0], centre, atol=1.0)
        assert art["visible"].all()
    assert hidden["pose_num_frames"] == 16  # the person stage's trimmed span, read through current_clip


def test_offline_pose_keeps_a_full_body_and_refuses_a_close_up(person_rows):
    rows, tmp = person_rows
    records = run_stage("pose", {"backend": "mediapipe"}, tmp / "run-mp", rows)
    one, closeup = records["one"], records["closeup"]
    assert one["status"] == "ok", one
    assert one["pose_layout"] == "coco17" and one["pose_full_body_fraction"] == 1.0
    assert len(one["pose_joint_visibility"]) == 17
    assert closeup["status"] == "rejected" and closeup["reason"] == "close_up", closeup
    assert "knees, ankles cut by the frame" in closeup["detail"], closeup["detail"]
    with np.load(one["pose_keypoints_path"]) as art:
        assert art["keypoints"].shape == (8, 17, 2) and art["scores"].shape == (8, 17)
        ankles_y, shoulders_y = art["keypoints"][:, 15:17, 1].mean(), art["keypoints"][:, 5:7, 1].mean()
        assert ankles_y - shoulders_y > 100  # a 180-px upright figure: ankles far below shoulders

    from humove.stages.pose import PoseConfig, PoseStage

    strict = PoseStage(PoseConfig(backend="mediapipe", min_visible_keypoints=18), StageContext(str(tmp), "pose"))
    assert apply_decision(strict, one)["reason"] == "few_visible_keypoints"  # re-decided without recompute


def test_pose_errors_name_the_clip_and_the_missing_file(person_rows, tmp_path):
    rows, _ = person_rows
    from humove.keypoints.dwpose import DWPoseOnnx

    with pytest.raises(FileNotFoundError, match=r"dw-ll_ucoco_384\.onnx.*DWPose"):
        DWPoseOnnx(str(tmp_path / "dw-ll_ucoco_384.onnx"))
    without_person = {k: v for k, v in rows[0].items() if not k.startswith("person_")}
    record = run_stage("pose", {"backend": "mediapipe"}, tmp_path / "run", [without_person])["one"]
    assert record["status"] == "error" and "person_boxes_path" in record["error_message"]


CUT, HIDDEN = "cut", "hidden"


def parts(*states) -> dict:
    """Part measures for head, shoulders, hips, knees, ankles: 1 = seen in every frame, CUT = cut by the frame,
    HIDDEN = hidden inside the picture."""
    seen = [1.0 if s == 1 else 0.0 for s in states]
    cut = [1.0 if s == CUT else 0.0 for s in states]
    return {"pose_part_seen": seen, "pose_part_cut": cut, "pose_full_body_fraction": float(min(seen))}


@pytest.mark.parametrize("changes, reason, detail", [
    ({"pose_score_mean": 0.3, "pose_in_box_fraction": 0.5}, "implausible_pose", "mean keypoint score 0.30"),
    ({"pose_score_mean": 0.3}, None, None),          # unsure keypoints on the body: no reason alone
    ({"pose_visible_mean": 6.0}, "few_visible_keypoints", "6.0 of 17 body keypoints visible per frame (needs ≥ 10)"),
    (parts(0, 0, 0, 0, 0), "few_visible_keypoints", None),                  # no part seen: nothing to judge
    (parts(1, 1, CUT, CUT, CUT), "close_up", "2 of 5 body parts in frame (hips, knees, ankles cut by the frame"),
    ({**parts(1, 1, 1, CUT, CUT), "pose_visible_mean": 8.0}, "close_up", "3 of 5"),  # few keypoints: a close-up
    (parts(CUT, CUT, 1, 1, 1), "legs_only", "head, shoulders cut by the frame"),
    (parts(CUT, CUT, CUT, 1, 1), "legs_only", None),
    (parts(1, 1, 1, 1, CUT), "truncated", "ankles cut by the frame"),        # feet below the bottom edge
    (parts(CUT, 1, 1, 1, 1), "truncated", "head cut by the frame"),
    (parts(1, 1, 1, HIDDEN, HIDDEN), "occluded", "knees, ankles hidden inside the picture"),  # behind a car
    ({"pose_outside_fraction": 0.7}, "truncated", "body points outside the picture in 70% of frames"),  # a side
    ({"pose_full_body_fraction": 0.3}, "not_full_body", "all five body parts seen at once in 30% of frames"),
])
def test_pose_decisions_combine_signals(person_rows, changes, reason, detail):
    from humove.stages.pose import PoseConfig, PoseStage

    rows, tmp = person_rows
    record = run_stage("pose", {"backend": "mediapipe"}, tmp / "run-decide", rows[:1])["one"]
    stage = PoseStage(PoseConfig(backend="mediapipe"), StageContext(str(tmp), "pose"))
    decided = apply_decision(stage, {**record, **changes})
    assert decided["reason"] == reason, decided["detail"]
    assert detail is None or detail in decided["detail"], decided["detail"]
