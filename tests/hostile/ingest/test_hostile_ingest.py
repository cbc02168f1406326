"""Hostile ingest inputs (built here, being binary or naming this machine's paths): container headers that lie
about the duration, FIFOs and links to devices named like videos, `file://` URLs in a manifest, and a file an
earlier stage wrote that is not on this node. Each gets a true record, and none blocks the run."""

from __future__ import annotations

import os
import socket
import struct
from fractions import Fraction

import av
import pytest
from fixtures_video import gradient_frames, write_video
from test_ingest import make_stage, run_all

from humove.stages.ingest import DEMO_SOURCE, MissingUpstreamFile
from humove.video import probe
from humove.worker import finalize

FRAMES, FPS = 144, 24  # 6 s of frames


# Lying headers --------------------------------------------------------------------------------------------
def _find_box(data: bytes, path: list[str], start: int = 0, end: int | None = None) -> int:
    """Offset of the body of the MP4 box at `path` (e.g. moov/trak/mdia/mdhd)."""
    end = len(data) if end is None else end
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", data[start:start + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[start + 8:start + 16])[0], 16
        if kind.decode("latin1") == path[0]:
            body = start + header
            return body if len(path) == 1 else _find_box(data, path[1:], body, start + size)
        start += size or end
    raise KeyError(path[0])


def write_mp4_with_scaled_mdhd(path: str, factor: float) -> str:
    """An MP4 of 144 frames at 24 fps whose track header (mdhd) declares `factor` times the true duration."""
    write_video(path, frames=FRAMES, fps=FPS)
    data = bytearray(open(path, "rb").read())
    body = _find_box(data, ["moov", "trak", "mdia", "mdhd"])
    layout = ">IQ" if data[body] == 1 else ">II"  # (timescale, duration) after version, flags and two times
    at = body + 4 + (16 if data[body] == 1 else 8)
    timescale, duration = struct.unpack_from(layout, data, at)
    struct.pack_into(layout, data, at, timescale, int(duration * factor))
    open(path, "wb").write(data)
    return path


def write_mkv_with_duration(path: str, declared_s: float) -> str:
    """A Matroska file of 144 frames at 24 fps whose Segment Info declares `declared_s` seconds."""
    with av.open(path, "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"threads": "1"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index, image in enumerate(gradient_frames(FRAMES, 64, 48)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    data = bytearray(open(path, "rb").read())
    at = data.find(b"\x44\x89")  # the Duration element: an 8-byte float, in milliseconds (default timecode scale)
    assert data[at + 2] == 0x88 and struct.unpack_from(">d", data, at + 3)[0] == FRAMES / FPS * 1000
    struct.pack_into(">d", data, at + 3, declared_s * 1000)
    open(path, "wb").write(data)
    return path


def test_durations_come_from_the_stream_when_the_header_lies(tmp_path):
    """The audit's files: 144 frames at 24 fps declared as 3600 s (was too_long) and as 0.30 s (was too_short)."""
    long = write_mkv_with_duration(str(tmp_path / "declared-an-hour.mkv"), 3600.0)
    short = write_mp4_with_scaled_mdhd(str(tmp_path / "mdhd-times-0.05.mp4"), 0.05)
    honest = write_video(str(tmp_path / "honest.mp4"), frames=FRAMES, fps=FPS)
    records = run_all(make_stage(tmp_path / "run", source=[long, short, honest], min_duration_s=1.0,
                                 max_duration_s=60.0, min_side_px=16))
    for path, declared in ((long, 3600.0), (short, 0.30), (honest, 6.0)):
        record = records[path]
        assert record["status"] == "ok", (path, record)
        assert record["duration_s"] == pytest.approx(6.0, abs=0.01) and record["num_frames"] == FRAMES
        assert record["header_duration_s"] == pytest.approx(declared, abs=0.01)
    assert records[honest]["duration_s"] == records[honest]["header_duration_s"]  # an honest header is kept


def test_a_header_within_the_tolerance_keeps_its_duration(tmp_path):
    path = write_mp4_with_scaled_mdhd(str(tmp_path / "slightly-short.mp4"), 0.99)  # 1 % short of 6 s
    info = probe(path)
    assert info.duration_s == info.header_duration_s < 5.99 and info.duration_s == pytest.approx(6.0, rel=0.02)


# Files that are not regular files -------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_fifos_devices_and_sockets_are_not_regular_files_and_never_block(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = write_video(str(folder / "good.mp4"))
    os.mkfifo(folder / "pipe.mp4")  # opening it for reading would wait for a writer forever
    os.symlink("/dev/zero", folder / "zero.mp4")  # reading it never ends
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "socket.mp4"))
    try:
        records = run_all(make_stage(tmp_path / "run", source=str(folder), min_side_px=16))
    finally:
        server.close()
    expected = {"pipe.mp4": "a FIFO", "zero.mp4": "a character device (a link to /dev/zero)",
                "socket.mp4": "a socket"}
    for name, kind in expected.items():
        record = records[str(folder / name)]
        assert (record["status"], record["reason"]) == ("rejected", "not_a_regular_file"), record
        assert record["detail"].endswith(f"{name} is {kind}")
    assert records[good]["status"] == "ok"


# Manifests with file:// URLs ------------------------------------------------------------------------------
def test_file_urls_in_a_manifest_are_read_as_file_urls(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    spaced = write_video(str(videos / "with space.mp4"))
    (tmp_path / "manifests").mkdir()
    relative = write_video(str(tmp_path / "manifests" / "relative.mp4"))
    manifest = tmp_path / "manifests" / "list.csv"
    manifest.write_text("url,keyword\n"
                        f"file://{str(videos).replace(' ', '%20')}/with%20space.mp4,spaced\n"
                        f"file://localhost{videos}/with%20space.mp4,same file via localhost\n"
                        "relative.mp4,relative\n"
                        "file://other-host/videos/x.mp4,another host\n"
                        "file:videos/x.mp4,relative file URL\n")
    stage = make_stage(tmp_path / "run", source=str(manifest), min_side_px=16)
    items = stage.list_inputs()
    assert [i["input_id"] for i in items[:2]] == [spaced, relative]  # the localhost row is the same input
    records = run_all(stage)
    assert records[spaced]["status"] == "ok" and records[spaced]["keyword"] == "spaced"
    assert records[relative]["status"] == "ok"
    refused = {r["keyword"]: r for r in records.values() if r["status"] == "rejected"}
    assert set(refused) == {"another host", "relative file URL"}
    for row, record in zip((4, 5), refused.values(), strict=True):
        assert record["reason"] == "bad_url" and f"row {row}: file:" in record["detail"]
        assert "not a local file URL" in record["detail"]


# A file an earlier stage wrote, missing on this node ------------------------------------------------------
def test_a_missing_upstream_file_is_an_error_retried_not_a_rejection(tmp_path):
    """Download wrote the file on another node (a run dir the nodes do not share): ingest must not reject it
    (a rejection is final: every video was lost for good); an `error` is retried on the next run."""
    stage = make_stage(tmp_path / "run", min_side_px=16)
    downloaded = {"input_id": "https://example.org/v1", "download_path": str(tmp_path / "gone.mp4"),
                  "download_webpage": "https://example.org/v1"}
    demo = {"input_id": f"{DEMO_SOURCE}/walk.mp4", "source_path": str(tmp_path / "run" / "samples" / "walk.mp4")}
    for item in (downloaded, demo):
        with pytest.raises(MissingUpstreamFile, match="retried on the next run"):
            stage.process(dict(item))
        try:
            result = stage.process(dict(item))
        except MissingUpstreamFile as exc:
            result = exc
        (record,) = finalize(stage, {"input_id": item["input_id"]}, result, attempt=1)
        assert record["status"] == "error" and record["error_type"] == "MissingUpstreamFile", record
    # Once the file is there (the run dir shared, the download redone), the next attempt probes it.
    write_video(downloaded["download_path"])
    assert stage.process(dict(downloaded))["status"] == "ok"
    # A path the user listed that does not exist stays a (final) rejection.
    listed = {"input_id": str(tmp_path / "nope.mp4"), "source_path": str(tmp_path / "nope.mp4")}
    assert stage.process(listed)["reason"] == "missing_file"
