"""Shard writing throughput: the `pack` stage (the workers' part) and the `shards` stage (the driver's part) vs
`tar -cf` of the same files.

    python -m bench.bench_shards [--clips 60] [--clip-mb 2] [--frames 48] [--no-motion] [--repeat 10]
                                 [--shard-samples 16]

Inputs are real MP4 clips (one small H.264 encode, grown to `--clip-mb` with a trailing `free` box of random
bytes, which MP4 readers skip) plus a motion file (schema v2) per clip. The `pack` stage's time covers what the
workers do for all clips, here one after another on one core: reading and hashing each clip and motion file,
building and validating the metadata, checking the motion file, the motion sums, writing each sample's tar members
(fsync'd). The `shards` stage's time covers what the driver does: reading the samples, laying them into the tars
while hashing them (fsync'd), merging the sums, the Parquet index and dataset.json. `tar -cf` packs the very same
member files (extracted from the stage's own shards, after one untimed warm-up run); it is also shown followed by
a `sync` of the archive, since the stage fsyncs its shards. They are timed in turn within each of `--repeat`
rounds, so that they meet the same load on a shared machine; best of the rounds each, and the ratio of the medians
too (on the 2-core VM the ratio of the bests moves by ±0.07 between invocations); the page cache is warm for all.
The stages' CPU seconds (all their threads) are shown too: on a machine whose cores are busy with other work, they
are what a stage costs.

Then the run dir's bytes per kept clip, from one more build whose shards hold `--shard-samples` samples: the
clip, its `pack` fragment (before `shards` published, and after it deleted the fragments of its closed shards),
its motion sums and its share of the dataset.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from humove.schemas.motion import MotionClip, motion_to_bytes
from humove.schemas.pack import SCHEMA as PACK_SCHEMA
from humove.stage import StageContext
from humove.stages.pack import PackStage
from humove.stages.shards import ShardsStage

FPS = 16


def small_mp4(path: Path, frames: int) -> bytes:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(frames):
            image = np.full((48, 64, 3), (index * 5) % 256, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path.read_bytes()


def grow_mp4(mp4: bytes, size: int, rng: np.random.Generator) -> bytes:
    """Append a top-level `free` box so the file is `size` bytes and still a valid MP4."""
    payload = max(0, size - len(mp4) - 8)
    return mp4 + (payload + 8).to_bytes(4, "big") + b"free" + rng.bytes(payload)


def motion(frames: int, rng: np.random.Generator) -> bytes:
    return motion_to_bytes(MotionClip(
        betas=rng.normal(size=(frames, 10)).astype(np.float32),
        global_orient=rng.normal(size=(frames, 3)).astype(np.float32),
        body_pose=rng.normal(size=(frames, 23, 3)).astype(np.float32),
        transl=rng.normal(size=(frames, 3)).astype(np.float32),
        joints=rng.normal(size=(frames, 24, 3)).astype(np.float32),
        focal=np.full(frames, 600.0, np.float32), image_size=np.array([48, 64], np.int32),
        valid=np.ones(frames, bool), fps=float(FPS), body_model="smpl-neutral",
    ))


def make_inputs(folder: Path, clips: int, clip_bytes: int, frames: int, with_motion: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    base = small_mp4(folder / "base.mp4", frames)
    rows = []
    for number in range(clips):
        video_id = f"v{number // 4:016x}"  # four clips per source video
        clip_id = f"{video_id}-{number * 100:07d}-{number * 100 + frames:07d}"
        data = grow_mp4(base, clip_bytes, rng)
        clip_path = folder / f"{clip_id}.mp4"
        clip_path.write_bytes(data)
        row = {"clip_id": clip_id, "video_id": video_id, "input_id": clip_id, "source_path": f"/in/{number}.mp4",
               "clip_path": str(clip_path), "clip_sha256": hashlib.sha256(data).hexdigest(),
               "clip_fps": float(FPS), "clip_num_frames": frames, "clip_width": 64, "clip_height": 48,
               "start_s": 0.0, "end_s": frames / FPS, "aesthetic_mean": float(rng.uniform(3, 7)),
               # the ingest / shots columns the fixed sample metadata declares (humove.schemas.shard)
               "source_uri": f"{number}.mp4", "shot_index": 0, "window_index": 0, "start_frame": 0,
               "end_frame": frames, "detector": "content(threshold=27)", "size_bytes": len(data),
               "duration_s": frames / FPS, "fps": float(FPS), "variable_fps": False, "width": 64, "height": 48,
               "codec": "h264", "rotation": 0, "num_frames": frames, "has_audio": False}
        if with_motion:
            motion_path = folder / f"{clip_id}.motion.npz"
            motion_bytes = motion(frames, rng)
            motion_path.write_bytes(motion_bytes)
            # As the smooth stage records them.
            row["motion_path"], row["motion_sha256"] = str(motion_path), hashlib.sha256(motion_bytes).hexdigest()
        rows.append(row)
    return rows


def timed(action) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--clip-mb", type=float, default=2.0)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--no-motion", action="store_true")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--shard-samples", type=int, default=16, help="max_samples_per_shard of the disk-use build")
    args = parser.parse_args(argv)
    if shutil.which("tar") is None:
        sys.exit("bench_shards needs a `tar` command on PATH")

    with tempfile.TemporaryDirectory(prefix="humove-bench-shards-") as tmp:
        root = Path(tmp)
        (root / "inputs").mkdir()
        rows = make_inputs(root / "inputs", args.clips, int(args.clip_mb * 1e6), args.frames, not args.no_motion)

        sample = PackStage(PackStage.Config(val_fraction=0.0), StageContext(run_dir=str(root / "run"),
                                                                                 stage="pack"))

        def build_samples() -> list[dict]:
            """The pack stage on every row (what the workers do), its rows joined as shards gets them."""
            joined = []
            for row in rows:
                record = sample.process(row)
                assert record["status"] == "ok", record
                joined.append({**row, **{name: record[name] for name in PACK_SCHEMA.own_names}})
            return joined

        # One shard holding everything, so both sides write one archive of the same members.
        stage = ShardsStage(ShardsStage.Config(output=str(root / "shards"), max_shard_bytes=1 << 40,
                                               max_samples_per_shard=1 << 30),
                            StageContext(run_dir=str(root / "run"), stage="shards"))
        joined = build_samples()
        stage.run(joined)  # warm-up: imports, and the shard whose members tar packs
        shard = root / "shards" / "humove-train-000000.tar"
        shard_bytes = shard.stat().st_size

        members = root / "members"
        members.mkdir()
        with tarfile.open(shard) as archive:
            names = archive.getnames()
            archive.extractall(members, filter="data")
        out = root / "plain.tar"
        tar_command = ["tar", "-cf", str(out), "-C", str(members), *names]
        sample_runs, stage_runs, tar_runs, tar_sync_runs = [], [], [], []
        for _ in range(args.repeat):
            sample_runs.append(timed(build_samples))
            shutil.rmtree(root / "shards")  # a whole build each time: a re-run over the same dataset writes nothing
            stage_runs.append(timed(lambda: stage.run(joined)))
            tar_runs.append(timed(lambda: subprocess.run(tar_command, check=True))[0])
            tar_sync_runs.append(timed(lambda: (subprocess.run(tar_command, check=True),
                                                subprocess.run(["sync", str(out)], check=True)))[0])
        sample_s, sample_cpu_s = min(sample_runs)
        stage_s, stage_cpu_s = min(stage_runs)
        tar_s, tar_sync_s = min(tar_runs), min(tar_sync_runs)
        median_stage_s = statistics.median(seconds for seconds, _ in stage_runs)
        median_tar_sync_s = statistics.median(tar_sync_runs)
        tar_bytes = out.stat().st_size

        disk = disk_use(root / "disk", rows, args.shard_samples)

    samples = len(rows)
    print(f"shard writing: {samples} samples of {args.clip_mb:g} MB clips"
          f"{'' if args.no_motion else ' + motion'}, one archive; best of {args.repeat}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    header = (f"{'method':<31} {'MB':>9} {'seconds':>9} {'MB/s':>9} {'samples/s':>10} {'x tar':>7} "
              f"{'x tar+sync':>11}")
    print(header)
    print("-" * len(header))
    for name, size, seconds in (("pack stage (workers, 1 core)", shard_bytes, sample_s),
                                ("shards stage (driver)", shard_bytes, stage_s), ("tar -cf", tar_bytes, tar_s),
                                ("tar -cf + sync", tar_bytes, tar_sync_s)):
        mb_s = size / 1e6 / seconds
        print(f"{name:<31} {size / 1e6:>9.1f} {seconds:>9.3f} {mb_s:>9.1f} {samples / seconds:>10.1f} "
              f"{mb_s / (tar_bytes / 1e6 / tar_s):>7.2f} {mb_s / (tar_bytes / 1e6 / tar_sync_s):>11.2f}")
    def mb_s_ratio(stage_seconds: float, tar_seconds: float) -> float:
        return shard_bytes / stage_seconds / (tar_bytes / tar_seconds)

    print(f"shards stage / tar -cf + sync (the anchor, the stage fsyncs too): "
          f"{mb_s_ratio(stage_s, tar_sync_s):.2f}x in MB/s (best runs), "
          f"{mb_s_ratio(median_stage_s, median_tar_sync_s):.2f}x (median runs)")
    print(f"shards stage CPU: {stage_cpu_s:.3f} s over all its threads in its fastest run "
          f"({stage_cpu_s / stage_s:.2f} cores busy); pack stage CPU: {sample_cpu_s:.3f} s "
          f"({sample_cpu_s / samples * 1000:.1f} ms per clip, spread over the workers)")
    print(f"run dir bytes per kept clip ({args.shard_samples} samples a shard, {disk['shards']} shards, the last "
          f"open): clip {disk['clips'] / samples / 1e6:.2f} MB, dataset {disk['dataset'] / samples / 1e6:.2f} MB, "
          f"pack fragments {disk['fragments'] / samples / 1e6:.2f} MB before publishing and "
          f"{disk['fragments_after'] / samples / 1e6:.2f} MB after (the open shard's), motion sums "
          f"{disk['stats'] / samples / 1e3:.1f} kB; in all {disk['before'] / samples / 1e6:.2f} MB when every fragment "
          f"stayed, {disk['after'] / samples / 1e6:.2f} MB now ({disk['after'] / disk['before']:.2f}x); deleting "
          f"took {disk['delete_s'] * 1e3:.1f} ms")


def disk_use(run_dir: Path, rows: list[dict], shard_samples: int) -> dict[str, float]:
    """Bytes of a run dir's copies of the kept clips: the clips, the `pack` fragments before and after `shards`
    deleted those of its closed shards, the motion sums and the dataset; and the seconds the deletion took."""
    pack = PackStage(PackStage.Config(val_fraction=0.0), StageContext(run_dir=str(run_dir), stage="pack"))
    joined = [{**row, **{name: record[name] for name in PACK_SCHEMA.own_names}}
              for row in rows if (record := pack.process(row))["status"] == "ok"]
    stage = ShardsStage(ShardsStage.Config(max_samples_per_shard=shard_samples),
                        StageContext(run_dir=str(run_dir), stage="shards"))

    def size(paths) -> int:
        return sum(Path(path).stat().st_size for path in paths)

    fragments = run_dir / "artifacts" / "pack"
    use = {"clips": size(row["clip_path"] for row in joined), "fragments": size(fragments.glob("*.tar")),
           "stats": size(fragments.glob("*.stats.npz"))}
    real_delete, seconds = ShardsStage._delete_fragments, []

    def delete(*args) -> None:
        start = time.perf_counter()
        real_delete(*args)
        seconds.append(time.perf_counter() - start)

    ShardsStage._delete_fragments = delete
    try:
        stage.run(joined)
    finally:
        ShardsStage._delete_fragments = real_delete
    dataset = run_dir / "dataset"
    use.update(dataset=size(dataset.iterdir()), fragments_after=size(fragments.glob("*.tar")), delete_s=seconds[0],
               shards=len(list(dataset.glob("humove-*.tar"))))
    use["before"] = use["clips"] + use["fragments"] + use["stats"] + use["dataset"]
    use["after"] = use["clips"] + use["fragments_after"] + use["stats"] + use["dataset"]
    return use


if __name__ == "__main__":
    main(sys.argv[1:])
