"""`humove ingest-motion`: AMASS / HumanML3D-style SMPL `.npz` files → motion-only shards for phase 1.

Input per sequence (AMASS layout): `poses` (F, 72 | 156 | 165) axis-angle (SMPL, SMPL-H or SMPL-X order: root,
then body joints), `trans` (F, 3) metres, `betas` (K,) or (F, K), `mocap_framerate` (or `mocap_frame_rate`).
Files without `poses` (AMASS's per-subject `shape.npz`) are skipped. Choices, documented:
- Joints 0–21 are taken as they are; SMPL's hand joints 22–23 come from SMPL-H/X's hand chains, which differ, so
  they are set to the rest pose (the common AMASS→SMPL practice). The first 10 betas are kept.
- Frame: AMASS is z-up. The motion file is in an OpenCV camera frame (x right, y down, z forward), so each
  sequence is viewed by a level virtual camera looking along the world +y axis, `camera_distance` metres in front
  of the first frame's pelvis at pelvis height. `focal` / `image_size` record that nominal camera.
- The sequence is resampled (slerp for rotations) to `fps` (default 30) and joints are recomputed with the SMPL
  forward of `body_model` (user SMPL files, or "standin-smpl" for demos and tests).
- Captions: with `captions_dir`, the file `{name}.txt` there (same stem as the `.npz`); its first line up to '#'
  (HumanML3D's `texts/` format).

Output: `humove-{split}-{index:06d}.tar` with `{key}.motion.npz` (v1) and `{key}.json` (`caption` when known,
`fps`, `num_frames`, `source`), and `dataset.json` with `feature_stats` (the trainer's normalisation) over
windows of `stats_frames` frames at `stats_fps` (the training window), so the trainer normalises with them.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from humove.model.data import atomic_write_json, resample_motion, window_times
from humove.schemas.motion import MotionClip, motion_to_bytes

log = logging.getLogger(__name__)

# Looking along world +y with z up: camera x = world x, camera y (down) = −world z, camera z (forward) = world y.
WORLD_TO_CAMERA = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
NOMINAL_IMAGE_SIZE = (480, 832)
NOMINAL_FOCAL = 720.0


class MotionIngestError(ValueError):
    """An input file cannot be converted; the message names the file and the reason."""


def sample_key(path: Path, root: Path) -> str:
    """A WebDataset-safe key (no dots or slashes) from the path relative to the input folder."""
    relative = path.relative_to(root) if path != root else Path(path.name)
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(relative.with_suffix("")))


def read_caption(captions_dir: Path | None, path: Path) -> str | None:
    if captions_dir is None:
        return None
    text_file = captions_dir / f"{path.stem}.txt"
    if not text_file.exists():
        return None
    first = text_file.read_text().strip().splitlines()
    return first[0].split("#", 1)[0].strip() if first else None


def amass_to_clip(path: Path, body_model, fps: float = 30.0, camera_distance: float = 4.0) -> MotionClip | None:
    """One AMASS-style file → a MotionClip in the nominal camera frame, or None when it has no `poses`."""
    with np.load(path, allow_pickle=False) as data:
        if "poses" not in data:
            return None
        arrays = {k: data[k] for k in data.files if k in ("poses", "trans", "betas", "mocap_framerate",
                                                            "mocap_frame_rate")}
    poses = np.asarray(arrays["poses"], np.float64)
    if poses.ndim != 2 or poses.shape[1] not in (72, 156, 165):
        raise MotionIngestError(f"{path}: 'poses' has shape {poses.shape}, expected (F, 72 | 156 | 165)")
    frames = poses.shape[0]
    if "trans" not in arrays or arrays["trans"].shape != (frames, 3):
        raise MotionIngestError(f"{path}: 'trans' missing or not ({frames}, 3)")
    rate = arrays.get("mocap_framerate", arrays.get("mocap_frame_rate"))
    if rate is None or not float(rate) > 0:
        raise MotionIngestError(f"{path}: no positive 'mocap_framerate'")
    betas = np.asarray(arrays.get("betas", np.zeros(10)), np.float64)
    if betas.shape[-1] < 10:
        betas = np.concatenate([betas, np.zeros((*betas.shape[:-1], 10 - betas.shape[-1]))], axis=-1)
    betas = betas[..., :10]
    betas = np.broadcast_to(betas, (frames, 10)) if betas.ndim == 1 else betas
    if betas.shape != (frames, 10):
        raise MotionIngestError(f"{path}: 'betas' has shape {arrays['betas'].shape}")

    rotations = np.zeros((frames, 24, 3))
    rotations[:, :22] = poses[:, :66].reshape(frames, 22, 3)
    if poses.shape[1] == 72:
        rotations[:, 22:] = poses[:, 66:72].reshape(frames, 2, 3)
    trans = np.asarray(arrays["trans"], np.float64)

    # Re-express in the camera frame. SMPL rotates about the rest pelvis J0, so the translation must absorb it:
    # R·(R_g(x − J0) + J0 + t) − c = R R_g (x − J0) + J0 + t', with t' = R(J0 + t) − c − J0.
    from scipy.spatial.transform import Rotation

    rest_pelvis = body_model.rest_joints(torch.tensor(np.array(betas[:1]), dtype=torch.float32))[0, 0].double().numpy()
    world_root = Rotation.from_rotvec(rotations[:, 0])
    rotations[:, 0] = (Rotation.from_matrix(WORLD_TO_CAMERA) * world_root).as_rotvec()
    pelvis_camera = (WORLD_TO_CAMERA @ (rest_pelvis + trans).T).T
    camera_origin = pelvis_camera[0] - np.array([0.0, 0.0, camera_distance])
    transl = pelvis_camera - camera_origin - rest_pelvis

    clip = MotionClip(
        betas=betas.astype(np.float32), global_orient=rotations[:, 0].astype(np.float32),
        body_pose=rotations[:, 1:].astype(np.float32), transl=transl.astype(np.float32),
        joints=np.zeros((frames, 24, 3), np.float32), focal=np.full(frames, NOMINAL_FOCAL, np.float32),
        image_size=np.array(NOMINAL_IMAGE_SIZE, np.int32), valid=np.ones(frames, bool), fps=float(rate),
        body_model=body_model.name,
    )
    if abs(float(rate) - fps) > 1e-6:
        duration = (frames - 1) / float(rate)
        clip = resample_motion(clip, window_times(int(np.floor(duration * fps + 1e-6)) + 1, fps, 0.0))
    from humove.motion.body_model import clip_joints

    clip.joints = clip_joints(body_model, clip.betas, clip.global_orient, clip.body_pose, clip.transl)
    return clip.validate()


def stats_windows(clip: MotionClip, frames: int, fps: float) -> list[np.ndarray]:
    """Features of non-overlapping training-sized windows (the whole clip when shorter), for normalisation."""
    from humove.motion.representation import motion_to_features

    duration = (clip.num_frames - 1) / clip.fps
    span = (frames - 1) / fps
    if duration < span:
        count = int(np.floor(duration * fps + 1e-6)) + 1
        return [motion_to_features(resample_motion(clip, window_times(count, fps, 0.0)))]
    starts = np.arange(0.0, duration - span + 1e-9, span + 1.0 / fps)
    return [motion_to_features(resample_motion(clip, window_times(frames, fps, s))) for s in starts]


def ingest_motion(
    source: str | Path,
    out_dir: str | Path,
    body_model: str = "smpl-neutral",
    smpl_dir: str | Path | None = None,
    fps: float = 30.0,
    per_shard: int = 500,
    split: str = "motion",
    captions_dir: str | Path | None = None,
    camera_distance: float = 4.0,
    stats_frames: int = 81,
    stats_fps: float = 16.0,
) -> dict:
    """Convert every motion `.npz` under `source` (a file or folder, recursive) into shards in `out_dir`."""
    from humove.motion.body_model import load_body_model
    from humove.motion.representation import MotionStats

    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise FileNotFoundError(f"motion source {source} does not exist")
    files = [source] if source.is_file() else sorted(source.rglob("*.npz"))
    if not files:
        raise MotionIngestError(f"no .npz files under {source}")
    root = source.parent if source.is_file() else source
    model = load_body_model(body_model, smpl_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    captions = Path(captions_dir) if captions_dir else None

    shards: list[str] = []
    features: list[np.ndarray] = []
    written = skipped = 0
    writer = None
    tmp_path = None

    def close_shard() -> None:
        nonlocal writer, tmp_path
        if writer is not None:
            writer.close()
            tmp_path.replace(tmp_path.with_suffix(""))  # ".tar.tmp" → ".tar": readers never see half a shard
            shards.append(str(tmp_path.with_suffix("")))
            writer = tmp_path = None

    for path in files:
        clip = amass_to_clip(path, model, fps=fps, camera_distance=camera_distance)
        if clip is None:
            log.info("skipping %s: no 'poses' (not a motion sequence)", path)
            skipped += 1
            continue
        if writer is None:
            tmp_path = out_dir / f"humove-{split}-{len(shards):06d}.tar.tmp"
            writer = wds.TarWriter(str(tmp_path))
        meta = {"fps": clip.fps, "num_frames": clip.num_frames, "source": str(path.relative_to(root)),
                "body_model": clip.body_model}
        caption = read_caption(captions, path)
        if caption:
            meta["caption"] = caption
        writer.write({"__key__": sample_key(path, root), "motion.npz": motion_to_bytes(clip),
                      "json": json.dumps(meta).encode()})
        features.extend(stats_windows(clip, stats_frames, stats_fps))
        written += 1
        if written % per_shard == 0:
            close_shard()
    close_shard()
    if not written:
        raise MotionIngestError(f"no motion sequences among {len(files)} .npz files under {source}")
    stats = MotionStats.from_features(features)
    summary = {"samples": written, "skipped": skipped, "shards": [Path(s).name for s in shards],
               "body_model": model.name, "fps": fps, "stats_window": {"frames": stats_frames, "fps": stats_fps},
               "feature_stats": stats.to_dict()}
    atomic_write_json(out_dir / "dataset.json", summary)
    log.info("wrote %d motion samples in %d shards to %s (%d files skipped)", written, len(shards), out_dir,
             skipped)
    return summary
