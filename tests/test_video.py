"""humove.video (probe, frame reader, MP4 writer) and humove.samples (generated demo videos)."""

import hashlib
import threading

import av
import cv2
import numpy as np
import pytest
from fixtures_video import (
    gradient_frames,
    write_absurd_header,
    write_audio_only,
    write_empty,
    write_text,
    write_truncated,
    write_video,
    write_without_index,
)

from humove.samples import DEMO_SPECS, write_demo_videos
from humove.video import (
    Mp4Writer,
    VideoError,
    decode_frames,
    frame_to_i420,
    iter_frames,
    probe,
    read_ahead,
    scaled_size,
    shrink_plane,
    write_mp4,
)


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_probe_measures_a_plain_video(tmp_path):
    path = write_video(str(tmp_path / "plain.mp4"), frames=30, fps=30, width=64, height=48)
    info = probe(path)
    assert (info.width, info.height, info.num_frames, info.rotation) == (64, 48, 30, 0)
    assert info.fps == pytest.approx(30.0)
    assert info.duration_s == pytest.approx(1.0, abs=0.05)
    assert info.codec == "h264"
    assert info.variable_fps is False and info.has_audio is False
    assert info.size_bytes == (tmp_path / "plain.mp4").stat().st_size


def test_probe_sees_audio(tmp_path):
    assert probe(write_video(str(tmp_path / "a.mp4"), audio=True)).has_audio is True


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_is_read_and_frames_come_upright(tmp_path, rotation):
    path = write_video(str(tmp_path / "rot.mp4"), width=64, height=48, rotation=rotation)
    info = probe(path)
    assert info.rotation == rotation % 360
    upright = (48, 64) if rotation % 180 else (64, 48)
    assert (info.width, info.height) == upright

    frame = next(iter_frames(path, rotation=info.rotation))
    assert frame.image.shape == (upright[1], upright[0], 3)
    # The stored frames' red channel grows left to right; turning counter-clockwise by 90 puts the right
    # edge on top, by 180 on the left, by 270 at the bottom.
    red = frame.image[:, :, 0].astype(float)
    if info.rotation == 90:
        assert red[0].mean() > red[-1].mean() + 100
    elif info.rotation == 270:
        assert red[-1].mean() > red[0].mean() + 100
    else:
        assert red[:, 0].mean() > red[:, -1].mean() + 100


def test_variable_frame_rate_is_detected(tmp_path):
    vfr = write_video(str(tmp_path / "vfr.mp4"), frames=8,
                      timestamps_ms=[0, 33, 66, 150, 180, 250, 400, 433])
    cfr = write_video(str(tmp_path / "cfr.mp4"), frames=8)
    assert probe(vfr).variable_fps is True
    assert probe(vfr).num_frames == 8
    assert probe(cfr).variable_fps is False
    times = [f.time_s for f in iter_frames(vfr)]
    assert times == pytest.approx([0, 0.033, 0.066, 0.150, 0.180, 0.250, 0.400, 0.433], abs=1e-3)


@pytest.mark.parametrize(
    ("builder", "reason"),
    [
        (write_empty, "empty"),
        (write_text, "unreadable"),
        (write_truncated, "truncated"),
        (write_without_index, "unreadable"),
        (write_audio_only, "no_video_stream"),
        (write_absurd_header, "absurd_dimensions"),
    ],
)
def test_bad_files_raise_a_named_reason(tmp_path, builder, reason):
    path = builder(str(tmp_path / f"bad-{reason}.mp4"))
    with pytest.raises(VideoError) as caught:
        probe(path)
    assert caught.value.reason == reason
    assert path in caught.value.detail


def test_missing_file(tmp_path):
    with pytest.raises(VideoError) as caught:
        probe(str(tmp_path / "nope.mp4"))
    assert caught.value.reason == "missing_file"


def test_scaled_size_caps_the_longer_side_and_keeps_even_sides():
    assert scaled_size(1920, 1080, 512, even=True) == (512, 288)
    assert scaled_size(1080, 1920, 512, even=True) == (288, 512)
    assert scaled_size(320, 240, 512) == (320, 240)  # never enlarged
    w, h = scaled_size(333, 201, 100, even=True)
    assert w % 2 == 0 and h % 2 == 0 and max(w, h) <= 100


def test_iter_frames_downscales_and_selects_a_range(tmp_path):
    path = write_video(str(tmp_path / "v.mp4"), frames=20, width=160, height=120)
    frames = list(iter_frames(path, max_side=40, start_frame=5, end_frame=12, pixel_format="bgr24"))
    assert [f.index for f in frames] == list(range(5, 12))
    assert frames[0].image.shape == (30, 40, 3) and frames[0].image.dtype == np.uint8
    assert frames[0].time_s == pytest.approx(5 / 30)


def test_writer_is_constant_rate_even_sized_and_deterministic(tmp_path):
    frames = list(gradient_frames(25, 161, 121))  # odd sides on purpose
    first = write_mp4(str(tmp_path / "a.mp4"), frames, fps=16, max_side=100)
    second = write_mp4(str(tmp_path / "b.mp4"), frames, fps=16, max_side=100)
    assert first == second == (25, 100, 76)
    assert sha256(tmp_path / "a.mp4") == sha256(tmp_path / "b.mp4")
    info = probe(str(tmp_path / "a.mp4"))
    assert (info.width, info.height, info.num_frames, info.codec) == (100, 76, 25, "h264")
    assert info.fps == pytest.approx(16.0) and info.variable_fps is False
    decoded = next(iter_frames(str(tmp_path / "a.mp4")))
    assert decoded.image.shape == (76, 100, 3)


def test_writer_rejects_odd_sizes_and_empty_input(tmp_path):
    with pytest.raises(ValueError, match="even"):
        Mp4Writer(str(tmp_path / "x.mp4"), 24, 101, 50)
    with pytest.raises(ValueError, match="no frames"):
        write_mp4(str(tmp_path / "y.mp4"), [], fps=24)


def test_demo_videos_are_deterministic_and_probe_as_specified(tmp_path):
    first = write_demo_videos(str(tmp_path / "one"))
    second = write_demo_videos(str(tmp_path / "two"))
    assert len(first) == len(DEMO_SPECS)
    assert [sha256(a) for a in first] == [sha256(b) for b in second]
    by_name = {spec.name: spec for spec in DEMO_SPECS}
    for path in first:
        spec = by_name[path.rsplit("/", 1)[1]]
        info = probe(path)
        assert info.fps == pytest.approx(spec.fps)
        assert info.num_frames == sum(round(s.seconds * spec.fps) for s in spec.shots)
        assert (info.width, info.height) == (320, 240)
    # Idempotent: a second call on the same folder keeps the files.
    mtimes = [(tmp_path / "one" / p.rsplit("/", 1)[1]).stat().st_mtime_ns for p in first]
    assert write_demo_videos(str(tmp_path / "one")) == first
    assert [(tmp_path / "one" / p.rsplit("/", 1)[1]).stat().st_mtime_ns for p in first] == mtimes


def test_shrink_plane_box_averages_integer_factors_then_interpolates():
    plane = np.arange(8 * 12, dtype=np.uint8).reshape(8, 12)
    halved = shrink_plane(plane, 6, 4)
    expected = plane.reshape(4, 2, 6, 2).astype(float).mean(axis=(1, 3))
    assert np.abs(halved.astype(float) - expected).max() <= 0.5  # a 2x2 box average, rounded
    assert shrink_plane(plane, 5, 3).shape == (3, 5)  # factor 2 first, then bilinear for the rest
    assert shrink_plane(plane, 12, 8) is plane


def test_shrink_plane_halves_repeatedly_for_large_factors_without_aliasing():
    """Factors of 4 and more: 2x2 box halvings (the fast path), then bilinear for the rest. A smooth ramp
    keeps its values; a one-pixel checkerboard, which a plain bilinear shrink turns into stripes, becomes
    an even grey."""
    ramp = np.tile(np.arange(0, 240, 2.5).astype(np.uint8), (96, 1))  # (96, 96), 0 .. 237 left to right
    quarter = shrink_plane(ramp, 24, 24)
    expected = ramp.reshape(24, 4, 24, 4).astype(float).mean(axis=(1, 3))
    assert np.abs(quarter.astype(float) - expected).max() <= 1.0  # two rounded halvings = one 4x4 box
    checker = (np.indices((96, 96)).sum(axis=0) % 2 * 255).astype(np.uint8)
    for size in (24, 16, 10):  # 4x; 6x (two halvings, then 1.5x bilinear); 9.6x
        grey = shrink_plane(checker, size, size).astype(float)
        assert grey.shape == (size, size) and abs(grey.mean() - 127.5) <= 1.0 and grey.std() < 1.0
    plain = cv2.resize(checker, (10, 10), interpolation=cv2.INTER_LINEAR).astype(float)
    assert plain.std() > 30  # what the halvings avoid


@pytest.mark.parametrize(("width", "height"), [(6, 4), (5, 3), (12, 8), (4, 2), (3, 2), (2, 1)])
def test_shrink_plane_writes_into_a_view_the_same_pixels(width, height):
    plane = np.random.default_rng(0).integers(0, 256, (8, 12), dtype=np.uint8)
    stack = np.zeros((3, height, width), np.uint8)
    slot = stack[1]
    assert shrink_plane(plane, width, height, out=slot) is slot
    assert np.array_equal(stack[1], shrink_plane(plane, width, height))
    assert not stack[0].any() and not stack[2].any()  # neighbouring slots untouched


def test_decode_frames_gives_the_decoders_frames_with_index_and_time(tmp_path):
    path = write_video(str(tmp_path / "v.mp4"), frames=10, fps=25, width=64, height=48)
    decoded = list(decode_frames(path, start_frame=3, end_frame=7))
    assert [index for index, _, _ in decoded] == [3, 4, 5, 6]
    assert [time_s for _, time_s, _ in decoded] == pytest.approx([0.12, 0.16, 0.2, 0.24])
    assert all(isinstance(frame, av.VideoFrame) and frame.width == 64 for _, _, frame in decoded)


def test_read_ahead_keeps_order_and_reraises_at_the_failing_item():
    def items():
        yield from range(5)
        raise VideoError("decode_failed", "broken after 4")

    seen = []
    with pytest.raises(VideoError, match="broken after 4"):
        for item in read_ahead(items(), depth=2):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]


def test_read_ahead_stopped_early_stops_its_thread_and_closes_the_source():
    closed = []

    def items():
        try:
            yield from range(1000)
        finally:
            closed.append(True)

    reader = read_ahead(items(), depth=3)
    assert [next(reader) for _ in range(4)] == [0, 1, 2, 3]
    reader.close()
    assert closed == [True]
    assert not any(t.name == "read_ahead" and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("rotation", [0, 90])
def test_i420_frames_match_the_swscale_rgb_path(tmp_path, rotation):
    path = write_video(str(tmp_path / "v.mp4"), frames=3, width=160, height=120)
    with av.open(path) as container:
        frame = next(container.decode(video=0))
        reference = frame.reformat(width=80, height=60, format="rgb24", interpolation="AREA").to_ndarray()
        buffer = frame_to_i420(frame, 80, 60, rotation)
    reference = np.rot90(reference, k=rotation // 90)
    assert buffer.shape == (reference.shape[0] * 3 // 2, reference.shape[1]) and buffer.dtype == np.uint8
    rgb = cv2.cvtColor(buffer, cv2.COLOR_YUV2RGB_I420)
    # Same content, the colour conversion and the scaling filter differ only by rounding-sized amounts.
    assert np.abs(rgb.astype(int) - reference).mean() < 4
    with pytest.raises(ValueError, match="even dimensions"):
        frame_to_i420(frame, 81, 60)


def test_iter_frames_reads_i420_and_the_writer_takes_it(tmp_path):
    path = write_video(str(tmp_path / "v.mp4"), frames=6, width=160, height=120)
    frames = list(iter_frames(path, max_side=41, pixel_format="i420"))
    assert len(frames) == 6 and frames[0].image.shape == (30 * 3 // 2, 40)  # 41x31 made even: 40x30
    with Mp4Writer(str(tmp_path / "out.mp4"), fps=8, width=40, height=30) as writer:
        for frame in frames:
            writer.write_i420(frame.image)
        with pytest.raises(ValueError, match="I420 frame of shape"):
            writer.write_i420(np.zeros((10, 10), np.uint8))
    info = probe(str(tmp_path / "out.mp4"))
    assert (info.width, info.height, info.num_frames) == (40, 30, 6)
