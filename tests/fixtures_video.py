"""Video files built in code for tests: good ones, and the bad inputs `ingest` must reject by name.

Import the builders (plain functions taking a path) or the pytest fixtures defined at the bottom.
"""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np
import pytest

from humove.samples import Person, SampleSpec, Shot, write_sample


def gradient_frames(count: int, width: int, height: int, seed: int = 0):
    """`count` RGB frames `(height, width, 3)` uint8 with a moving square, deterministic."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    for i in range(count):
        frame = np.empty((height, width, 3), np.uint8)
        frame[:] = base
        frame[:, :, 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
        x = (4 * i) % max(1, width - 8)
        frame[height // 4: height // 4 + 8, x: x + 8] = 255
        yield frame


def write_video(path: str, frames: int = 30, fps: int = 30, width: int = 64, height: int = 48,
                rotation: int | None = None, audio: bool = False, timestamps_ms: list[int] | None = None,
                faststart: bool = False) -> str:
    """An H.264 MP4. `rotation` sets the display matrix (counter-clockwise degrees); `timestamps_ms` gives
    each frame's presentation time (a variable frame rate); `audio` adds a silent AAC track."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(path, "w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=fps, options={"threads": "1"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        time_base = Fraction(1, 1000) if timestamps_ms else Fraction(1, fps)
        stream.codec_context.time_base = time_base
        audio_stream = container.add_stream("aac", rate=16000, layout="mono") if audio else None
        for i, image in enumerate(gradient_frames(frames, width, height)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = timestamps_ms[i] if timestamps_ms else i
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if audio_stream is not None:
            _write_silence(container, audio_stream, seconds=frames / fps)
    return path


def _write_silence(container, stream, seconds: float) -> None:
    samples = int(seconds * stream.rate)
    chunk = stream.codec_context.frame_size or 1024
    for start in range(0, samples, chunk):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, chunk), np.float32), format="fltp", layout="mono")
        frame.sample_rate = stream.rate
        frame.pts = start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def write_audio_only(path: str, seconds: float = 1.0) -> str:
    with av.open(path, "w", format="mp4") as container:
        _write_silence(container, container.add_stream("aac", rate=16000, layout="mono"), seconds)
    return path


def write_truncated(path: str) -> str:
    """An MP4 cut in half after writing. Its index (`moov`) is at the front, so the header still declares
    every frame but half of the frame data is gone."""
    write_video(path, frames=90, width=160, height=120, faststart=True)
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    return path


def write_without_index(path: str) -> str:
    """An MP4 cut before its trailing index (`moov`): the usual shape of an interrupted download."""
    write_video(path, frames=30)
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    return path


def write_absurd_header(path: str) -> str:
    """A raw YUV4MPEG2 video whose header declares 30000x16 pixels (it opens; no real video looks so)."""
    with open(path, "wb") as handle:
        handle.write(b"YUV4MPEG2 W30000 H16 F30:1 Ip A1:1 C420jpeg\n")
        handle.write(b"FRAME\n" + bytes(30000 * 16 * 3 // 2))
    return path


def write_text(path: str) -> str:
    with open(path, "w") as handle:
        handle.write("this is not a video\n" * 20)
    return path


def write_empty(path: str) -> str:
    open(path, "wb").close()
    return path


def write_cut_video(path: str, fps: int = 24, shots: tuple[float, ...] = (1.5, 2.0, 1.5)) -> str:
    """A 320x240 sample video (`humove.samples` rendering: a person walking across a room) with a hard cut
    between consecutive shots (each in another room)."""
    walker = (Person("walk", (-0.8, 3.8), heading=1.2),)
    spec = SampleSpec(os.path.basename(path), fps,
                      tuple(Shot(seconds, scene=i % 6, people=walker) for i, seconds in enumerate(shots)))
    return write_sample(spec, path)


@pytest.fixture
def cut_video(tmp_path) -> str:
    """24 fps, shots of 1.5 s, 2.0 s and 1.5 s: cuts at frames 36 and 84 of 120."""
    return write_cut_video(str(tmp_path / "cuts.mp4"))


def records_table(schema, records: list[dict], input_id: str = "test-input"):
    """Records as the engine would store them (common columns filled in), validated by `schema`."""
    import datetime

    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    rows = [{"input_id": input_id, "attempt": 1, "stage_version": "1", "schema_version": schema.version,
             "created_at": now, **record} for record in records]
    return schema.to_table(rows)
