"""Compare two sets of motion clips by key (`humove eval-motion`): MPJPE, PA-MPJPE, acceleration error, foot
sliding where the truth's feet stand, and depth drift (see `humove.motion.evaluate`).

A motion set is one of:
- a run dir (`run.json`): the final motion files of the `smooth` stage's kept clips, keyed by clip id;
- a dataset folder (`dataset.json`): the `{key}.motion.npz` members of its shards, keyed by sample key;
- a folder of `<key>.motion.npz` files (e.g. `humove sample` outputs or exported ground truth).

Frames count where both sides are valid. `demo_ground_truth(run_dir)` builds the ground truth of a demo run:
each kept clip's frames are matched, by time, to the rendered source video's known motion.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from humove.artifacts import read_npz
from humove.motion.evaluate import evaluate_joints
from humove.schemas.motion import MotionClip, load_motion
from humove.storage import Storage

MOTION_SUFFIX = ".motion.npz"


@dataclass
class Comparison:
    key: str
    frames: int           # frames valid in both
    mpjpe_mm: float       # root-aligned
    pa_mpjpe_mm: float    # Procrustes-aligned per frame
    accel_error_mm: float  # per frame², on consecutive valid triples
    foot_sliding_mps: float = float("nan")  # predicted feet's speed where the truth's feet stand on the floor
    depth_drift_m: float = float("nan")     # range of the root depth error, a constant scale removed

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in vars(self).items()}


def load_motion_set(path: str) -> dict[str, MotionClip]:
    """key → MotionClip, from a run dir, a dataset folder or a folder of motion files (see module docstring)."""
    storage = Storage(path)
    if storage.exists(storage.join("run.json")):
        return _run_dir_motions(path)
    if storage.exists(storage.join("dataset.json")):
        return _dataset_motions(path)
    files = storage.list(path, suffix=MOTION_SUFFIX)
    if not files:
        raise FileNotFoundError(f"{path}: not a run dir, a dataset folder, or a folder of *{MOTION_SUFFIX} files")
    return {Path(url).name[: -len(MOTION_SUFFIX)]: load_motion(storage.read_bytes(url)) for url in files}


def _run_dir_motions(run_dir: str) -> dict[str, MotionClip]:
    from humove.ledger import Ledger

    ledger = Ledger(run_dir)
    if "smooth" not in ledger.stage_names():
        raise ValueError(f"{run_dir}: the pipeline has no smooth stage, so no motion files")
    rows = ledger.records("smooth").to_pylist()
    return {r["id"]: load_motion(Storage(r["motion_path"]).read_bytes(r["motion_path"]))
            for r in rows if r["status"] == "ok" and r.get("motion_path")}


def _dataset_motions(folder: str) -> dict[str, MotionClip]:
    """The `{key}.motion.npz` members of the dataset's shards, read as a stream (no shard held whole)."""
    import tarfile

    from humove.schemas.shard import list_shards
    from humove.storage import open_url

    motions = {}
    for url in list_shards(folder):
        with open_url(url) as raw, tarfile.open(fileobj=raw, mode="r|") as shard:
            for member in shard:
                if member.isfile() and member.name.endswith(MOTION_SUFFIX):
                    motions[member.name[: -len(MOTION_SUFFIX)]] = load_motion(shard.extractfile(member).read())
    return motions


def compare_sets(pred: dict[str, MotionClip], truth: dict[str, MotionClip]) -> list[Comparison]:
    """One Comparison per key present in both sets (sorted by key)."""
    rows = []
    for key in sorted(pred.keys() & truth.keys()):
        p, t = pred[key], truth[key]
        frames = min(p.num_frames, t.num_frames)
        valid = p.valid[:frames] & t.valid[:frames]
        scores = evaluate_joints(p.joints[:frames], t.joints[:frames], valid, fps=t.fps)
        rows.append(Comparison(key, int(valid.sum()), scores["mpjpe_mm"], scores["pa_mpjpe_mm"],
                               scores["accel_error_mm"], scores["foot_sliding_mps"], scores["depth_drift_m"]))
    return rows


def overall(rows: list[Comparison]) -> Comparison:
    """Frame-weighted means over all compared clips."""
    weights = np.array([r.frames for r in rows], float)

    def mean(name: str) -> float:
        values = np.array([getattr(r, name) for r in rows], float)
        ok = np.isfinite(values) & (weights > 0)
        return float(np.average(values[ok], weights=weights[ok])) if ok.any() else float("nan")

    return Comparison("overall", int(weights.sum()), mean("mpjpe_mm"), mean("pa_mpjpe_mm"), mean("accel_error_mm"),
                      mean("foot_sliding_mps"), mean("depth_drift_m"))


def ground_truth_for(pred: str, truth: str, predicted: dict[str, MotionClip]) -> dict[str, MotionClip]:
    """The set `pred` is compared with: `demo` → `demo_ground_truth(pred)`; a folder of source-video motion
    (the demo's `samples/`, keyed by video name) against a run dir keyed by clip → each clip's frames matched by
    time as in `demo_ground_truth`; else `load_motion_set(truth)`."""
    if truth == "demo":
        return demo_ground_truth(pred)
    known = load_motion_set(truth)
    run_dir = Storage(pred).exists(Storage(pred).join("run.json"))
    if run_dir and not known.keys() & predicted.keys() and not Storage(truth).exists(Storage(truth).join("run.json")):
        return demo_ground_truth(pred, truth) or known
    return known


def demo_ground_truth(run_dir: str, samples: str | None = None) -> dict[str, MotionClip]:
    """Known motion of a demo run's kept clips, frame by frame at the clip's times, keyed by clip id.

    The rendered demo videos carry their motion in `<samples>/<name>.motion.npz` (per source frame, with
    `frame_time_s`; `samples`: default `<run_dir>/samples`); a clip frame i shows the source frame nearest to
    `start_s + i / fps`."""
    from humove.clips import current_clip
    from humove.ledger import Ledger
    from humove.samples import ground_truth_path

    ledger = Ledger(run_dir)
    videos = {r["id"]: r for r in ledger.records("ingest").to_pylist()}
    joined = {r["id"]: r for r in ledger.records("shots").to_pylist()}
    if "person" in ledger.stage_names():  # a trimmed clip starts later in the source
        for r in ledger.records("person").to_pylist():
            joined.setdefault(r["id"], {}).update({k: v for k, v in r.items() if k.startswith("person_")})
    truth = {}
    for clip_id in _run_dir_motions(run_dir):
        row = joined[clip_id]
        name = (videos[row["video_id"]].get("source_uri") or "").rsplit("/", 1)[-1]  # builtin:demo-videos/<name>
        gt_url = ground_truth_path(Storage(samples).join(name) if samples else ledger.storage.join("samples", name)) \
            if name else None
        if not gt_url or not Storage(gt_url).exists(gt_url):
            continue
        gt = load_motion(Storage(gt_url).read_bytes(gt_url))
        times = read_npz(gt_url)["frame_time_s"]
        clip = current_clip(row)
        at = clip.start_s + np.arange(clip.num_frames) / clip.fps
        index = np.abs(times[None, :] - at[:, None]).argmin(axis=1)
        truth[clip_id] = MotionClip(
            betas=gt.betas[index], global_orient=gt.global_orient[index], body_pose=gt.body_pose[index],
            transl=gt.transl[index], joints=gt.joints[index], focal=gt.focal[index], image_size=gt.image_size,
            valid=gt.valid[index], fps=clip.fps, body_model=gt.body_model)
    return truth


def write_results(rows: list[Comparison], out: str) -> None:
    payload = {"clips": [r.as_dict() for r in rows], "overall": overall(rows).as_dict() if rows else None}
    Storage(out).write_text(out, json.dumps(payload, indent=2))
