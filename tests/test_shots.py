"""`shots`: cuts found where the generated video has them, clips written as constant-rate H.264, windows,
short-shot rejections, determinism."""

import hashlib
import os
from dataclasses import replace

import av
import cv2
import fsspec
import pytest
from fixtures_video import cut_video, records_table, write_cut_video, write_video  # noqa: F401 - cut_video: fixture
from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode

from humove import ids
from humove.schemas import shots as shots_schema
from humove.stage import StageContext
from humove.stages.ingest import IngestConfig, IngestStage
from humove.stages.shots import (
    ContentScorer,
    ShotsConfig,
    ShotsStage,
    join_spans,
    plan_pieces,
    score_span,
    stacked_frames,
)
from humove.video import KeyframeIndex, VideoError, iter_frames, keyframe_index, probe, scaled_size


def ingest_item(path: str, run_dir) -> dict:
    """The row the engine hands to `shots`: the ingest record's columns plus video_id and input_id."""
    stage = IngestStage(IngestConfig(source=path, min_side_px=16), StageContext(str(run_dir), "ingest"))
    record = stage.process(stage.list_inputs()[0])
    assert record["status"] == "ok", record
    fields = {k: v for k, v in record.items() if k not in ("id", "status", "backend")}
    return {**fields, "video_id": record["id"], "input_id": record["id"]}


def run_shots(path: str, run_dir, **config) -> list[dict]:
    stage = ShotsStage(ShotsConfig(**config), StageContext(str(run_dir), "shots"))
    return stage.process(ingest_item(path, run_dir))


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_cuts_trims_and_clip_files(cut_video, tmp_path):  # noqa: F811
    records = run_shots(cut_video, tmp_path / "run", fps=12, max_side_px=160, trim_frames=2, min_clip_s=1.0)
    spans = [(r["start_frame"], r["end_frame"]) for r in records]
    assert spans == [(0, 34), (38, 82), (86, 120)]  # cuts at 36 and 84, two frames trimmed on each side
    video_id = records[0]["video_id"]
    for index, record in enumerate(records):
        assert record["status"] == "ok"
        assert record["id"] == ids.clip_id(video_id, record["start_frame"], record["end_frame"])
        assert (record["shot_index"], record["window_index"]) == (index, 0)
        assert record["start_s"] == pytest.approx(record["start_frame"] / 24)
        assert record["end_s"] == pytest.approx(record["end_frame"] / 24)
        assert record["clip_path"] == str(tmp_path / "run" / "artifacts" / "shots" / f"{record['id']}.mp4")
        assert sha256(record["clip_path"]) == record["clip_sha256"]
        assert os.path.getsize(record["clip_path"]) == record["clip_bytes"]
        info = probe(record["clip_path"])
        assert info.fps == pytest.approx(12.0) and info.variable_fps is False and info.codec == "h264"
        assert info.num_frames == record["clip_num_frames"]
        assert record["clip_num_frames"] == round((record["end_s"] - record["start_s"]) * 12)
        assert (info.width, info.height) == (record["clip_width"], record["clip_height"]) == (160, 120)
        assert record["detector"].startswith("content(")
    records_table(shots_schema.SCHEMA, records)


def test_clip_content_comes_from_its_shot(cut_video, tmp_path):  # noqa: F811
    """Each clip's first frame looks like the source frame it starts at (not a neighbouring shot)."""
    records = run_shots(cut_video, tmp_path / "run", fps=None, max_side_px=320)
    source = {f.index: f.image for f in iter_frames(cut_video)}
    for record in records:
        clip_first = next(iter_frames(record["clip_path"])).image.astype(float)
        same = abs(clip_first - source[record["start_frame"]]).mean()
        other_shot = abs(clip_first - source[(record["start_frame"] + 60) % 120]).mean()
        assert same < 6 and other_shot > 4 * same


def test_same_input_gives_the_same_clips(cut_video, tmp_path):  # noqa: F811
    first = run_shots(cut_video, tmp_path / "a")
    second = run_shots(cut_video, tmp_path / "b")
    strip = lambda rs: [{k: v for k, v in r.items() if k != "clip_path"} for r in rs]
    assert strip(first) == strip(second)  # ids, spans and the clips' sha256


def test_long_shots_are_split_into_equal_windows(cut_video, tmp_path):  # noqa: F811
    records = run_shots(cut_video, tmp_path / "run", max_clip_s=0.8, min_clip_s=0.5)
    middle = [r for r in records if r["shot_index"] == 1]
    assert [(r["start_frame"], r["end_frame"], r["window_index"]) for r in middle] == \
        [(38, 53, 0), (53, 67, 1), (67, 82, 2)]
    assert all(r["status"] == "ok" and r["end_s"] - r["start_s"] <= 0.8 + 1e-9 for r in records)


def test_short_shots_are_rejected_with_their_length(cut_video, tmp_path):  # noqa: F811
    records = run_shots(cut_video, tmp_path / "run", min_clip_s=1.5)
    by_shot = {r["shot_index"]: r for r in records}
    assert by_shot[1]["status"] == "ok"
    for shot in (0, 2):
        rejected = by_shot[shot]
        assert (rejected["status"], rejected["reason"]) == ("rejected", "shot_too_short")
        assert rejected["value"] == pytest.approx(34 / 24)
        assert not os.path.exists(tmp_path / "run" / "artifacts" / "shots" / f"{rejected['id']}.mp4")
    records_table(shots_schema.SCHEMA, records)


def test_adaptive_detector_finds_the_same_cuts(cut_video, tmp_path):  # noqa: F811
    records = run_shots(cut_video, tmp_path / "run", detector="adaptive", trim_frames=0)
    assert [(r["start_frame"], r["end_frame"]) for r in records] == [(0, 36), (36, 84), (84, 120)]
    assert all(r["detector"].startswith("adaptive(") for r in records)


def test_rotated_source_gives_upright_clips(tmp_path):
    path = write_video(str(tmp_path / "rot.mp4"), frames=48, fps=24, width=64, height=48, rotation=90)
    (record,) = run_shots(path, tmp_path / "run", min_clip_s=0.5)
    assert (record["clip_width"], record["clip_height"]) == (48, 64)
    assert probe(record["clip_path"]).rotation == 0


@pytest.mark.parametrize(("fps", "expected_fps"), [(10, 10.0), (None, 25.0)])
def test_variable_rate_source_is_resampled_to_a_constant_rate(tmp_path, fps, expected_fps):
    steps = [20, 60] * 20  # 40 frames, alternating 20 ms and 60 ms apart: 25 fps on average
    stamps = [sum(steps[:i]) for i in range(40)]
    path = write_video(str(tmp_path / "vfr.mp4"), frames=40, timestamps_ms=stamps)
    (record,) = run_shots(path, tmp_path / "run", fps=fps, min_clip_s=0.5)
    info = probe(record["clip_path"])
    assert info.variable_fps is False and info.fps == pytest.approx(expected_fps)
    assert record["clip_fps"] == pytest.approx(expected_fps)
    assert record["clip_num_frames"] == round((record["end_s"] - record["start_s"]) * expected_fps)


def test_plan_pieces_trims_only_at_cuts():
    config = ShotsConfig(trim_frames=3, max_clip_s=100.0)
    pieces = plan_pieces([10, 25], num_frames=40, fps=10.0, config=config)
    assert [(p.start, p.end) for p in pieces] == [(0, 7), (13, 22), (28, 40)]
    assert [p.shot_index for p in pieces] == [0, 1, 2]
    # A shot too short to trim is kept whole (and later rejected as too short), never inverted.
    (tiny, *_) = plan_pieces([2], num_frames=40, fps=10.0, config=config)
    assert (tiny.start, tiny.end) == (0, 2)


def test_clips_go_to_an_object_store_run_dir(cut_video, tmp_path):  # noqa: F811
    """A remote run dir (fsspec in-memory here, s3:// / gs:// in production): clips are uploaded whole."""
    run_dir = f"memory://run-{tmp_path.name}"
    local = run_shots(cut_video, tmp_path / "local")
    remote = run_shots(cut_video, run_dir)
    memory = fsspec.filesystem("memory")
    assert [r["clip_path"] for r in remote] == [f"{run_dir}/artifacts/shots/{r['id']}.mp4" for r in local]
    for record in remote:
        data = memory.cat_file(record["clip_path"])
        assert hashlib.sha256(data).hexdigest() == record["clip_sha256"]
        assert len(data) == record["clip_bytes"]
    assert [r["clip_sha256"] for r in remote] == [r["clip_sha256"] for r in local]


def test_remote_source_is_copied_to_scratch_without_clashing_with_clips(cut_video, tmp_path):  # noqa: F811
    """A source in an object store is decoded from a local copy (Storage.local_copy); named `0.mp4`, the copy
    must not be overwritten by the first clip written to scratch (`<start frame>.mp4`)."""
    memory = fsspec.filesystem("memory")
    url = f"memory://sources-{tmp_path.name}/0.mp4"
    memory.put_file(cut_video, url)
    local = run_shots(cut_video, tmp_path / "local")
    item = {**ingest_item(cut_video, tmp_path / "local"), "source_path": url}
    remote = ShotsStage(ShotsConfig(), StageContext(str(tmp_path / "remote"), "shots")).process(item)
    assert [r["clip_sha256"] for r in remote] == [r["clip_sha256"] for r in local]


def test_min_clip_s_is_computed_not_a_decision():
    """Pieces shorter than min_clip_s are never encoded: changing it must re-run the stage."""
    config = ShotsConfig(min_clip_s=2.0)
    assert "min_clip_s" in config.fingerprint_dict() and "min_clip_s" not in config.decision_dict()
    assert ShotsConfig(min_clip_s=2.0).fingerprint_dict() != ShotsConfig(min_clip_s=1.0).fingerprint_dict()


def stock_scores_and_cuts(path: str, detector, max_side: int = 256) -> tuple[list[float], list[int]]:
    """PySceneDetect's own detector fed every frame as BGR, from the planes scaled as the stage scales them."""
    scores, cuts, count = [], [], 0
    for frame in iter_frames(path, max_side=max_side, pixel_format="i420"):
        found = detector.process_frame(FrameTimecode(frame.index, 24.0),
                                       cv2.cvtColor(frame.image, cv2.COLOR_YUV2BGR_I420))
        scores.append(detector._frame_score)
        cuts += [c.frame_num for c in found]
        count += 1
    cuts += [c.frame_num for c in detector.post_process(FrameTimecode(count - 1, 24.0))]
    return scores, sorted({c for c in cuts if 0 < c < count})


@pytest.mark.parametrize("capacity", [1, 7, 16])
def test_batched_scores_are_pyscenedetects_to_the_last_bit(cut_video, capacity):  # noqa: F811
    """Whatever the batch size (batches crossing the cuts, a partial last batch): the same float values."""
    expected, _ = stock_scores_and_cuts(cut_video, ContentDetector())
    scorer, scores, given = None, [], ShotsStage(ShotsConfig(), StageContext("unused", "shots"))._make_detector()
    for stack in stacked_frames(cut_video, 256, capacity):
        scorer = scorer or ContentScorer(stack.width, stack.height, capacity)
        for components in scorer.score(stack):
            scores.append(given._calculate_frame_score(None, components))
    assert len(scores) == 120 and scores == expected
    assert max(scores) > 27.0  # the cuts are in there


@pytest.fixture(scope="module")
def many_shots_video(tmp_path_factory) -> str:
    """144 frames at 24 fps, shots of 12, 6, 24, 12, 24, 36, 6 and 24 frames (rendered once for the module)."""
    path = tmp_path_factory.mktemp("many") / "many.mp4"
    return write_cut_video(str(path), shots=(0.5, 0.25, 1.0, 0.5, 1.0, 1.5, 0.25, 1.0))


@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_detection_finds_the_stock_detectors_cuts(many_shots_video, tmp_path, detector):
    """Many shots, some shorter than min_scene_len (the flash filter merges those): the same cut frames."""
    path = many_shots_video
    config = ShotsConfig(detector=detector, min_scene_len=10)
    stage = ShotsStage(config, StageContext(str(tmp_path / "run"), "shots"))
    stock = (AdaptiveDetector(adaptive_threshold=config.adaptive_threshold, min_scene_len=config.min_scene_len,
                              window_width=config.window_width, min_content_val=config.min_content_val)
             if detector == "adaptive" else ContentDetector(threshold=config.threshold, min_scene_len=10))
    _, expected = stock_scores_and_cuts(path, stock)
    cuts, times = stage._detect(path, 24.0)
    assert len(times) == 144 and cuts == expected and len(cuts) >= 4


def test_spans_decoded_side_by_side_give_one_decoders_times_and_scores(many_shots_video, tmp_path):
    """The video is cut at keyframes (here at frame 78 of 144) into spans decoded side by side; joined, their
    frame times and score components are exactly what one decoder reading in order gives."""
    index = keyframe_index(many_shots_video)
    assert len(index.spans(2, 48)) == 2  # the detection below really runs in two spans
    stage = ShotsStage(ShotsConfig(), StageContext(str(tmp_path / "run"), "shots"))
    by_span = stage._scores_by_span(many_shots_video)
    in_order = stage._scores_in_order(many_shots_video)
    assert by_span is not None and len(by_span[0]) == 144
    assert by_span == in_order
    one_decoder = ShotsStage(ShotsConfig(detect_spans=1), StageContext(str(tmp_path / "run"), "shots"))
    assert one_decoder._scores_by_span(many_shots_video) is None
    assert one_decoder._detect(many_shots_video, 24.0) == stage._detect(many_shots_video, 24.0)
    assert ShotsConfig(detect_spans=1).fingerprint_dict() == ShotsConfig(detect_spans=4).fingerprint_dict()


def test_spans_that_do_not_join_exactly_are_refused(many_shots_video):
    """A junction frame decoded differently on its two sides, a frame lost after a seek, or a span that does
    not end on the next one's first frame: `join_spans` gives None and detection decodes in order instead."""
    index = keyframe_index(many_shots_video)
    spans = index.spans(2, 48)
    size = scaled_size(index.width, index.height, 256, even=True)
    scored = [score_span(many_shots_video, size, *span) for span in spans]
    assert join_spans(scored, spans, index.frame_pts) is not None
    first, second = scored
    tampered = [
        [first, replace(second, first=second.first[:-1] + bytes([second.first[-1] ^ 1]))],  # one pixel differs
        [first, replace(second, pts=second.pts[:5] + second.pts[6:])],                    # a frame lost
        [replace(first, pts=first.pts[:-1]), second],                                      # ends a frame early
        [first, replace(second, pts=second.pts[::-1])],                                    # out of order
    ]
    for spans_scored in tampered:
        assert join_spans(spans_scored, spans, index.frame_pts) is None


def test_keyframe_spans_are_about_equal_and_never_too_short():
    frames = list(range(0, 3000, 10))  # 300 frames, pts 0, 10, 20, ...
    index = KeyframeIndex(frames, [0, 1000, 1500, 2900], 64, 48)
    assert index.spans(2, 48) == [(None, 1500), (1500, None)]
    assert index.spans(3, 48) == [(None, 1000), (1000, 1500), (1500, None)]
    assert index.spans(3, 60) == [(None, 1000), (1000, None)]  # 1000-1500 would be 50 frames
    assert index.spans(1, 48) == [(None, None)]
    assert KeyframeIndex(frames, [0], 64, 48).spans(4, 48) == [(None, None)]  # one GOP: decoded in order
    assert KeyframeIndex(frames, [0, 2900], 64, 48).spans(2, 48) == [(None, None)]  # 10 frames after it


def test_writing_pass_refuses_frames_detection_timed_differently(cut_video, tmp_path):  # noqa: F811
    """If the writing pass decodes a frame at another time than detection did (a stream that decodes
    differently twice), no clip is written from it: a decode_failed error names the frame."""
    stage = ShotsStage(ShotsConfig(), StageContext(str(tmp_path / "run"), "shots"))
    item = ingest_item(cut_video, tmp_path / "run")
    _, times = stage._detect(cut_video, 24.0)
    shifted = times[:50] + [t + 0.5 for t in times[50:]]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(VideoError, match="frame 50 decodes at"):
        stage._write_clips(cut_video, item["video_id"], plan_pieces([], 120, 24.0, stage.config), shifted, item,
                           str(scratch))


def reencode(source: str, path: str, x264_params: str) -> str:
    """`source`'s frames encoded again with libx264 and the given `x264-params` (GOP structure)."""
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"x264-params": x264_params}
        for frame in iter_frames(source):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame.image, format="rgb24")))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize(("x264_params", "spans"), [
    ("open-gop=1:keyint=48:bframes=3:ref=4", 2),  # leading B-frames after each keyframe reference the GOP before
    ("keyint=1000:scenecut=0", 1),                # one keyframe: nothing to split at, decoded in order
])
def test_gop_structures_give_the_stock_detectors_cuts(many_shots_video, tmp_path, x264_params, spans):
    path = reencode(many_shots_video, str(tmp_path / "gop.mp4"), x264_params)
    assert len(keyframe_index(path).spans(2, 48)) == spans
    stage = ShotsStage(ShotsConfig(min_scene_len=10), StageContext(str(tmp_path / "run"), "shots"))
    if spans > 1:
        assert stage._scores_by_span(path) == stage._scores_in_order(path)
    _, expected = stock_scores_and_cuts(path, ContentDetector(threshold=27.0, min_scene_len=10))
    cuts, times = stage._detect(path, 24.0)
    assert len(times) == 144 and cuts == expected and len(cuts) >= 4
