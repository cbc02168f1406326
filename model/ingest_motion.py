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

Bad files are skipped, each with its name and reason in the summary (`skipped_files`), and the rest is written
(`read_sequence`): a file that is empty or cannot be read, lacks keys, holds arrays that are not numbers or have
the wrong shape, has no frames or a frame rate outside 1–1000 fps, holds NaN / inf anywhere in its input arrays
(checked before resampling, so a non-finite value on a frame that resampling would drop still rejects the file),
or magnitudes no body has: a translation beyond `max_translation_m` (1 km by default), a joint rotation beyond
±100 rad, a shape coefficient beyond ±100.

Keys: the relative path as a lowercase slug plus a hash of the exact relative path (`sample_key`), so `a b.npz`,
`a_b.npz`, `sub/x.npz` and `sub_x.npz` get distinct keys; a collision is checked and fails loudly anyway.

Output: a dataset folder published whole by `humove.dataset.DatasetBuilder` (the same reproducible tar writer and
`dataset.json` as the shards stage): `humove-{split}-{index:06d}.tar` (split `train` by default) with
`{key}.motion.npz` and `{key}.json` (the fixed metadata of `humove.schemas.shard`: `has_video` false,
`source.uri` the path relative to the input folder), `index.parquet`, `wids-{split}.json`, and `dataset.json`
with `feature_stats` (the trainer's normalisation, with the exact moments that let the trainer merge them with
other folders' statistics) over all valid frames, each clip cut into windows as long as the training window
(`stats_frames` frames at `stats_fps`; `clip_moments`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from humove import ids
from humove.dataset import DatasetBuilder
from humove.model.data import resample_motion, window_times
from humove.schemas.motion import MotionClip, MotionFileError, motion_to_bytes
from humove.schemas.shard import KEY_RE, encode_sample, filled_metadata

log = logging.getLogger(__name__)

# Looking along world +y with z up: camera x = world x, camera y (down) = −world z, camera z (forward) = world y.
WORLD_TO_CAMERA = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
NOMINAL_IMAGE_SIZE = (480, 832)
NOMINAL_FOCAL = 720.0
# Bounds no recorded body exceeds: a file beyond them is skipped (a typo'd unit, or a hostile file; 1e30 m would
# also overflow the trainer's float32 features). The translation bound is a setting (`max_translation_m`).
MAX_TRANSLATION_M = 1000.0
MAX_ABS_ROTATION = 100.0  # rad, per axis-angle component (about 16 turns)
MAX_ABS_BETA = 100.0
MIN_RATE, MAX_RATE = 1.0, 1000.0  # frames per second (AMASS: 60–250, HumanML3D: 20)


class MotionIngestError(ValueError):
    """An input file cannot be converted; the message names the file and the reason."""


def sample_key(path: Path, root: Path) -> str:
    """A WebDataset-safe key ([0-9a-z_-], no dots) from the path relative to the input folder: a readable slug
    and 12 hex digits of the sha256 of the exact relative path, so paths that slug alike stay distinct."""
    relative = (path.relative_to(root) if path != root else Path(path.name)).as_posix()
    slug = re.sub(r"[^0-9a-z_-]+", "_", relative.rsplit(".", 1)[0].lower()).strip("_-") or "m"
    key = f"{slug}-{hashlib.sha256(relative.encode()).hexdigest()[:12]}"
    return key if KEY_RE.match(key) else f"m{key}"


def read_caption(captions_dir: Path | None, path: Path) -> str | None:
    if captions_dir is None:
        return None
    text_file = captions_dir / f"{path.stem}.txt"
    if not text_file.exists():
        return None
    first = text_file.read_text().strip().splitlines()
    return first[0].split("#", 1)[0].strip() if first else None


@dataclass
class Sequence:
    """One AMASS-style input file's arrays, checked: poses (F, 72 | 156 | 165), trans (F, 3), betas (F, 10)."""

    poses: np.ndarray
    trans: np.ndarray
    betas: np.ndarray
    rate: float

    @property
    def frames(self) -> int:
        return self.poses.shape[0]


def read_sequence(path: Path, max_translation_m: float = MAX_TRANSLATION_M) -> Sequence | None:
    """The checked arrays of one AMASS-style file, or None when it has no `poses` (AMASS's `shape.npz`).
    MotionIngestError naming the file and the reason for anything else: not a readable .npz, arrays that are not
    numbers or have the wrong shape, no frames, a frame rate outside 1–1000 fps, NaN / inf anywhere (checked
    before resampling, so a value on a frame that resampling would drop still counts), or magnitudes no body
    has: a translation beyond `max_translation_m` metres, a joint rotation beyond ±100 rad, a shape
    coefficient beyond ±100."""
    def fail(reason: str) -> MotionIngestError:
        return MotionIngestError(f"{path}: {reason}")

    if path.stat().st_size == 0:
        raise fail("empty file")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "poses" not in data:
                return None
            arrays = {k: data[k] for k in data.files if k in ("poses", "trans", "betas", "mocap_framerate",
                                                                "mocap_frame_rate")}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:  # not a zip, truncated, object arrays
        raise fail(f"not a readable .npz ({error})") from None
    for name, values in arrays.items():
        if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
            raise fail(f"{name!r} is not numeric (dtype {values.dtype})")
        bad = ~np.isfinite(values.astype(np.float64))
        if bad.any():
            frames_hit = np.unique(np.nonzero(bad)[0]).tolist() if bad.ndim else []
            raise fail(f"{name!r} holds NaN or inf" +
                       (f" (frames {frames_hit[:5]}{'…' if len(frames_hit) > 5 else ''})" if frames_hit else ""))
    poses = arrays["poses"].astype(np.float64)
    if poses.ndim != 2 or poses.shape[1] not in (72, 156, 165):
        raise fail(f"'poses' has shape {poses.shape}, expected (F, 72 | 156 | 165)")
    frames = poses.shape[0]
    if frames == 0:
        raise fail("'poses' has no frames")
    if "trans" not in arrays:
        raise fail("'trans' missing")
    if arrays["trans"].shape != (frames, 3):
        raise fail(f"'trans' has shape {arrays['trans'].shape}, expected ({frames}, 3)")
    rate_name = "mocap_framerate" if "mocap_framerate" in arrays else "mocap_frame_rate"
    if rate_name not in arrays:
        raise fail("no 'mocap_framerate'")
    if arrays[rate_name].size != 1:
        raise fail(f"{rate_name!r} has shape {arrays[rate_name].shape}, expected one number")
    rate = float(arrays[rate_name].reshape(()))
    if not MIN_RATE <= rate <= MAX_RATE:
        raise fail(f"{rate_name!r} is {rate:g}, expected {MIN_RATE:g} to {MAX_RATE:g} frames per second")
    betas = arrays.get("betas", np.zeros(10)).astype(np.float64)
    if betas.ndim not in (1, 2) or betas.shape[-1] == 0 or (betas.ndim == 2 and betas.shape[0] != frames):
        raise fail(f"'betas' has shape {betas.shape}, expected (K,) or ({frames}, K)")
    betas = np.concatenate([betas, np.zeros((*betas.shape[:-1], max(0, 10 - betas.shape[-1])))], axis=-1)[..., :10]
    betas = np.broadcast_to(betas, (frames, 10)) if betas.ndim == 1 else betas
    trans = arrays["trans"].astype(np.float64)
    distance = np.linalg.norm(trans, axis=1)
    if distance.max() > max_translation_m:
        raise fail(f"'trans' reaches {distance.max():.3g} m from the origin (frame {int(distance.argmax())}), "
                   f"beyond the {max_translation_m:g} m bound (max_translation_m)")
    for name, values, bound, unit in (("poses", poses, MAX_ABS_ROTATION, " rad"), ("betas", betas, MAX_ABS_BETA, "")):
        if np.abs(values).max() > bound:
            raise fail(f"{name!r} reaches {np.abs(values).max():.3g}{unit}, beyond ±{bound:g}{unit}")
    return Sequence(poses=poses, trans=trans, betas=betas, rate=rate)


def amass_to_clip(path: Path, body_model, fps: float = 30.0, camera_distance: float = 4.0,
                  max_translation_m: float = MAX_TRANSLATION_M) -> tuple[MotionClip, Sequence] | None:
    """One AMASS-style file → (a MotionClip in the nominal camera frame, the checked input arrays), or None when
    it has no `poses`; MotionIngestError naming the file for a bad one (`read_sequence`)."""
    sequence = read_sequence(path, max_translation_m)
    if sequence is None:
        return None
    poses, betas, trans, rate, frames = sequence.poses, sequence.betas, sequence.trans, sequence.rate, sequence.frames
    rotations = np.zeros((frames, 24, 3))
    rotations[:, :22] = poses[:, :66].reshape(frames, 22, 3)
    if poses.shape[1] == 72:
        rotations[:, 22:] = poses[:, 66:72].reshape(frames, 2, 3)

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
        image_size=np.array(NOMINAL_IMAGE_SIZE, np.int32), valid=np.ones(frames, bool), fps=rate,
        body_model=body_model.name,
    )
    if abs(rate - fps) > 1e-6:
        duration = (frames - 1) / rate
        clip = resample_motion(clip, window_times(int(np.floor(duration * fps + 1e-6)) + 1, fps, 0.0))
    from humove.motion.body_model import clip_joints

    clip.joints = clip_joints(body_model, clip.betas, clip.global_orient, clip.body_pose, clip.transl)
    return clip.validate(), sequence


def ingest_motion(
    source: str | Path,
    out_dir: str | Path,
    body_model: str = "smpl-neutral",
    smpl_dir: str | Path | None = None,
    fps: float = 30.0,
    per_shard: int = 500,
    split: str = "train",
    captions_dir: str | Path | None = None,
    camera_distance: float = 4.0,
    stats_frames: int = 81,
    stats_fps: float = 16.0,
    max_translation_m: float = MAX_TRANSLATION_M,
) -> dict:
    """Convert every motion `.npz` under `source` (a file or folder, recursive) into a dataset in `out_dir`.
    A bad file is skipped with its reason (`read_sequence`), the others are written.

    Returns the summary: samples, skipped (count) and skipped_files ([{file, reason}], paths relative to the
    source), shards, body_model, fps, stats_window, feature_stats. Raises `MotionIngestError` when no file
    converts (naming each file's reason)."""
    from humove.motion.body_model import load_body_model
    from humove.motion.representation import FeatureMoments, clip_moments

    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise FileNotFoundError(f"motion source {source} does not exist")
    files = [source] if source.is_file() else sorted(source.rglob("*.npz"))
    if not files:
        raise MotionIngestError(f"no .npz files under {source}")
    root = source.parent if source.is_file() else source
    model = load_body_model(body_model, smpl_dir)
    captions = Path(captions_dir) if captions_dir else None

    keys: dict[str, str] = {}
    moments = FeatureMoments()
    skipped: list[dict] = []
    written = 0
    with DatasetBuilder(str(out_dir), max_samples_per_shard=per_shard) as builder:
        for path in files:
            relative = path.relative_to(root).as_posix()
            key = sample_key(path, root)
            if key in keys:  # never expected (the key hashes the relative path): refuse rather than overwrite
                raise MotionIngestError(f"{relative} and {keys[key]} map to the same sample key {key!r}")
            keys[key] = relative
            try:
                converted = amass_to_clip(path, model, fps=fps, camera_distance=camera_distance,
                                          max_translation_m=max_translation_m)
                if converted is None:
                    raise MotionIngestError(f"{path}: no 'poses' (not a motion sequence, e.g. AMASS shape.npz)")
                clip, sequence = converted
                metadata = _metadata(key, path, relative, clip, sequence, split, read_caption(captions, path))
                sample = encode_sample(metadata, None, motion_to_bytes(clip))
            # Shape and value errors that slip past read_sequence's checks still skip only this file.
            except (MotionFileError, ValueError, KeyError, TypeError, IndexError, OSError, zipfile.BadZipFile) \
                    as error:
                message = str(error).removeprefix(f"{path}: ").replace(str(path), relative)
                reason = " ".join(message.split()) or type(error).__name__  # one line
                log.warning("skipping %s: %s", relative, reason)
                skipped.append({"file": relative, "reason": reason})
                continue
            builder.add(sample, metadata)
            moments = moments.merge(clip_moments(clip, (stats_frames - 1) / stats_fps))
            written += 1
        if not written:
            reasons = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:10])
            raise MotionIngestError(f"no motion sequences among {len(files)} .npz files under {source} ({reasons})")
        stats = moments.to_stats()
        producer = {"tool": "humove ingest-motion", "body_model": model.name, "fps": fps,
                    "camera_distance": camera_distance, "stats_window": {"frames": stats_frames, "fps": stats_fps},
                    "max_translation_m": max_translation_m}
        manifest = builder.publish(splits=(split,), feature_stats=stats.to_dict(), producer=producer)
    summary = {"samples": written, "skipped": len(skipped), "skipped_files": skipped,
               "shards": [s.name for s in manifest.shards], "body_model": model.name, "fps": fps,
               "stats_window": {"frames": stats_frames, "fps": stats_fps}, "feature_stats": stats.to_dict()}
    log.info("wrote %d motion samples in %d shards to %s (%d files skipped)", written, len(manifest.shards),
             out_dir, len(skipped))
    return summary


def _metadata(key: str, path: Path, relative: str, clip: MotionClip, sequence: Sequence, split: str,
              caption: str | None):
    """The fixed sample metadata of a motion-only sample: no video; `clip` covers the whole sequence and
    `source` describes the input file (its path relative to the input folder, never an absolute one)."""
    source_frames, rate = sequence.frames, sequence.rate
    duration = clip.num_frames / clip.fps
    # The whole sequence is both the shot and the clip: source frames at the mocap rate, `num_frames` at `fps`.
    return filled_metadata(
        key=key, clip_id=key, video_id=ids.video_id_from_file(str(path)), split=split, fps=clip.fps,
        num_frames=clip.num_frames, duration_s=duration, has_video=False, has_motion=True, caption=caption,
        shot={"source_end_frame": source_frames, "source_start_s": 0.0, "source_end_s": source_frames / rate,
              "num_frames": clip.num_frames},
        clip={"source_start_frame": 0, "source_end_frame": source_frames, "source_end_s": source_frames / rate,
              "shot_end_frame": clip.num_frames},
        source={"uri": relative, "size_bytes": path.stat().st_size, "duration_s": source_frames / rate,
                "fps": rate, "num_frames": source_frames},
    )
