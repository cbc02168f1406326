"""Small HuMoVe-style shards written in code for the trainer tests (videos via PyAV libx264, v1 motion files)."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from humove.schemas.motion import MotionClip, motion_to_bytes

TINY_OVERRIDES = {"text_len": 16}


def synthetic_motion(frames: int, fps: float, seed: int = 0, invalid: tuple[int, ...] = ()) -> MotionClip:
    """A smooth, deterministic SMPL-format clip: swinging joints, a walk along x, fixed shape."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames, dtype=np.float32) / fps
    phase = rng.uniform(0, 2 * np.pi, size=(23, 3)).astype(np.float32)
    amplitude = rng.uniform(0.05, 0.4, size=(23, 3)).astype(np.float32)
    body_pose = amplitude[None] * np.sin(2 * np.pi * 1.2 * t[:, None, None] + phase[None])
    global_orient = np.stack([np.pi + 0.1 * np.sin(t), 0.3 * t, 0.05 * np.cos(2 * t)], axis=1)
    transl = np.stack([0.5 * t, 0.1 * np.sin(3 * t), 4.0 + 0 * t], axis=1)
    rest = rng.normal(scale=0.3, size=(24, 3)).astype(np.float32)
    joints = rest[None] + transl[:, None] + 0.05 * np.sin(t)[:, None, None]
    valid = np.ones(frames, dtype=bool)
    valid[list(invalid)] = False
    return MotionClip(
        betas=np.tile(rng.normal(size=10).astype(np.float32), (frames, 1)),
        global_orient=global_orient.astype(np.float32), body_pose=body_pose.astype(np.float32),
        transl=transl.astype(np.float32), joints=joints.astype(np.float32),
        focal=np.full(frames, 500.0, np.float32), image_size=np.array([96, 128], np.int32), valid=valid,
        fps=float(fps), body_model="standin-smpl",
    ).validate()


def video_frames(frames: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """(N, H, W, 3) uint8: a colour gradient with a bright square moving right, deterministic."""
    rng = np.random.default_rng(seed)
    out = np.empty((frames, height, width, 3), np.uint8)
    out[:] = rng.integers(0, 200, size=3, dtype=np.uint8)
    out[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, None, :]
    for i in range(frames):
        x = (3 * i) % max(1, width - 16)
        out[i, height // 3: height // 3 + 16, x: x + 16] = 255
    return out


def mp4_bytes(frames: np.ndarray, fps: int) -> bytes:
    """H.264 MP4 (constant fps) from (N, H, W, 3) uint8 frames."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"threads": "1", "crf": "18"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def write_paired_shards(out_dir: Path, num_samples: int = 4, per_shard: int = 2, frames: int = 24, fps: int = 30,
                        width: int = 128, height: int = 96, motion_only: bool = False, split: str = "train",
                        stats: bool = False, huge: tuple[int, ...] = ()) -> list[str]:
    """HuMoVe shards `humove-{split}-{index:06d}.tar`; returns their paths. Captions name the sample.
    `huge`: indices of samples whose translation is 1e30 m (finite, but it overflows the network); the stored
    statistics leave them out, as a data set's statistics would be dominated by them otherwise."""
    samples, features = [], []
    for index in range(num_samples):
        key = f"clip{index:04d}"
        motion = synthetic_motion(frames, fps, seed=index)
        if index in huge:
            motion.transl = np.full_like(motion.transl, 1e30)
        members = {"__key__": key, "motion.npz": motion_to_bytes(motion)}
        if not motion_only:
            members["mp4"] = mp4_bytes(video_frames(frames, width, height, seed=index), fps)
        metadata = sample_metadata(key, frames, fps, caption=f"person number {index} walks", split=split,
                                   size=None if motion_only else (width, height))
        samples.append((members, metadata))
        if stats and index not in huge:
            from humove.motion.representation import motion_to_features

            features.append(motion_to_features(motion))
    feature_stats = None
    if stats:
        from humove.motion.representation import MotionStats

        feature_stats = MotionStats.from_features(features).to_dict()
    return publish_samples(out_dir, samples, per_shard=per_shard, feature_stats=feature_stats)


def sample_metadata(key: str, frames: int, fps: float, caption: str = "", split: str = "train",
                    size: tuple[int, int] | None = None, has_motion: bool = True):
    """The fixed `{key}.json` metadata of a test sample; `size` (width, height) when it has a video."""
    from humove.schemas.shard import filled_metadata

    width, height = size or (0, 0)
    return filled_metadata(key=key, clip_id=key, video_id=f"v-{key}", split=split, fps=float(fps),
                           num_frames=frames, width=width, height=height, duration_s=frames / fps,
                           has_video=size is not None, has_motion=has_motion, caption=caption)


def publish_samples(out_dir: Path, samples: list, per_shard: int = 10_000, feature_stats: dict | None = None,
                    ) -> list[str]:
    """Publish (members, metadata) pairs as a dataset folder with the project's writer (dataset.json last);
    members are written as given, unchecked, so a test can store a broken one. Returns the shard paths."""
    from humove.dataset import DatasetBuilder

    with DatasetBuilder(str(out_dir), max_samples_per_shard=per_shard) as builder:
        for members, metadata in samples:
            builder.add({"json": metadata.to_json_bytes(), **members}, metadata)
        manifest = builder.publish(feature_stats=feature_stats)
    return [str(out_dir / shard.name) for shard in manifest.shards]


def check_sample_outputs(out: Path, mode: str, info: dict, frames: int = 9, size: tuple[int, int] = (64, 64)) -> None:
    """What `humove sample` must leave in `out` for a tiny stand-in run: the video and/or the motion file."""
    import av

    from humove.schemas.motion import load_motion

    assert info["backend"] == "standin-vae" and info["mode"] == mode
    assert ("prompt" in info) == (mode != "video2motion")  # video2motion drops text: it records no prompt
    if mode != "video2motion":
        with av.open(str(out / "video.mp4")) as container:
            decoded = list(container.decode(video=0))
        assert len(decoded) == frames and (decoded[0].height, decoded[0].width) == size
    if mode != "motion2video":
        clip = load_motion(out / "motion.npz")
        assert clip.num_frames == frames and clip.fps == 16
