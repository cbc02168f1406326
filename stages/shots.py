"""`shots`: cut each source video into single-shot clips and write them as H.264 MP4 artifacts.

Two decoding passes over the source (frames are read from the decoder's Y, U and V planes and scaled with
OpenCV, never through a generic RGB conversion, which cost more than the decoding itself):
1. detection: the video is cut at keyframes into `detect_spans` spans (from demuxing alone) that are decoded
   and scored side by side, one single-threaded decoder each (a decoder cannot keep two cores busy with H.264
   frame threading, and costs ~20 % more CPU per frame with it). Each span ends on the next one's first frame,
   which both sides must decode to the same scaled planes; spans that do not join exactly, or a video with a
   single span, are decoded in order by one frame-threaded decoder instead (same values either way). The planes,
   scaled to the longer side `detect_max_side_px`, are scored in batches by `ContentScorer`: PySceneDetect's
   content score (same HSV measure, same values to the last bit) with one colour conversion and one vectorised
   difference per batch instead of per-frame calls. The scores go to PySceneDetect's own content (default) or
   adaptive detector logic (threshold, `min_scene_len` filter, adaptive window), which gives the cut frames;
   the pass also gives every frame's timestamp;
2. writing: I420 frames scaled to the output cap and turned upright (on a background thread) are resampled to a
   constant frame rate and encoded clip by clip (libx264, one thread: the same input gives the same bytes).
The writing pass checks each frame's timestamp against detection's: frames that decode differently twice
fail the video (`decode_failed`) instead of shifting its clips. The source is decoded twice because a shot's
clips are known only once the shot has ended (its windows split its whole length): reusing the detection
pass's frames would mean holding a whole shot, of any length, in memory.
A few frames are trimmed on each side of every cut (dissolves, encoder smear), shots longer than `max_clip_s`
are split into equal windows, and pieces shorter than `min_clip_s` become `shot_too_short` rejections.
"""

from __future__ import annotations

import bisect
import math
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import ClassVar, Literal

import numpy as np

from humove import ids
from humove.schemas import shots as shots_schema
from humove.schemas.checksums import file_digest
from humove.stage import MapStage, Reads, Resources, StageConfig
from humove.storage import Storage
from humove.video import (
    BACKEND,
    Mp4Writer,
    VideoError,
    decode_frames,
    decode_span,
    iter_frames,
    keyframe_index,
    read_ahead,
    scaled_size,
    shrink_plane,
    yuv420p_planes,
)

_EPS = 1e-6
_SCORE_BATCH = 16  # frames per colour conversion and difference: amortises the per-call overhead
_READ_AHEAD = 2  # scaled batches the decoding thread may hold ahead of scoring
_READ_AHEAD_FRAMES = 8  # writing pass: scaled frames the decoding thread may hold ahead of encoding
_MIN_SPAN_FRAMES = 48  # detection spans shorter than this are not worth a seek and a decoder of their own
SHOTS_BACKEND = f"{BACKEND}+scenedetect-{version('scenedetect')}+libx264"


class ShotsConfig(StageConfig):
    """All fields but `detect_spans` (how the work is spread, not what it computes) change what is computed.
    `min_clip_s` in particular is deliberately not a `decision()` threshold: pieces shorter than it are
    rejected before encoding and never written as clips, so lowering it cannot be re-applied to stored
    records; changing it must re-run the stage (it is in the fingerprint).
    """

    detector: Literal["content", "adaptive"] = "content"
    threshold: float = 27.0            # content detector: weighted HSV change that makes a cut
    adaptive_threshold: float = 3.0    # adaptive detector: ratio of a frame's change to its neighbours'
    min_content_val: float = 15.0      # adaptive detector: minimum change for a cut
    window_width: int = 2              # adaptive detector: neighbours on each side
    min_scene_len: int = 15            # frames: the detector emits no cut closer than this to the last one
    detect_max_side_px: int = 256      # detection runs on frames scaled to this longer side
    detect_spans: int = 2              # detection: keyframe-aligned spans decoded side by side (same scores)
    min_clip_s: float = 1.0            # shorter pieces are rejected (shot_too_short), never encoded: computed
    max_clip_s: float = 10.0           # longer shots are split into equal windows
    trim_frames: int = 2               # source frames dropped on each side of every cut
    fps: float | None = 24.0           # constant output rate; None = the source's average (rounded if VFR)
    max_side_px: int = 512             # output longer side cap (never enlarged; even sides)
    crf: int = 23
    preset: str = "veryfast"

    def fingerprint_dict(self) -> dict:
        return {k: v for k, v in super().fingerprint_dict().items() if k != "detect_spans"}


@dataclass(frozen=True)
class Piece:
    """A span of source frames `[start, end)` that becomes one clip (or one rejection)."""

    shot_index: int
    window_index: int
    start: int
    end: int


class ShotsStage(MapStage):
    name = "shots"
    # 2: frames read from the decoder's planes and scaled by OpenCV (clip pixels differ from 1). 3: planes more
    # than twice the target size are halved by 2x2 boxes first (clip pixels and detection scores differ from 2
    # for sources at least 4x the size, or 3x to 4x: 1080p to 512 px clips, 720p and up for detection).
    version = "3"
    schema = shots_schema.SCHEMA
    Config = ShotsConfig
    resources = Resources(num_cpus=1, batch_size=1)
    description = "split videos into shots with PySceneDetect and write H.264 clips"
    backend: ClassVar[str] = SHOTS_BACKEND

    @classmethod
    def reads(cls, config: ShotsConfig) -> Reads:
        return Reads({"source_path", "fps", "variable_fps", "width", "height", "rotation"})  # ingest's probe

    def process(self, item: dict) -> list[dict]:
        video_id = item["video_id"]
        source = item["source_path"]
        scratch = self.context.scratch_dir()
        try:
            # Decoders need a real file. A remote source is copied under its own name into a subfolder, so it
            # can never clash with the clips written to `scratch` (`<start frame>.mp4`).
            source_dir = os.path.join(scratch, "source")
            os.makedirs(source_dir)
            path = Storage(source).local_copy(source, source_dir)
            cuts, times = self._detect(path, float(item["fps"]))
            if not times:
                return []  # nothing decodable: the engine records no_output
            pieces = plan_pieces(cuts, len(times), float(item["fps"]), self.config)
            keep = [p for p in pieces if _duration(p, times, item) >= self.config.min_clip_s - _EPS]
            records = [self._rejection(video_id, p, times, item) for p in pieces if p not in keep]
            records += self._write_clips(path, video_id, keep, times, item, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return sorted(records, key=lambda r: r["start_frame"])

    # Pass 1: detection ---------------------------------------------------------------------------------
    def _make_detector(self):
        """PySceneDetect's detector for the configured settings, fed `ContentScorer` scores instead of frames."""
        # PySceneDetect (with PyAV and OpenCV) loads where videos are cut, not where the config is read (report).
        from humove.scene_cuts import ScoredAdaptiveDetector, ScoredContentDetector

        c = self.config
        if c.detector == "adaptive":
            return ScoredAdaptiveDetector(adaptive_threshold=c.adaptive_threshold, min_scene_len=c.min_scene_len,
                                          window_width=c.window_width, min_content_val=c.min_content_val)
        return ScoredContentDetector(threshold=c.threshold, min_scene_len=c.min_scene_len)

    def detector_name(self) -> str:
        c = self.config
        if c.detector == "adaptive":
            return (f"adaptive(adaptive_threshold={c.adaptive_threshold},min_content_val={c.min_content_val},"
                    f"window_width={c.window_width},min_scene_len={c.min_scene_len})")
        return f"content(threshold={c.threshold},min_scene_len={c.min_scene_len})"

    def _detect(self, path: str, fps: float) -> tuple[list[int], list[float]]:
        """Cut frame numbers (each starts a new shot) and the timestamp of every source frame."""
        times, components = self._scores_by_span(path) or self._scores_in_order(path)
        cuts = self._make_detector().cuts(components, fps if fps > 0 else 25.0)
        return sorted({c for c in cuts if 0 < c < len(times)}), times

    def _scores_by_span(self, path: str) -> tuple[list[float], list] | None:
        """Times and `ContentScorer` components of every frame, the video cut at keyframes into up to
        `detect_spans` spans that are decoded and scored side by side (one single-threaded decoder each).
        None when the video gives a single span, or when the spans do not join exactly as one decoding in
        order would give them (see `join_spans`): the caller then decodes in order."""
        if self.config.detect_spans < 2:
            return None
        index = keyframe_index(path)
        spans = index.spans(self.config.detect_spans, _MIN_SPAN_FRAMES)
        if len(spans) < 2 or min(index.width, index.height) <= 0:  # no size in the header: learnt by decoding
            return None
        size = scaled_size(index.width, index.height, self.config.detect_max_side_px, even=True)
        try:
            with ThreadPoolExecutor(len(spans), thread_name_prefix="shots-span") as pool:
                scored = list(pool.map(lambda span: score_span(path, size, *span), spans))
        except VideoError:
            return None  # decoded again in order, which names the frame that fails
        return join_spans(scored, spans, index.frame_pts)

    def _scores_in_order(self, path: str) -> tuple[list[float], list]:
        """Times and components of every frame from one decoder (FFmpeg's frame threads) read in order."""
        times: list[float] = []
        components: list = []
        scorer = None
        # Decoding and scaling run on a background thread (OpenCV and PyAV release the GIL), a batch ahead of
        # the colour conversion and scoring here.
        for stack in read_ahead(stacked_frames(path, self.config.detect_max_side_px), _READ_AHEAD):
            scorer = scorer or ContentScorer(stack.width, stack.height, stack.capacity)
            times += stack.times
            components += scorer.score(stack)
        return times, components

    # Pass 2: writing -----------------------------------------------------------------------------------
    def _write_clips(self, path: str, video_id: str, pieces: list[Piece], times: list[float], item: dict,
                     scratch: str) -> list[dict]:
        if not pieces:
            return []
        rotation = int(item.get("rotation") or 0)
        width, height = int(item["width"]), int(item["height"])
        out_w, out_h = scaled_size(width, height, self.config.max_side_px, even=True)
        stored = (out_h, out_w) if rotation in (90, 270) else (out_w, out_h)  # decoder size, before rotation
        out_fps = float(self.config.fps or item["fps"])
        if not self.config.fps and item.get("variable_fps"):
            out_fps = float(max(1, round(out_fps)))  # a variable-rate average is no sane output rate
        # Decoding and scaling on a background thread, while this one encodes (same frames, same bytes).
        frames = read_ahead(iter_frames(path, size=stored, rotation=rotation, pixel_format="i420",
                                        start_frame=pieces[0].start, end_frame=pieces[-1].end), _READ_AHEAD_FRAMES)
        records = []
        pending = iter(pieces)
        piece = next(pending)
        resampler = None
        for frame in frames:
            if frame.index >= len(times) or frame.time_s != times[frame.index]:
                frames.close()  # the two passes disagree on which frame this is: no clip could be trusted
                raise VideoError("decode_failed", f"{path}: frame {frame.index} decodes at {frame.time_s} s in "
                                 f"the writing pass, not where detection found it")
            while piece is not None and frame.index >= piece.end:
                records.append(self._finish(resampler, video_id, piece, times, item, scratch))
                resampler, piece = None, next(pending, None)
            if piece is None:
                frames.close()
                break
            if frame.index < piece.start:
                continue
            if resampler is None:
                start_s, end_s = _span(piece, times, item)
                writer = Mp4Writer(os.path.join(scratch, f"{piece.start}.mp4"), out_fps, out_w, out_h,
                                   crf=self.config.crf, preset=self.config.preset)
                resampler = ConstantRateResampler(writer, start_s, end_s)
            resampler.add(frame.time_s, frame.image)
        while piece is not None:  # the source ended inside or before the last pieces
            records.append(self._finish(resampler, video_id, piece, times, item, scratch))
            resampler, piece = None, next(pending, None)
        return [r for r in records if r is not None]

    def _finish(self, resampler, video_id: str, piece: Piece, times: list[float], item: dict,
                scratch: str) -> dict | None:
        if resampler is None:
            return None  # no frame of this piece could be decoded
        writer = resampler.close()
        clip_id = ids.clip_id(video_id, piece.start, piece.end)
        url = self.context.artifact_url(clip_id, "mp4")
        self.context.storage.put_file(writer.path, url)
        digest, size = file_digest(writer.path), os.path.getsize(writer.path)
        os.remove(writer.path)
        return self.ok(
            clip_id, backend=SHOTS_BACKEND, clip_path=url, clip_sha256=digest, clip_bytes=size,
            clip_fps=float(writer.rate), clip_num_frames=writer.num_frames, clip_width=writer.width,
            clip_height=writer.height, **self._span_fields(video_id, piece, times, item),
        )

    def _rejection(self, video_id: str, piece: Piece, times: list[float], item: dict) -> dict:
        seconds = _duration(piece, times, item)
        return self.reject(
            ids.clip_id(video_id, piece.start, piece.end), "shot_too_short", value=seconds,
            detail=f"{seconds:.3f} s < min_clip_s {self.config.min_clip_s} s",
            **self._span_fields(video_id, piece, times, item),
        )

    def _span_fields(self, video_id: str, piece: Piece, times: list[float], item: dict) -> dict:
        start_s, end_s = _span(piece, times, item)
        return {
            "video_id": video_id, "shot_index": piece.shot_index, "window_index": piece.window_index,
            "start_s": start_s, "end_s": end_s, "start_frame": piece.start, "end_frame": piece.end,
            "detector": self.detector_name(),
        }


class StackedFrames:
    """Up to `capacity` consecutive frames scaled to `(width, height)` (both even) in one I420 buffer
    `(capacity * height * 3 // 2, width)` uint8: the Y planes of all slots, then all U planes, then all V planes.
    That is itself the I420 image of the frames stacked vertically, so one OpenCV conversion converts them all,
    with exactly the pixels frame-by-frame conversions give (chroma rows pair with luma rows within each frame)."""

    def __init__(self, width: int, height: int, capacity: int):
        if width % 2 or height % 2:
            raise ValueError(f"I420 needs even dimensions, got {width}x{height}")
        self.width, self.height, self.capacity = width, height, capacity
        self.times: list[float] = []
        self.i420 = np.empty((capacity * height * 3 // 2, width), np.uint8)
        self._y = self.i420[: capacity * height].reshape(capacity, height, width)
        self._u, self._v = self.i420[capacity * height:].reshape(2, capacity, height // 2, width // 2)

    @property
    def count(self) -> int:
        return len(self.times)

    def clear(self) -> None:
        self.times.clear()

    def slot_bytes(self, k: int) -> bytes:
        """Slot `k`'s scaled Y, U and V planes, to compare two decodings of one frame."""
        return self._y[k].tobytes() + self._u[k].tobytes() + self._v[k].tobytes()

    def add(self, frame, time_s: float) -> None:
        """Scale a decoded frame's planes (any size, see `humove.video.shrink_plane`) into the next slot."""
        y, u, v = yuv420p_planes(frame)
        k = self.count
        shrink_plane(y, self.width, self.height, out=self._y[k])
        shrink_plane(u, self.width // 2, self.height // 2, out=self._u[k])
        shrink_plane(v, self.width // 2, self.height // 2, out=self._v[k])
        self.times.append(time_s)


def stacked_frames(path: str, max_side: int, capacity: int = _SCORE_BATCH) -> Iterator[StackedFrames]:
    """A video's frames in order, scaled so that the longer side is at most `max_side` (even sides, the first
    frame's size for all), `capacity` per `StackedFrames` (the last one may hold fewer)."""
    stack, size = None, None
    for _, time_s, frame in decode_frames(path):
        if size is None:
            size = scaled_size(frame.width, frame.height, max_side, even=True)
        if stack is None or stack.count == capacity:
            if stack is not None:
                yield stack
            stack = StackedFrames(*size, capacity)
        stack.add(frame, time_s)
    if stack is not None:
        yield stack


@dataclass
class ScoredSpan:
    """One span's frames as `score_span` gives them: pts, times and `ContentScorer` components (None for the
    span's first frame, which has no predecessor here), and the scaled planes of its first and last frames."""

    pts: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    components: list = field(default_factory=list)
    first: bytes = b""
    last: bytes = b""


def score_span(path: str, size: tuple[int, int], start_pts: int | None, stop_pts: int | None) -> ScoredSpan:
    """Decode and score the span `[start_pts, stop_pts]` (see `humove.video.decode_span`: its last frame is
    the next span's first), frames scaled to `size` = (width, height)."""
    stack = StackedFrames(*size, _SCORE_BATCH)
    scorer = ContentScorer(*size, _SCORE_BATCH)
    span = ScoredSpan()

    def flush() -> None:
        span.last = stack.slot_bytes(stack.count - 1)
        span.times.extend(stack.times)
        span.components.extend(scorer.score(stack))
        stack.clear()

    for pts, time_s, frame in decode_span(path, start_pts, stop_pts):
        stack.add(frame, time_s)
        if not span.pts:
            span.first = stack.slot_bytes(0)
        span.pts.append(pts)
        if stack.count == stack.capacity:
            flush()
    if stack.count:
        flush()
    return span


def join_spans(scored: list[ScoredSpan], spans: list[tuple[int | None, int | None]],
               frame_pts: list[int]) -> tuple[list[float], list] | None:
    """The spans' times and components as one sequence, each span's first frame taken from the span before
    (where its predecessor was decoded). None unless the spans join exactly: each ends on the next one's
    first frame, decoded to the same scaled planes on both sides, pts rise strictly, and every span after
    the first holds exactly the packets of its pts range (a seek that lost or added a frame is caught here).
    The first span is not held to the packets: edit lists may discard its first packets, as in any
    decoding from the start."""
    times: list[float] = []
    components: list = []
    previous = None
    for (start, stop), span in zip(spans, scored, strict=True):
        if not span.pts or any(b <= a for a, b in zip(span.pts, span.pts[1:], strict=False)):
            return None
        if stop is not None and span.pts[-1] != stop:
            return None
        if previous is None:
            times += span.times
            components += span.components
        else:
            own = span.pts[:-1] if stop is not None else span.pts
            low = bisect.bisect_left(frame_pts, start)
            high = bisect.bisect_left(frame_pts, stop) if stop is not None else len(frame_pts)
            if own != frame_pts[low:high] or span.first != previous.last:
                return None
            times += span.times[1:]
            components += span.components[1:]
        previous = span
    return times, components


class ContentScorer:
    """PySceneDetect's content score components, computed for a `StackedFrames` batch at once.

    The measure is `ContentDetector`'s (scenedetect 0.7.2, no edge component): each frame becomes BGR (OpenCV's
    I420 conversion), then HSV (OpenCV, hue 0..179), and its components are the mean absolute differences of hue,
    saturation and value to the previous frame. The values are the same to the last bit (same integer sums, same
    float divisions); only the work is batched: one conversion call per colour step, one difference and one sum
    per batch, instead of a dozen calls per frame. Batches must come in order (the previous frame is kept).

        scorer = ContentScorer(256, 144, capacity=16)
        for stack in stacked_frames(path, 256, capacity=16):
            scores += scorer.score(stack)   # one (delta_hue, delta_sat, delta_lum) per frame; None for the first
    """

    def __init__(self, width: int, height: int, capacity: int = _SCORE_BATCH):
        self.width, self.height, self.capacity = width, height, capacity
        self._bgr = np.empty((capacity * height, width, 3), np.uint8)
        # Slot 0 holds the previous batch's last frame, so the first frame of a batch has its predecessor.
        self._hsv = np.empty((capacity + 1, height, width, 3), np.uint8)
        self._diff = np.empty((capacity * height, width, 3), np.uint8)
        self._has_previous = False
        # Column sums over a frame's rows: uint16 holds them while height * 255 fits (any 256 px frame).
        self._column_dtype = np.uint16 if height * 255 <= np.iinfo(np.uint16).max else np.uint32

    def score(self, stack: StackedFrames) -> list[tuple[float, float, float] | None]:
        """The components of each frame in `stack`, in order."""
        count, h, w = stack.count, self.height, self.width
        if (stack.width, stack.height, stack.capacity) != (w, h, self.capacity):
            raise ValueError(f"stack of {stack.capacity} frames {stack.width}x{stack.height}, scorer expects "
                             f"{self.capacity} frames {w}x{h}")
        if count == 0:
            return []
        import cv2  # with the first frames scored: stage modules load without OpenCV

        # The whole buffer is converted: the slots past `count` are not valid frames, but a partial buffer is
        # not an I420 image.
        cv2.cvtColor(stack.i420, cv2.COLOR_YUV2BGR_I420, dst=self._bgr)
        cv2.cvtColor(self._bgr, cv2.COLOR_BGR2HSV, dst=self._hsv[1:].reshape(self.capacity * h, w, 3))
        diff = cv2.absdiff(self._hsv[1: count + 1].reshape(count * h, w, 3),
                           self._hsv[:count].reshape(count * h, w, 3), dst=self._diff[: count * h])
        columns = diff.reshape(count, h, w * 3).sum(axis=1, dtype=self._column_dtype)  # (count, W * 3)
        sums = columns.reshape(count, w, 3).sum(axis=1, dtype=np.int64)  # (count, 3): hue, sat, value
        pixels = float(h * w)
        scores: list = [(hue / pixels, sat / pixels, lum / pixels) for hue, sat, lum in sums.tolist()]
        if not self._has_previous:
            scores[0] = None  # the very first frame has nothing to compare with
            self._has_previous = True
        self._hsv[0] = self._hsv[count]
        return scores


class ConstantRateResampler:
    """Feeds a writer at a constant rate from source frames (I420 buffers, see `humove.video.frame_to_i420`)
    with arbitrary timestamps: output frame k shows the last source frame whose time is ≤ start_s + k / fps
    (nearest preceding frame, no blending), for round((end_s - start_s) * fps) frames (at least one)."""

    def __init__(self, writer: Mp4Writer, start_s: float, end_s: float):
        self.writer = writer
        self.start_s = start_s
        self.total = max(1, round((end_s - start_s) * float(writer.rate)))
        self._last = None

    def _next_time(self) -> float:
        return self.start_s + self.writer.num_frames / float(self.writer.rate)

    def add(self, time_s: float, image) -> None:
        # Output times before this frame's time show the previous source frame.
        while (self._last is not None and self.writer.num_frames < self.total
               and self._next_time() < time_s - _EPS):
            self.writer.write_i420(self._last)
        self._last = image

    def close(self) -> Mp4Writer:
        while self._last is not None and self.writer.num_frames < self.total:
            self.writer.write_i420(self._last)
        self.writer.close()
        return self.writer


def plan_pieces(cuts: list[int], num_frames: int, fps: float, config: ShotsConfig) -> list[Piece]:
    """Shots between cuts, trimmed by `trim_frames` on each cut side, split into equal windows when longer
    than `max_clip_s`. Frame spans are in source frames; `fps` (the source's average) converts seconds."""
    bounds = [0, *cuts, num_frames]
    pieces = []
    for shot_index, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        trimmed_start = start + (config.trim_frames if start > 0 else 0)
        trimmed_end = end - (config.trim_frames if end < num_frames else 0)
        if trimmed_end <= trimmed_start:  # too short to trim: keep it whole, it will be rejected as short
            trimmed_start, trimmed_end = start, end
        length = trimmed_end - trimmed_start
        max_frames = max(1, int(math.floor(config.max_clip_s * fps + _EPS)))
        windows = max(1, math.ceil(length / max_frames))
        edges = [trimmed_start + round(k * length / windows) for k in range(windows + 1)]
        for window_index in range(windows):
            pieces.append(Piece(shot_index, window_index, edges[window_index], edges[window_index + 1]))
    return pieces


def _span(piece: Piece, times: list[float], item: dict) -> tuple[float, float]:
    """(start_s, end_s) of a piece in the source: the first frame's time to the time of the frame after
    the last (or the last frame's time plus one average frame duration at the end of the video)."""
    start_s = times[piece.start]
    if piece.end < len(times):
        end_s = times[piece.end]
    else:
        end_s = times[-1] + 1.0 / float(item["fps"])
    return start_s, end_s


def _duration(piece: Piece, times: list[float], item: dict) -> float:
    start_s, end_s = _span(piece, times, item)
    return end_s - start_s

