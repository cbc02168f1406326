"""Training data straight from HuMoVe WebDataset shards (`humove-{split}-{index:06d}.tar`).

`DataConfig.shards` names dataset folders (local or URLs); the shards of each are those its `dataset.json` names
(`humove.schemas.shard.read_dataset`, splits `DataConfig.splits`), never a glob, so a half-written dataset is an
error rather than training data, and each shard's checksum in it is checked while the shard streams
(`iterate_shard`). A paired sample is `{key}.mp4` + `{key}.json` (the fixed metadata of
`humove.schemas.shard`: `caption`, `fps`, `num_frames`, `has_video`, …) + `{key}.motion.npz`; a motion-only
sample (phase 1, `humove ingest-motion`) has `has_video` false and no `.mp4`. Optional caches:
`{key}.latents.npy` (C, T_lat, H/s, W/s) VAE latents (C channels, spatial stride s: 16 and 8 for the Wan2.1 VAE,
48 and 16 for Wan2.2 TI2V-5B's; the loader is given the model's `latent_shape`) and `{key}.text.npy` (L, D) text
embeddings of the clip's first window (start 0), written by `humove.model.cache`; when present (and `use_cached`),
they replace video decoding / text encoding.

Per sample we cut one window of `num_frames` frames (1 + 4k, the VAE's latent layout) at the target `fps`:
- window start: uniform over the clip, drawn from (seed, epoch, key) so that a resumed run sees the same window;
- video: for each target time the nearest source frame, decoded with PyAV, resized to cover height×width and
  centre-cropped;
- motion: the same times; positions, shape and focal interpolated linearly, rotations by slerp, a frame (and each
  joint's `joint_valid`) is valid only when both source frames around it are; then `motion_to_features` (235
  values per frame). The loss is masked per frame (`motion_valid`); joints hidden on a valid frame still count.
Clips shorter than the window, or paired samples without motion, are skipped (with a log line naming the key).

Distribution: shards are split over every (rank, DataLoader worker); with fewer shards than workers, samples are
split instead. Each worker shuffles with a buffer seeded by (seed, epoch, worker) and makes its own batches. The
stream is infinite (epochs repeat with a new order) unless `max_epochs` is set.

Exact resume: every batch carries its worker's position (epoch, samples taken from the shuffle buffer). A
`DataPosition` records what the trainer consumed; a new loader started from it maps its physical workers onto the
logical ones so that DataLoader's round-robin continues with the same worker, and each worker skips (without
decoding) what it had already produced. The number of workers and ranks must stay the same.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch
from blake3 import blake3
from scipy.spatial.transform import Rotation, Slerp
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_iterator

from humove.schemas.motion import MotionClip, load_motion
from humove.schemas.shard import MANIFEST_FILE, DatasetError, ShardInfo, parse_metadata, read_dataset
from humove.storage import Storage

log = logging.getLogger(__name__)
_MOMENTS_FRAMES = 2048  # motion frames converted together when computing normalisation statistics


class ShardDataError(ValueError):
    """A shard sample cannot be used; the message names the shard, the key and the reason."""


@dataclass
class DataConfig:
    """Where the shards are and what one training sample looks like."""

    shards: list[str] = field(default_factory=list)  # dataset folders (or URLs), each with its dataset.json
    splits: list[str] = field(default_factory=lambda: ["train"])  # which of their splits to read
    motion_only: bool = False  # phase 1: read motion (+ caption) only
    num_frames: int = 81
    fps: float = 16.0
    height: int = 480
    width: int = 832
    batch_size: int = 1
    num_workers: int = 2
    shuffle_buffer: int = 64
    seed: int = 0
    random_window: bool = True
    use_cached: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.shards, str):
            self.shards = [self.shards]
        if isinstance(self.splits, str):
            self.splits = [self.splits]
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise ValueError(f"data num_frames={self.num_frames}: the VAE needs 1 + 4k frames (e.g. 81)")
        if self.height % 16 or self.width % 16:
            raise ValueError(f"data size {self.height}×{self.width}: height and width must be multiples of 16")
        if self.fps <= 0 or self.batch_size < 1 or self.num_workers < 0 or self.shuffle_buffer < 1:
            raise ValueError("data fps, batch_size and shuffle_buffer must be positive, num_workers >= 0")


# Shard discovery ----------------------------------------------------------------------------------------------
def shard_entries(specs: list[str], splits: list[str] | tuple[str, ...] = ("train",)) -> dict[str, ShardInfo]:
    """Shard URL → its `dataset.json` entry (size, checksum) for the shards of `splits` of each dataset folder in
    `specs` (a folder, or the path of its dataset.json); a clear error for a folder without a complete
    dataset.json, a glob or a bare .tar, and when no shard is left."""
    entries: dict[str, ShardInfo] = {}
    for spec in specs:
        spec = str(spec)
        if any(c in spec for c in "*?[") or spec.endswith(".tar"):
            raise ShardDataError(f"data shards {spec!r}: give the dataset folder; its {MANIFEST_FILE} names the "
                                 "shards (readers never glob *.tar, which could pick up a half-written build)")
        folder = (spec[: -len(MANIFEST_FILE)].rstrip("/") or ".") if spec.endswith(MANIFEST_FILE) else spec
        try:
            manifest = read_dataset(folder)
        except DatasetError as error:
            raise ShardDataError(str(error)) from error
        storage = Storage(folder)
        entries.update({storage.join(s.name): s for s in manifest.shards if s.split in splits})
    if not entries:
        raise ShardDataError(f"no shards of split(s) {list(splits)} in {specs}")
    return entries


def list_shards(specs: list[str], splits: list[str] | tuple[str, ...] = ("train",)) -> list[str]:
    """The shard URLs of `shard_entries`, in dataset.json order."""
    return list(shard_entries(specs, splits))


def read_dataset_info(shard_url: str) -> dict:
    """The `dataset.json` (as a dict) of the dataset folder holding a shard listed by `list_shards`."""
    parent = shard_url.rsplit("/", 1)[0] if "/" in shard_url else "."
    storage = Storage(parent)
    return json.loads(storage.read_text(storage.join(MANIFEST_FILE)))


class _HashingReader:
    """The byte stream of one shard for the tar reader, hashed (and counted) as it is read, so that the shard's
    checksum is checked in the same pass as its samples are read, without a second read or the shard in memory."""

    def __init__(self, stream, url: str, shard: ShardInfo):
        self.stream, self.url, self.shard = stream, url, shard
        self.algorithm, self.expected = shard.checksum()
        self.digest = blake3() if self.algorithm == "blake3" else hashlib.sha256()
        self.size = 0
        self.checked = False

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data

    def check(self) -> None:
        """Read what the tar reader left (the end-of-archive blocks), then compare with dataset.json;
        ShardDataError naming the shard when they differ."""
        if self.checked:
            return
        self.checked = True
        while self.read(1 << 20):
            pass
        if self.size != self.shard.bytes or self.digest.hexdigest() != self.expected:
            raise ShardDataError(
                f"shard {self.url} does not match its {self.algorithm} in {MANIFEST_FILE} ({self.size} bytes read, "
                f"{self.shard.bytes} recorded): it changed after the dataset was published (edited, or corrupted "
                "on disk or in transfer); rebuild or copy the dataset again")


def _checked_at_end(stream: _HashingReader) -> Iterator[dict]:
    """No items: checks the stream's checksum once the tar reader is done with it."""
    stream.check()
    yield from ()


def shard_entry(url: str) -> ShardInfo:
    """The dataset.json entry of the shard at `url` (its folder's manifest)."""
    parent, name = url.rsplit("/", 1) if "/" in url else (".", url)
    try:
        manifest = read_dataset(parent)
    except DatasetError as error:
        raise ShardDataError(str(error)) from error
    for shard in manifest.shards:
        if shard.name == name:
            return shard
    raise ShardDataError(f"shard {url} is not named in {parent}/{MANIFEST_FILE}")


def iterate_shard(url: str, shard: ShardInfo | None = None) -> Iterator[dict]:
    """Raw samples of one tar shard: {"__key__", "__url__", "<ext>": bytes, …}, the shard's checksum checked in
    the same pass: its bytes are hashed as the tar reader reads them and, once the last one has been read,
    compared with the BLAKE3 (SHA-256 in older datasets) of its dataset.json entry (`shard`, looked up when not
    given). A mismatch is a ShardDataError naming the shard, raised before the shard's last sample is handed out
    (the samples before it have been: a shard is streamed, never held in memory whole). A tar the reader cannot
    parse is reported as such a mismatch when its bytes differ from the published ones."""
    parent, name = (url.rsplit("/", 1) if "/" in url else (".", url))
    shard = shard if shard is not None else shard_entry(url)
    storage = Storage(parent)
    with storage.open(storage.join(name)) as raw:
        stream = _HashingReader(raw, url, shard)
        files = ({**entry, "__url__": url} for entry in tar_file_iterator(stream))
        try:
            yield from group_by_keys(itertools.chain(files, _checked_at_end(stream)))
        except Exception:
            stream.check()  # a changed shard is the likelier reason, and the one to report
            raise


# Decoding -----------------------------------------------------------------------------------------------------
def window_times(num_frames: int, fps: float, start: float) -> np.ndarray:
    """(N,) target times in seconds."""
    return start + np.arange(num_frames, dtype=np.float64) / fps


def choose_window_start(duration: float, num_frames: int, fps: float, rng: random.Random | None) -> float | None:
    """A start time such that the window fits in [0, duration]; None when the clip is too short."""
    span = (num_frames - 1) / fps
    slack = duration - span
    if slack < -1e-6:
        return None
    return rng.uniform(0.0, max(slack, 0.0)) if rng is not None else 0.0


def decode_video_window(data: bytes, times: np.ndarray, height: int, width: int,
                        source_fps: float | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB: for each time the nearest frame, resized to cover H×W and centre-cropped."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = source_fps or float(stream.average_rate or 0)
        if fps <= 0:
            raise ShardDataError("video has no frame rate")
        wanted = np.rint(times * fps).astype(np.int64)
        last = int(wanted.max())
        needed = set(wanted.tolist())
        frames: dict[int, np.ndarray] = {}
        index = -1
        for index, frame in enumerate(container.decode(stream)):
            if index in needed:
                scale = max(height / frame.height, width / frame.width)
                nh, nw = max(height, round(frame.height * scale)), max(width, round(frame.width * scale))
                rgb = frame.reformat(width=nw, height=nh, format="rgb24").to_ndarray()
                top, left = (nh - height) // 2, (nw - width) // 2
                frames[index] = rgb[top:top + height, left:left + width]
            if index >= last:
                break
    missing = sorted(set(wanted.tolist()) - frames.keys())
    if missing:
        # Timestamps rounding can point one frame past the end: fall back to the last decoded frame.
        if index >= 0 and all(m <= index + 1 for m in missing) and frames:
            tail = frames[max(frames)]
            frames.update({m: tail for m in missing})
        else:
            raise ShardDataError(f"video has {index + 1} frames, window needs frame {missing[0]}")
    return np.stack([frames[i] for i in wanted.tolist()])


def resample_motion(clip: MotionClip, times: np.ndarray, fps: float | None = None) -> MotionClip:
    """The motion at the given times (seconds from the clip's first frame): lerp / slerp between source frames.
    `fps` is the rate recorded on the result (default: from the first two times)."""
    source = np.arange(clip.num_frames, dtype=np.float64) / clip.fps
    times = np.clip(times, 0.0, source[-1])
    if clip.num_frames == 1:
        return _take_frames(clip, np.zeros(len(times), dtype=np.int64), clip.fps)

    def lerp(values: np.ndarray) -> np.ndarray:
        flat = values.reshape(clip.num_frames, -1)
        out = np.stack([np.interp(times, source, flat[:, j]) for j in range(flat.shape[1])], axis=1)
        return out.reshape(len(times), *values.shape[1:]).astype(np.float32)

    rotations = np.concatenate([clip.global_orient[:, None], clip.body_rotations], axis=1)  # (F, 24, 3)
    resampled = np.stack([Slerp(source, Rotation.from_rotvec(rotations[:, j]))(times).as_rotvec()
                          for j in range(rotations.shape[1])], axis=1).astype(np.float32)
    lower = np.clip(np.floor(times * clip.fps + 1e-6).astype(np.int64), 0, clip.num_frames - 1)
    upper = np.clip(np.ceil(times * clip.fps - 1e-6).astype(np.int64), 0, clip.num_frames - 1)
    fps = fps or (1.0 / (times[1] - times[0]) if len(times) > 1 else clip.fps)
    return MotionClip(
        betas=lerp(clip.betas), global_orient=resampled[:, 0], body_pose=resampled[:, 1:],
        transl=lerp(clip.transl), joints=lerp(clip.joints), focal=lerp(clip.focal),
        image_size=clip.image_size.copy(), valid=clip.valid[lower] & clip.valid[upper],
        fps=float(fps), body_model=clip.body_model, joint_valid=clip.joint_valid[lower] & clip.joint_valid[upper],
    ).validate()


def _take_frames(clip: MotionClip, index: np.ndarray, fps: float) -> MotionClip:
    return MotionClip(
        betas=clip.betas[index], global_orient=clip.global_orient[index], body_pose=clip.body_pose[index],
        transl=clip.transl[index], joints=clip.joints[index], focal=clip.focal[index],
        image_size=clip.image_size.copy(), valid=clip.valid[index], fps=fps, body_model=clip.body_model,
        joint_valid=clip.joint_valid[index],
    )


def pixels_to_video(pixels: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 → (B, 3, T, H, W) float in [-1, 1] (the VAE's input)."""
    return pixels.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def wan21_latent_shape(config: DataConfig) -> tuple[int, int, int, int]:
    """(16, T_lat, H/8, W/8): the Wan2.1 VAE's latents of one window (the default when no model layout is given)."""
    return 16, 1 + (config.num_frames - 1) // 4, config.height // 8, config.width // 8


# One sample ---------------------------------------------------------------------------------------------------
def decode_sample(raw: dict, config: DataConfig, rng: random.Random | None,
                  latent_shape: tuple[int, ...] | None = None) -> dict | None:
    """A raw shard sample → training sample, or None when it cannot be used (logged).

    latent_shape: the (C, T_lat, H_lat, W_lat) cached latents must have (`DiTConfig.latent_shape` of the window);
    default the Wan2.1 VAE's (16, T_lat, H/8, W/8).
    """
    key, url = raw["__key__"], raw.get("__url__", "?")
    try:
        if "json" not in raw:
            raise ShardDataError("no .json metadata member")
        meta = parse_metadata(raw["json"], f"sample {key!r}").model_dump()
        if not meta["has_motion"] or "motion.npz" not in raw:
            log.info("skipping %s in %s: no motion file", key, url)
            return None
        motion = load_motion(raw["motion.npz"])
        latents = raw.get("latents.npy") if config.use_cached else None
        has_video = not config.motion_only and (latents is not None or (meta["has_video"] and "mp4" in raw))
        if not config.motion_only and not has_video:
            log.info("skipping %s in %s: no video", key, url)
            return None
        duration = (motion.num_frames - 1) / motion.fps
        if has_video and latents is not None:  # caches hold the clip's first window: start at 0
            start = choose_window_start(duration, config.num_frames, config.fps, None)
        else:
            if has_video:
                video_frames = int(meta.get("num_frames") or motion.num_frames)
                video_fps = float(meta.get("fps") or motion.fps)
                duration = min(duration, (video_frames - 1) / video_fps)
            start = choose_window_start(duration, config.num_frames, config.fps,
                                        rng if config.random_window else None)
        if start is None:
            log.info("skipping %s in %s: %.2f s is shorter than the %d-frame window", key, url, duration,
                     config.num_frames)
            return None
        from humove.motion.representation import motion_to_features

        times = window_times(config.num_frames, config.fps, start)
        if has_video:
            # The video takes each time's nearest source frame: sample the motion at exactly those frames, so the
            # two stay aligned (otherwise up to half a source frame apart).
            video_fps = float(meta.get("fps") or motion.fps)
            times = np.rint(times * video_fps) / video_fps
        window_motion = resample_motion(motion, times, fps=config.fps)
        sample = {
            "key": key,
            "caption": str(meta.get("caption") or ""),
            "motion": torch.from_numpy(np.asarray(motion_to_features(window_motion), dtype=np.float32)),
            "motion_valid": torch.from_numpy(window_motion.valid.copy()),
        }
        if config.use_cached and "text.npy" in raw:
            sample["text"] = torch.from_numpy(np.load(io.BytesIO(raw["text.npy"])).astype(np.float32))
        if has_video and latents is not None:
            array = np.load(io.BytesIO(latents)).astype(np.float32)
            expected = tuple(latent_shape) if latent_shape is not None else wan21_latent_shape(config)
            if array.shape != expected:
                raise ShardDataError(f"cached latents have shape {array.shape}, config needs {expected}")
            sample["latents"] = torch.from_numpy(array)
        elif has_video:
            fps = float(meta["fps"]) if meta.get("fps") else None
            sample["video"] = torch.from_numpy(
                decode_video_window(raw["mp4"], times, config.height, config.width, source_fps=fps))
        return sample
    except (ValueError, OSError, EOFError, KeyError, av.error.FFmpegError) as error:  # corrupt files included
        raise ShardDataError(f"shard {url}, sample {key!r}: {error}") from error


def collate(samples: list[dict]) -> dict:
    """Stack samples into a batch; keys, captions as lists; optional tensors only when every sample has them."""
    batch: dict = {"keys": [s["key"] for s in samples], "captions": [s["caption"] for s in samples]}
    for name in ("motion", "motion_valid", "video", "latents"):
        if all(name in s for s in samples):
            batch[name] = torch.stack([s[name] for s in samples])
    if all("text" in s for s in samples):  # cached embeddings may differ in length: zero-pad (as Wan does)
        length = max(s["text"].shape[0] for s in samples)
        batch["text"] = torch.stack([torch.nn.functional.pad(s["text"], (0, 0, 0, length - s["text"].shape[0]))
                                     for s in samples])
    return batch


# Streaming dataset --------------------------------------------------------------------------------------------
class ShardDataset(IterableDataset):
    """Batches from shards for one rank; see the module docstring for splitting, shuffling and resume.

    resume: a `DataPosition.to_dict()` from a checkpoint of this rank (or None to start afresh).
    latent_shape: the shape cached latents must have (see `decode_sample`).
    """

    def __init__(self, config: DataConfig, rank: int = 0, world_size: int = 1, resume: dict | None = None,
                 max_epochs: int | None = None, latent_shape: tuple[int, ...] | None = None):
        self.config, self.rank, self.world_size = config, rank, world_size
        self.shards = shard_entries(config.shards, config.splits)  # URL → size and checksum
        self.resume, self.max_epochs = resume, max_epochs
        self.latent_shape = tuple(latent_shape) if latent_shape is not None else None

    def _worker_slot(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, physical = (info.num_workers, info.id) if info is not None else (1, 0)
        offset = 0
        if self.resume:
            if self.resume["num_workers"] != workers:
                raise ShardDataError(f"resume needs the same number of data workers ({self.resume['num_workers']}), "
                                 f"got {workers}")
            offset = self.resume["batches"] % workers
        return (physical + offset) % workers, workers

    def _raw_stream(self, epoch: int, worker: int, total: int) -> Iterator[dict]:
        order = list(self.shards)
        random.Random(f"{self.config.seed}-shards-{epoch}").shuffle(order)
        if len(order) >= total:
            for url in order[worker::total]:
                yield from iterate_shard(url, self.shards[url])
        else:  # fewer shards than workers: split samples instead
            index = 0
            for url in order:
                for raw in iterate_shard(url, self.shards[url]):
                    if index % total == worker:
                        yield raw
                    index += 1

    def _shuffled(self, stream: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        buffer: list[dict] = []
        for raw in stream:
            buffer.append(raw)
            if len(buffer) >= self.config.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        while buffer:
            yield buffer.pop(rng.randrange(len(buffer)))

    def __iter__(self) -> Iterator[dict]:
        try:
            yield from self._batches()
        except ShardDataError as error:
            if get_worker_info() is None:
                raise
            # In a worker process: hand the one-line message to the main process as a batch (`ShardLoader` raises
            # it there); raised here, DataLoader would re-raise it wrapped in this worker's traceback.
            yield {"data_error": str(error)}

    def _batches(self) -> Iterator[dict]:
        local_worker, local_workers = self._worker_slot()
        worker = self.rank * local_workers + local_worker
        total = self.world_size * local_workers
        epoch, skip = 0, 0
        if self.resume:
            epoch, skip = self.resume["workers"].get(str(local_worker), (0, 0))
        pending: list[dict] = []
        while self.max_epochs is None or epoch < self.max_epochs:
            shuffle_rng = random.Random(f"{self.config.seed}-shuffle-{epoch}-{worker}")
            taken = usable = 0
            for raw in self._shuffled(self._raw_stream(epoch, worker, total), shuffle_rng):
                taken += 1
                if taken <= skip:
                    continue  # produced before the checkpoint: skip without decoding
                key_seed = zlib.crc32(f"{self.config.seed}-{epoch}-{raw['__key__']}".encode())
                sample = decode_sample(raw, self.config, random.Random(key_seed), self.latent_shape)
                if sample is None:
                    continue
                usable += 1
                pending.append(sample)
                if len(pending) == self.config.batch_size:
                    batch = collate(pending)
                    batch["position"] = {"worker": local_worker, "epoch": epoch, "taken": taken}
                    pending = []
                    yield batch
            if taken == 0:
                raise ShardDataError(f"data worker {worker} of {total} got no samples from {len(self.shards)} "
                                     "shard(s): use fewer workers or more shards")
            if skip == 0 and usable == 0:  # every sample was skipped (logged why): another epoch would loop forever
                raise ShardDataError(f"data worker {worker} of {total}: none of its {taken} samples can be used "
                                     f"for this config (motion_only={self.config.motion_only}, "
                                     f"{self.config.num_frames} frames at {self.config.fps} fps); see the "
                                     "'skipping' log lines for why")
            epoch, skip = epoch + 1, 0


@dataclass
class DataPosition:
    """What one rank's trainer consumed: batch count and each worker's (epoch, samples taken)."""

    num_workers: int
    batches: int = 0
    workers: dict[str, list[int]] = field(default_factory=dict)

    def update(self, batch: dict) -> None:
        position = batch["position"]
        self.batches += 1
        self.workers[str(position["worker"])] = [int(position["epoch"]), int(position["taken"])]

    def to_dict(self) -> dict:
        return {"num_workers": self.num_workers, "batches": self.batches, "workers": dict(self.workers)}

    @classmethod
    def from_dict(cls, data: dict) -> DataPosition:
        return cls(num_workers=int(data["num_workers"]), batches=int(data["batches"]),
                   workers={k: list(v) for k, v in data["workers"].items()})


class ShardLoader:
    """The batches of a DataLoader over a `ShardDataset`; a data error in a worker process is raised here as the
    same one-line ShardDataError as without workers."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            if "data_error" in batch:
                raise ShardDataError(batch["data_error"])
            yield batch


def make_loader(config: DataConfig, rank: int = 0, world_size: int = 1, resume: dict | None = None,
                max_epochs: int | None = None, pin_memory: bool = False,
                latent_shape: tuple[int, ...] | None = None) -> tuple[ShardLoader, DataPosition]:
    """An iterable of batches for this rank (a DataLoader with `config.num_workers` processes), and the position
    tracker to update with each consumed batch. `latent_shape`: the model's (C, T_lat, H_lat, W_lat) for cached
    latents (default Wan2.1's layout)."""
    dataset = ShardDataset(config, rank, world_size, resume=resume, max_epochs=max_epochs,
                           latent_shape=latent_shape)
    loader = DataLoader(dataset, batch_size=None, num_workers=config.num_workers, pin_memory=pin_memory,
                        persistent_workers=False)
    workers = max(config.num_workers, 1)
    position = DataPosition.from_dict(resume) if resume else DataPosition(num_workers=workers)
    return ShardLoader(loader), position


def shard_folders(shards: list[str]) -> dict[str, list[str]]:
    """Shard URLs grouped by the folder that holds them (and its dataset.json)."""
    by_folder: dict[str, list[str]] = {}
    for url in shards:
        by_folder.setdefault(url.rsplit("/", 1)[0] if "/" in url else ".", []).append(url)
    return by_folder


def compute_folder_moments(urls: list[str], window_seconds: float):
    """Feature moments over all valid frames of every motion file in these shards, as `clip_moments` gives them
    clip by clip; the features are computed `_MOMENTS_FRAMES` frames or so at a time (`windowed_features`)."""
    from humove.motion.representation import FeatureMoments, windowed_features

    total, pending, frames = FeatureMoments(), [], 0
    for url in urls:
        for raw in iterate_shard(url):
            if "motion.npz" not in raw:
                continue
            try:
                pending.append(load_motion(raw["motion.npz"]))
            except ValueError as error:
                raise ShardDataError(f"shard {url}, sample {raw['__key__']!r}: {error}") from error
            frames += pending[-1].num_frames
            if frames >= _MOMENTS_FRAMES:
                total = total.merge(FeatureMoments.of(*windowed_features(pending, window_seconds)))
                pending, frames = [], 0
    if pending:
        total = total.merge(FeatureMoments.of(*windowed_features(pending, window_seconds)))
    return total


def dataset_moments(config: DataConfig, compute_missing: bool = True):
    """Exact feature moments over all valid frames of all clips of all shard folders of `config`.

    Each folder contributes the moments stored in its dataset.json (`feature_stats.moments`, written by
    `humove ingest-motion`) or, when it has none, moments computed from its shards (logged: reads every motion
    file); the folders are merged exactly. With `compute_missing=False`, returns None instead of computing.
    """
    from humove.motion.representation import FeatureMoments

    window_seconds = (config.num_frames - 1) / config.fps
    parts = []
    for folder, urls in shard_folders(list_shards(config.shards, config.splits)).items():
        stored = read_dataset_info(urls[0]).get("feature_stats") or {}
        if stored.get("moments"):
            parts.append(FeatureMoments.from_dict(stored["moments"]))
            continue
        if not compute_missing:
            return None
        log.warning("computing motion normalisation statistics from all motion of %d shard(s) in %s (no stored "
                    "feature_stats moments in its dataset.json)", len(urls), folder)
        parts.append(compute_folder_moments(urls, window_seconds))
    total = FeatureMoments.merge_all(parts)
    if total.count == 0:
        raise ShardDataError(f"no usable motion in {config.shards} to compute normalisation statistics")
    return total


def motion_stats_for(config: DataConfig):
    """Normalisation statistics of the 235 motion features over all valid frames of all shard folders
    (`dataset_moments`). A single folder whose dataset.json holds statistics in the older form (mean / std
    without moments) uses them as they are; such statistics cannot be merged with another folder's."""
    from humove.motion.representation import MotionStats

    folders = shard_folders(list_shards(config.shards, config.splits))
    if len(folders) == 1:
        stored = read_dataset_info(next(iter(folders.values()))[0]).get("feature_stats") or {}
        if stored and not stored.get("moments"):
            log.info("using the stored feature_stats (older form, without moments) of %s", next(iter(folders)))
            return MotionStats.from_dict(stored)
    return dataset_moments(config).to_stats()


def atomic_write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
