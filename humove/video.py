"""Video core on PyAV: probe a file, read its frames downscaled, write clips as H.264 MP4.

Everything that touches a container or a codec lives here, so stages stay small and the failure modes of
real-world files (truncated, not a video, absurd headers) are named in one place as `VideoError` reasons.

Conventions:
- Frames are numbered 0, 1, 2, … in presentation order, as the decoder returns them.
- `rotation` is the counter-clockwise angle (0, 90, 180 or 270) of the stream's display matrix: the angle by
  which a frame must be turned to be shown upright. Widths and heights reported by `probe` are after rotation,
  and `iter_frames` returns upright frames.
- Frame arrays are uint8 `(H, W, 3)` in RGB (or BGR when asked, for OpenCV / PySceneDetect).

PyAV and OpenCV are imported by the functions that decode, encode or resize, not with the module: stage modules
import it, and processes that only read their configs (`humove report`, `humove stages`) never touch a video.
"""

from __future__ import annotations

import bisect
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from importlib.metadata import version
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import av

BACKEND = f"pyav-{version('av')}"

# Sides outside this range are corrupt headers, not videos (FFmpeg itself accepts up to ~16k per side).
MIN_SIDE_PX = 2
MAX_SIDE_PX = 16384
# Frame-to-frame timestamp spread (relative to the median step) above which a stream counts as variable rate.
_VFR_TOLERANCE = 0.1
# A header duration off the packets' span by more than this (seconds: the larger of two frames and 2 %) is a lie
# (a container's Duration of 3600 s over 6 s of frames, an mdhd scaled down): the packets win.
_DURATION_TOLERANCE_FRAMES = 2
_DURATION_TOLERANCE_FRACTION = 0.02


class VideoError(Exception):
    """A video that cannot be used. `reason` is machine-readable, `detail` says what was found."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` measured. Sizes are display sizes (after rotation). `duration_s` is the header's unless it
    disagrees with the stream's own packets (`_DURATION_TOLERANCE`): then the packets' span, and
    `header_duration_s` keeps what the header declared (None when it declares nothing)."""

    duration_s: float
    fps: float                 # average frame rate
    variable_fps: bool
    width: int
    height: int
    codec: str
    rotation: int              # counter-clockwise degrees, see module docstring
    num_frames: int            # exact: counted by demuxing
    has_audio: bool
    size_bytes: int
    header_duration_s: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _open(path: str):
    import av

    if not os.path.exists(path):
        raise VideoError("missing_file", f"{path} does not exist")
    if os.path.getsize(path) == 0:
        raise VideoError("empty", f"{path} has 0 bytes")
    try:
        return av.open(path, "r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError("unreadable", f"cannot open {path}: {exc}") from exc


def _check_dimensions(width: int, height: int, path: str) -> None:
    if not (MIN_SIDE_PX <= width <= MAX_SIDE_PX and MIN_SIDE_PX <= height <= MAX_SIDE_PX):
        raise VideoError(
            "absurd_dimensions",
            f"{path}: {width}x{height} px is outside [{MIN_SIDE_PX}, {MAX_SIDE_PX}] per side",
        )


def _is_variable_rate(pts: list[int]) -> bool:
    """True when presentation timestamps are not evenly spaced (beyond one tick of rounding)."""
    if len(pts) < 3:
        return False
    steps = np.diff(np.sort(np.asarray(pts, dtype=np.int64)))
    steps = steps[steps > 0]
    if steps.size == 0:
        return False
    median = float(np.median(steps))
    spread = float(steps.max() - steps.min())
    return spread > max(1.0, _VFR_TOLERANCE * median)


def probe(path: str) -> VideoInfo:
    """Measure a local video file. Raises `VideoError` with reason `missing_file`, `empty`, `unreadable`,
    `no_video_stream`, `absurd_dimensions`, `truncated` or `no_frames`."""
    import av

    size_bytes = os.path.getsize(path) if os.path.exists(path) else 0
    with _open(path) as container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise VideoError("no_video_stream", f"{path} has streams {kinds} but no video")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx.width or ctx.height:  # check before anything decodes a frame of that size
            _check_dimensions(ctx.width, ctx.height, path)
        has_audio = bool(container.streams.audio)
        codec = ctx.name
        declared_frames = stream.frames or 0

        # Demux (no decoding) to count frames exactly and see their timestamps: containers may lack or
        # misstate the count and the duration, and a truncated file shows up as fewer packets than declared.
        pts: list[int] = []
        ends: list[int] = []  # pts + duration of each packet that has both (0 duration: not known)
        packets = 0
        dropped = 0  # empty packets with a timestamp: frames a capture dropped (AVI), not missing data
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    dropped += packet.pts is not None  # the final flush packet has no timestamp
                    continue
                packets += 1
                if packet.pts is not None:
                    pts.append(packet.pts)
                    if packet.duration:
                        ends.append(packet.pts + packet.duration)
        except av.FFmpegError as exc:
            raise VideoError("truncated", f"{path}: demuxing failed after {packets} frames: {exc}") from exc
        if packets == 0:
            raise VideoError("no_frames", f"{path}: the video stream holds no frames")
        if declared_frames and packets + dropped < declared_frames:
            raise VideoError(
                "truncated", f"{path}: the header declares {declared_frames} frames, the file holds {packets}"
            )

        time_base = stream.time_base
        fps = _average_fps(stream, pts, time_base)
        header_duration_s = _header_duration_s(stream, container)
        duration_s = _duration_s(header_duration_s, _packets_duration_s(pts, ends, time_base, fps, packets), fps)

    rotation, width, height = _first_frame(path)
    _check_dimensions(width, height, path)  # headers may leave the size to the first frame
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(
        duration_s=duration_s, fps=fps, variable_fps=_is_variable_rate(pts), width=width, height=height,
        codec=codec, rotation=rotation, num_frames=packets, has_audio=has_audio, size_bytes=size_bytes,
        header_duration_s=header_duration_s,
    )


def _average_fps(stream, pts: list[int], time_base) -> float:
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate:
            return float(rate)
    if len(pts) >= 2 and time_base:
        span = float((max(pts) - min(pts)) * time_base)
        if span > 0:
            return (len(pts) - 1) / span
    raise VideoError("unreadable", "the stream declares no frame rate and has no usable timestamps")


def _header_duration_s(stream, container) -> float | None:
    """What the headers declare: the stream's duration (MP4 mdhd, edit list), else the container's (mvhd,
    Matroska Duration); None if neither does."""
    import av

    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _packets_duration_s(pts: list[int], ends: list[int], time_base, fps: float, packets: int) -> float:
    """The span of the stream's own packets, from the first presentation time to the end of the last frame
    (pts + duration; if some packets give no duration, the last pts + one frame at `fps`); `packets / fps`
    without timestamps."""
    if not pts or not time_base:
        return packets / fps
    start = min(pts) * float(time_base)
    end = max(ends) * float(time_base) if len(ends) == len(pts) else max(pts) * float(time_base) + 1.0 / fps
    return end - start


def _duration_s(header_s: float | None, packets_s: float, fps: float) -> float:
    """The header's duration, unless the packets disagree beyond the tolerance: then the packets'."""
    tolerance = max(_DURATION_TOLERANCE_FRAMES / fps, _DURATION_TOLERANCE_FRACTION * packets_s)
    if header_s is None or abs(header_s - packets_s) > tolerance:
        return packets_s
    return header_s


def _first_frame(path: str) -> tuple[int, int, int]:
    """(rotation, stored width, stored height) of the first frame. FFmpeg attaches the display matrix to
    decoded frames; decoding one also proves the stream is decodable."""
    import av

    with av.open(path, "r") as container:
        try:
            for frame in container.decode(video=0):
                return int(round(frame.rotation / 90.0)) * 90 % 360, frame.width, frame.height
        except av.FFmpegError as exc:
            raise VideoError("unreadable", f"{path}: cannot decode the first frame: {exc}") from exc
    raise VideoError("no_frames", f"{path}: no frame could be decoded")


def scaled_size(width: int, height: int, max_side: int | None, even: bool = False) -> tuple[int, int]:
    """(width, height) shrunk so that the longer side is at most `max_side` (never enlarged), keeping the
    aspect ratio; `even=True` rounds both to even numbers as yuv420p encoders need."""
    scale = 1.0 if not max_side else min(1.0, max_side / max(width, height))
    step = 2 if even else 1
    w = max(step, int(round(width * scale / step)) * step)
    h = max(step, int(round(height * scale / step)) * step)
    return w, h


@dataclass(frozen=True)
class DecodedFrame:
    index: int            # presentation-order frame number in the source
    time_s: float         # presentation time in the source
    image: np.ndarray     # (H, W, 3) uint8, upright; (H * 3 // 2, W) I420 when read as "i420"


def shrink_plane(plane: np.ndarray, width: int, height: int, out: np.ndarray | None = None) -> np.ndarray:
    """One image plane `(h, w)` uint8 resized to `(height, width)`: halved by 2x2 box averages while at least
    twice the target size remains (OpenCV's vectorised INTER_AREA path; other integer factors take a generic
    one: a 1080p plane to 256 px in ~0.7 ms against ~0.17 ms for the halvings), then bilinear for the remaining
    ratio (< 2). Close to a true area filter (OpenCV's non-integer INTER_AREA, ~6x slower: 39 dB PSNR against it
    at 1080p to 512 px, where one 3x box and bilinear gave 34 dB) and never aliasing like a plain bilinear shrink
    (a one-pixel checkerboard becomes an even grey). `out`, a `(height, width)` uint8 array (a view into a
    larger buffer is fine), receives the result when given."""
    import cv2

    while plane.shape[1] >= 2 * width and plane.shape[0] >= 2 * height:
        h, w = plane.shape
        exact = (w // 2, h // 2) == (width, height)
        plane = cv2.resize(plane[: h // 2 * 2, : w // 2 * 2], (w // 2, h // 2), dst=out if exact else None,
                           interpolation=cv2.INTER_AREA)
    if plane.shape != (height, width):
        plane = cv2.resize(plane, (width, height), dst=out, interpolation=cv2.INTER_LINEAR)
    if out is not None and plane is not out:  # same size already, or OpenCV could not write into `out` in place
        out[...] = plane
        return out
    return plane


def yuv420p_planes(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Y, U and V planes of a decoded frame as uint8 views `(h, w)`, `(ceil(h/2), ceil(w/2))` twice, read
    straight from the decoder's buffers; a frame in another pixel format goes through swscale to yuv420p first."""
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    y, u, v = (np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in frame.planes)
    return y, u, v


def frame_to_i420(frame: av.VideoFrame, width: int, height: int, rotation: int = 0) -> np.ndarray:
    """A decoded frame as an I420 buffer `(H * 3 // 2, W)` uint8 (Y rows, then U, then V, BT.601 as decoded):
    the planes scaled to `(width, height)` as stored (both even), then turned upright by `rotation`, so
    `(H, W)` is `(height, width)`, or `(width, height)` for 90 and 270.

    yuv420p sources (almost all H.264 / VP9 / AV1) are read straight from the decoder's planes, no generic
    pixel conversion (the costly part of reading frames); other formats go through swscale to yuv420p first."""
    if width % 2 or height % 2:
        raise ValueError(f"I420 needs even dimensions, got {width}x{height}")
    planes = []
    for pixels, (w, h) in zip(yuv420p_planes(frame),
                              ((width, height), (width // 2, height // 2), (width // 2, height // 2)), strict=True):
        pixels = shrink_plane(pixels, w, h)
        planes.append(np.rot90(pixels, k=rotation // 90) if rotation else pixels)
    y, u, v = planes
    out_h, out_w = y.shape
    buffer = np.empty((out_h * 3 // 2, out_w), np.uint8)
    buffer[:out_h] = y
    chroma = buffer[out_h:].reshape(2, out_h // 2, out_w // 2)
    chroma[0], chroma[1] = u, v
    return buffer


def decode_frames(path: str, start_frame: int = 0, end_frame: int | None = None,
                  threads: int = 0) -> Iterator[tuple[int, float, av.VideoFrame]]:
    """(index, time_s, frame) for the decoded frames `[start_frame, end_frame)` in order, frames as the decoder
    gives them (no conversion). Threaded decoding; `threads=0` lets FFmpeg choose the thread count (decoding is
    bit-exact whatever the count). Raises `VideoError` (`no_video_stream`, `decode_failed`, or `_open`'s)."""
    import av

    with _open(path) as container:
        if not container.streams.video:
            raise VideoError("no_video_stream", f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        index = -1
        try:
            for frame in container.decode(stream):
                index += 1
                if index < start_frame:
                    continue
                if end_frame is not None and index >= end_frame:
                    break
                time_s = float(frame.time) if frame.time is not None else index / float(stream.average_rate)
                yield index, time_s, frame
        except av.FFmpegError as exc:
            raise VideoError("decode_failed", f"{path}: decoding failed after frame {index}: {exc}") from exc


@dataclass(frozen=True)
class KeyframeIndex:
    """A video stream's layout from demuxing alone (no decoding): every packet's pts in presentation order,
    the keyframes' pts (sorted), and the coded frame size."""

    frame_pts: list[int]
    keyframe_pts: list[int]
    width: int
    height: int

    def spans(self, parts: int, min_frames: int) -> list[tuple[int | None, int | None]]:
        """Up to `parts` consecutive spans `(start_pts, stop_pts)` of about equal length, each starting at a
        keyframe (None: the stream's start / end) and holding at least `min_frames` frames; one span when
        the keyframes do not allow more."""
        count = len(self.frame_pts)
        positions = sorted({bisect.bisect_left(self.frame_pts, pts) for pts in self.keyframe_pts} - {0})
        starts = [0]
        for part in range(1, parts):
            if not positions:
                break
            target = count * part // parts
            nearest = min(positions, key=lambda position: abs(position - target))
            if nearest - starts[-1] >= min_frames and count - nearest >= min_frames:
                starts.append(nearest)
        bounds: list[int | None] = [None] + [self.frame_pts[s] for s in starts[1:]] + [None]
        return list(zip(bounds[:-1], bounds[1:], strict=True))


def keyframe_index(path: str) -> KeyframeIndex:
    """Demux the first video stream (packets only, a small fraction of decoding's cost)."""
    import av

    with _open(path) as container:
        if not container.streams.video:
            raise VideoError("no_video_stream", f"{path} has no video stream")
        stream = container.streams.video[0]
        frame_pts, keyframe_pts = [], []
        try:
            for packet in container.demux(stream):
                if packet.pts is None:
                    continue  # the final flush packet
                frame_pts.append(packet.pts)
                if packet.is_keyframe:
                    keyframe_pts.append(packet.pts)
        except av.FFmpegError as exc:
            raise VideoError("decode_failed", f"{path}: demuxing failed: {exc}") from exc
        return KeyframeIndex(sorted(frame_pts), sorted(keyframe_pts), stream.codec_context.width,
                             stream.codec_context.height)


def decode_span(path: str, start_pts: int | None, stop_pts: int | None,
                threads: int = 1) -> Iterator[tuple[int, float, av.VideoFrame]]:
    """(pts, time_s, frame) in presentation order for the frames from the keyframe at `start_pts` (None: the
    start, no seek) up to and including the first frame whose pts is at least `stop_pts` (None: the end).
    Frames before `start_pts` that the decoder gives after the seek (an open GOP's leading frames, decoded
    without their references) are dropped. One decoder thread by default: spans are decoded side by side,
    and single-threaded H.264 decoding costs ~20 % less CPU per frame than FFmpeg's frame threading.
    Raises `VideoError` (`decode_failed` for a frame without a timestamp, or `_open`'s)."""
    import av

    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        try:
            if start_pts is not None:
                container.seek(start_pts, stream=stream)
            for frame in container.decode(stream):
                if frame.pts is None:
                    raise VideoError("decode_failed", f"{path}: a frame after pts {start_pts} has no timestamp")
                if start_pts is not None and frame.pts < start_pts:
                    continue
                yield frame.pts, float(frame.time), frame
                if stop_pts is not None and frame.pts >= stop_pts:
                    return
        except av.FFmpegError as exc:
            raise VideoError("decode_failed", f"{path}: decoding from pts {start_pts} failed: {exc}") from exc


def iter_frames(
    path: str,
    max_side: int | None = None,
    size: tuple[int, int] | None = None,
    rotation: int = 0,
    pixel_format: str = "rgb24",
    start_frame: int = 0,
    end_frame: int | None = None,
    threads: int = 0,
) -> Iterator[DecodedFrame]:
    """Decode frames `[start_frame, end_frame)` in order (see `decode_frames`), scaled by FFmpeg (swscale, area
    filter) so that their longer side is at most `max_side` (or to exactly `size` = (width, height) as stored,
    before rotation), then turned upright by `rotation` (see `probe`). `pixel_format` is "rgb24" or "bgr24", or
    "i420" for `frame_to_i420` buffers `(H * 3 // 2, W)` (no generic conversion; the size is made even)."""
    import av

    for index, time_s, frame in decode_frames(path, start_frame, end_frame, threads):
        if size is None:
            size = scaled_size(frame.width, frame.height, max_side, even=pixel_format == "i420")
        try:
            if pixel_format == "i420":
                image = frame_to_i420(frame, *size, rotation)
            else:
                image = frame.reformat(width=size[0], height=size[1], format=pixel_format,
                                       interpolation="AREA").to_ndarray()
                if rotation:
                    image = np.ascontiguousarray(np.rot90(image, k=rotation // 90))
        except av.FFmpegError as exc:
            raise VideoError("decode_failed", f"{path}: converting frame {index} failed: {exc}") from exc
        yield DecodedFrame(index=index, time_s=time_s, image=image)


Item = TypeVar("Item")


def read_ahead(items: Iterable[Item], depth: int) -> Iterator[Item]:
    """Yields `items` in order while a background thread produces them, at most `depth` ahead of the consumer.
    Made for decoding: PyAV releases the GIL while it decodes (and OpenCV / numpy while they compute), so the
    consumer's work on frame k overlaps with decoding frames k+1… instead of alternating with it. An exception
    raised by `items` is re-raised here at its place in the sequence; closing this generator early stops the
    thread (and closes `items`, which releases a decoder)."""
    channel: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in items:
                channel.put((item, None))
                if stop.is_set():
                    return
            channel.put((end, None))
        except BaseException as exc:  # handed to the consumer, raised there
            channel.put((end, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    producer = threading.Thread(target=produce, name="read_ahead", daemon=True)
    producer.start()
    try:
        while True:
            item, error = channel.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()
        while producer.is_alive():  # unblock a producer waiting on a full queue
            try:
                channel.get(timeout=0.01)
            except queue.Empty:
                pass
        producer.join()


class Mp4Writer:
    """Writes RGB frames as an H.264 (libx264) MP4 at a constant frame rate, yuv420p, even dimensions.

    Deterministic: one encoder thread, fixed options and OpenCV colour conversion, so the same frames give
    the same bytes.

        with Mp4Writer(path, fps=24, width=320, height=240) as writer:
            writer.write(image)        # (H, W, 3) uint8 RGB; resized to (height, width) if it differs
    """

    def __init__(self, path: str, fps: float, width: int, height: int, crf: int = 23,
                 preset: str = "veryfast"):
        import av

        if width % 2 or height % 2:
            raise ValueError(f"H.264 yuv420p needs even dimensions, got {width}x{height}")
        self.path = path
        self.width, self.height = width, height
        self.rate = Fraction(fps).limit_denominator(1001)
        self.num_frames = 0
        self._container = av.open(path, "w", format="mp4")
        self._stream = self._container.add_stream(
            "libx264", rate=self.rate,
            # One thread and no macroblock tree: with mbtree on, libx264 gave a different bitstream for the
            # same frames about one run in twenty here; without it, repeated encodes were byte-identical.
            options={"crf": str(crf), "preset": preset, "threads": "1", "x264-params": "mbtree=0"},
        )
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.codec_context.time_base = 1 / self.rate

    def write(self, image: np.ndarray) -> None:
        """Append one frame, `(H, W, 3)` uint8 RGB."""
        import cv2

        if image.shape[:2] != (self.height, self.width):
            image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
        # OpenCV converts to yuv420p (BT.601, limited range, what decoders assume for untagged SD video):
        # swscale's conversion was measured to give run-to-run different encoder output here.
        self.write_i420(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2YUV_I420))

    def write_i420(self, yuv: np.ndarray) -> None:
        """Append one frame given as an I420 buffer `(height * 3 // 2, width)` uint8 (see `frame_to_i420`)."""
        import av

        if yuv.shape != (self.height * 3 // 2, self.width):
            raise ValueError(f"I420 frame of shape {yuv.shape}, expected {(self.height * 3 // 2, self.width)}")
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = self.num_frames
        frame.time_base = 1 / self.rate
        self._container.mux(self._stream.encode(frame))
        self.num_frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()
            self._container = None

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_mp4(path: str, frames, fps: float, max_side: int | None = None,
              crf: int = 23) -> tuple[int, int, int]:
    """Encode an iterable of RGB `(H, W, 3)` frames to `path`, the size capped at `max_side` (even sides).
    Returns (num_frames, width, height). Raises ValueError when `frames` is empty."""
    writer = None
    try:
        for image in frames:
            if writer is None:
                h, w = image.shape[:2]
                writer = Mp4Writer(path, fps, *scaled_size(w, h, max_side, even=True), crf=crf)
            writer.write(image)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError(f"no frames to write to {path}")
    return writer.num_frames, writer.width, writer.height
