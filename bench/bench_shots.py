"""`shots` throughput vs the `scenedetect` command line on the same generated video.

    python -m bench.bench_shots [--seconds 60] [--width 640] [--height 360]

The video is drawn by `humove.samples` (hard cuts every 2–6 s, a rendered person moving), scaled to the asked size and
encoded once (cached in the temp folder). Rows: humove's detection pass alone (what the CLI does), the whole
stage (detection + writing every clip as H.264), and the CLI with its OpenCV and PyAV backends (its default
automatic downscale; wall time includes starting the CLI's Python process, measured separately).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

from humove.samples import Person, SampleSpec, Shot, sample_frames
from humove.stage import StageContext
from humove.stages.ingest import IngestConfig, IngestStage
from humove.stages.shots import ShotsConfig, ShotsStage
from humove.video import write_mp4

FPS = 24
SHOT_SECONDS = (3.0, 5.0, 2.0, 4.0, 6.0)
MOTIONS = ("wave", "squat", "jumping_jacks")  # people who stay in view however long the shot


def bench_video(seconds: float, width: int, height: int) -> tuple[str, int]:
    """Path of the generated benchmark video and its number of shots (cuts + 1)."""
    shots, total = [], 0.0
    while total < seconds - 1e-9:
        length = min(SHOT_SECONDS[len(shots) % len(SHOT_SECONDS)], seconds - total)
        person = Person(MOTIONS[len(shots) % 3], (0.0, 3.6), clothing=len(shots) % 5)
        shots.append(Shot(length, scene=len(shots) % 6, people=(person,)))
        total += length
    spec = SampleSpec(f"bench_{seconds:g}s_{width}x{height}.mp4", FPS, tuple(shots))
    path = Path(tempfile.gettempdir()) / "humove-bench" / spec.name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = (cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in sample_frames(spec))
        tmp = path.with_suffix(".tmp.mp4")
        write_mp4(str(tmp), frames, fps=FPS)
        os.replace(tmp, path)
    return str(path), len(shots)


def run_humove(path: str, work: str, detect_only: bool) -> tuple[float, int]:
    """Seconds and number of shots found by the `shots` stage (or its detection pass alone)."""
    run_dir = tempfile.mkdtemp(prefix="detect-" if detect_only else "full-", dir=work)
    ingest = IngestStage(IngestConfig(source=path), StageContext(run_dir, "ingest"))
    record = ingest.process(ingest.list_inputs()[0])
    item = {**{k: v for k, v in record.items() if k not in ("id", "status", "backend")},
            "video_id": record["id"], "input_id": record["id"]}
    stage = ShotsStage(ShotsConfig(min_clip_s=0.5), StageContext(run_dir, "shots"))
    start = time.perf_counter()
    if detect_only:
        cuts, _ = stage._detect(path, float(item["fps"]))
        found = len(cuts) + 1
    else:
        found = len({r["shot_index"] for r in stage.process(item)})
    return time.perf_counter() - start, found


def run_cli(path: str, work: str, backend: str) -> tuple[float, int]:
    """Seconds and number of scenes found by `scenedetect -b BACKEND detect-content list-scenes`."""
    exe = shutil.which("scenedetect", path=os.path.dirname(sys.executable)) or "scenedetect"
    out = tempfile.mkdtemp(prefix=f"cli-{backend}-", dir=work)
    command = [exe, "-q", "-i", path, "-b", backend, "-o", out,
               "detect-content", "list-scenes", "--skip-cuts"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    (scenes_csv,) = Path(out).glob("*.csv")
    with open(scenes_csv) as handle:
        rows = list(csv.reader(handle))
    return seconds, len(rows) - 1  # minus the header row


def cli_startup_seconds() -> float:
    exe = shutil.which("scenedetect", path=os.path.dirname(sys.executable)) or "scenedetect"
    start = time.perf_counter()
    subprocess.run([exe, "version"], check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--repeat", type=int, default=2, help="runs per row; the fastest is shown")
    args = parser.parse_args(argv)

    path, true_shots = bench_video(args.seconds, args.width, args.height)
    frames = round(args.seconds * FPS)
    work = tempfile.mkdtemp(prefix="humove-bench-shots-")
    try:
        runs = [
            ("humove shots: detection only (256 px)", lambda: run_humove(path, work, detect_only=True)),
            ("humove shots: detection + H.264 clips", lambda: run_humove(path, work, detect_only=False)),
            ("scenedetect CLI, opencv backend", lambda: run_cli(path, work, "opencv")),
            ("scenedetect CLI, pyav backend", lambda: run_cli(path, work, "pyav")),
        ]
        rows = []
        for name, run in runs:
            results = [run() for _ in range(max(1, args.repeat))]
            rows.append((name, *min(results)))
        startup = min(cli_startup_seconds() for _ in range(max(1, args.repeat)))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"video: {args.width}x{args.height}, {frames} frames at {FPS} fps, {true_shots} shots drawn; "
          f"{os.cpu_count()} CPUs")
    print(f"{'run':<42} {'seconds':>8} {'frames/s':>9} {'shots found':>12}")
    for name, seconds, found in rows:
        print(f"{name:<42} {seconds:>8.2f} {frames / seconds:>9.0f} {found:>12}")
    print(f"(scenedetect CLI start-up alone: {startup:.2f} s, included in its rows)")


if __name__ == "__main__":
    main(sys.argv[1:])
