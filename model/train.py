"""Train EchoMotion on HuMoVe shards: `python -m humove.model.train CONFIG.yaml` (or through `torchrun`).

`train()` reads like facebookresearch/DiT's train.py: `setup` (ranks, model, encoders, resume, data), then one
loop of `train_step` (batch → VAE latents + text embeddings → task / noise / dropout (tasks.py) → DiT →
flow loss → backward → clip → AdamW → EMA), a `MetricWindow` per log line and a checkpoint every
`checkpoint_every` steps.

- Phase 1 (`phase: 1`): motion only. The video branch is frozen and absent from the sequence (video=None).
- Phase 2 (`phase: 2`): joint / motion→video / video→motion sampled per sample, everything trainable.
- Loss (`loss_weighting`): `per_modality` (default) sums the video and motion mean squared errors; `pooled` is
  one mean over all noised elements (the paper's eq. 8 read literally; motion is then ~0.9 % of it). See README.
- Parallelism from `parallel`: "none", "ddp" or "fsdp" (FSDP2 `fully_shard` per block), "auto" = ddp when
  launched with more than one process. bf16 autocast on GPU (fp32 master weights), fp32 on CPU.
- Resume: if the run folder holds a checkpoint, training continues exactly from the newest one that reads whole
  (a corrupt or hostile newer one is reported in one line; see checkpoint.py) and was written by the same model
  configuration; `log.jsonl` keeps one line per step (lines after the checkpoint's step are dropped, and a
  half-written last line), and only the newest `checkpoint_keep_last` checkpoints are kept.
- Guard: a step whose loss or gradient norm is not finite (on any rank) is skipped (no update; counted as
  `skipped` in the log); `max_nonfinite_steps` such steps in a row stop training with an error naming the
  samples; a checkpoint is never written with non-finite weights.
- Start-up checks: `parallel: ddp | fsdp` needs torchrun; phase 2 needs video in the samples; the log shows
  E[z²] per motion feature group under the normalisation used and warns about a group outside [0.25, 4] (phase 2
  inherits phase 1's statistics unless `recompute_motion_stats`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
import yaml

from humove.model import checkpoint as ckpt
from humove.model.data import (
    DataConfig,
    DataPosition,
    ShardLoader,
    dataset_moments,
    iterate_shard,
    list_shards,
    make_loader,
    motion_stats_for,
    pixels_to_video,
    read_dataset_info,
    shard_folders,
)
from humove.model.encoders import TextEncoder, VideoVAE, load_text_encoder, load_video_vae
from humove.model.tasks import LOSS_WEIGHTINGS, TaskConfig, TrainingInputs, build_training_inputs, flow_losses

if TYPE_CHECKING:
    from humove.motion.representation import MotionStats

log = logging.getLogger("humove.train")

Z2_RANGE = (0.25, 4.0)  # E[z²] of a motion feature group outside it: the statistics do not fit the data


class TrainingError(ValueError):
    """Training cannot start or continue; the message says why and what to do."""


@dataclass
class TrainConfig:
    """Everything a run needs; loaded from YAML (nested `data:` and `tasks:` sections)."""

    run_dir: str = "runs/echomotion"
    model: str = "tiny"  # DiTConfig preset
    model_overrides: dict = field(default_factory=dict)
    phase: int = 2
    data: DataConfig = field(default_factory=DataConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)
    vae: str | None = None  # required in phase 2: a local Wan VAE folder (diffusers format), or "standin"
    text_encoder: str | None = None  # required: a local umT5 folder, or "standin" (tests and CPU demos)
    init_wan: str | None = None  # Wan2.1 checkpoint (file or folder) for the video branch
    init_motion_from_video: bool = True  # copy the video weights into the motion branch after init_wan
    init_checkpoint: str | None = None  # start from another run's weights (phase 2 from phase 1)
    steps: int = 1000
    lr: float = 8e-6
    weight_decay: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema_decay: float | None = None
    log_every: int = 10
    checkpoint_every: int = 500
    checkpoint_keep_last: int | None = 3  # newest checkpoints kept in run_dir (None: all)
    max_nonfinite_steps: int = 10  # consecutive skipped (non-finite) steps before training stops
    seed: int = 0
    loss_weighting: str = "per_modality"  # per_modality | pooled (the paper's eq. 8 as written; see README)
    recompute_motion_stats: bool = False  # with init_checkpoint: normalise with these shards' statistics
    parallel: str = "auto"  # auto | none | ddp | fsdp
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    gradient_checkpointing: bool = False
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        if isinstance(self.tasks, dict):
            self.tasks = TaskConfig(**self.tasks)
        self.betas = tuple(self.betas)
        if self.phase not in (1, 2):
            raise ValueError(f"train config phase={self.phase}: must be 1 (motion only) or 2 (multitask)")
        if self.parallel not in ("auto", "none", "ddp", "fsdp"):
            raise ValueError(f"train config parallel={self.parallel!r}: choose auto, none, ddp or fsdp")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"train config precision={self.precision!r}: choose auto, bf16 or fp32")
        if self.checkpoint_keep_last is not None and self.checkpoint_keep_last < 1:
            raise ValueError(f"train config checkpoint_keep_last={self.checkpoint_keep_last}: keep at least 1 "
                             "(or null to keep all)")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"train config loss_weighting={self.loss_weighting!r}: choose "
                             f"{' or '.join(LOSS_WEIGHTINGS)}")
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"train config max_nonfinite_steps={self.max_nonfinite_steps}: must be >= 1")
        if self.phase == 1 and not self.data.motion_only:
            self.data.motion_only = True  # phase 1 never decodes video

    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(self))), sort_keys=False)


def load_train_config(path: str | Path, **overrides) -> TrainConfig:
    """Read a YAML config; unknown keys are an error naming them."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such training config file")
    try:
        data = yaml.safe_load(Path(path).read_bytes()) or {}
    except yaml.YAMLError as error:  # a broken or binary file: one line, not YAML's multi-line report
        raise ValueError(f"{path}: not a readable YAML config ({' '.join(str(error).split())})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(s, {}), dict) for s in ("data", "tasks")):
        raise ValueError(f"{path}: a training config is a mapping of keys (with `data:` and `tasks:` mappings)")
    for key, value in overrides.items():  # "steps=10" or "data.shards=[...]"
        section, _, name = key.rpartition(".")
        (data.setdefault(section, {}) if section else data)[name] = value
    for section, cls in (("data", DataConfig), ("tasks", TaskConfig), (None, TrainConfig)):
        values = data.get(section, {}) if section else data
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            where = f"section {section!r}" if section else "top level"
            raise ValueError(f"{path}: unknown keys {unknown} at {where}")
    try:
        config = TrainConfig(**data)
    except TypeError as error:  # a value of the wrong kind, e.g. `betas: 5`
        raise ValueError(f"{path}: {error}") from None
    if not config.text_encoder:
        raise ValueError(f"{path}: set `text_encoder` (a local umT5 folder, or 'standin' for CPU tests)")
    if config.phase == 2 and not config.vae:
        raise ValueError(f"{path}: phase 2 needs `vae` (a local Wan VAE folder, or 'standin' for CPU tests)")
    return config


# Setup --------------------------------------------------------------------------------------------------------
def setup_distributed(config: TrainConfig) -> tuple[int, int, torch.device]:
    """Start the process group under torchrun; returns (rank, world size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if config.parallel in ("ddp", "fsdp") and not launched and not dist.is_initialized():
        raise TrainingError(f"parallel: {config.parallel} needs one process per GPU started by torchrun: run "
                            f"`torchrun --nproc-per-node N -m humove.model.train CONFIG` (N = GPUs on this node), "
                            "or set parallel: none (or auto) for a single process")
    use_cuda = torch.cuda.is_available() if config.device == "auto" else config.device == "cuda"
    if (world > 1 or config.parallel in ("ddp", "fsdp")) and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def build_model(config: TrainConfig, device: torch.device) -> torch.nn.Module:
    from humove.model.config import DiTConfig
    from humove.model.dit import EchoMotionDiT

    model = EchoMotionDiT(DiTConfig.preset(config.model, **config.model_overrides))
    if config.init_checkpoint:
        ckpt.load_model_weights(model, config.init_checkpoint)
    elif config.init_wan:
        from humove.model.weights import load_wan_state_dict

        load_wan_state_dict(model, config.init_wan, strict=True, init_motion=config.init_motion_from_video)
    if config.phase == 1:
        # Frozen: the video branch, and the task MLP (phase 1 has one task, so it would only learn a constant
        # bias that phase 2 then adds to Wan's video tokens).
        for parameter in [*model.video_parameters(), *model.task_embedding.parameters()]:
            parameter.requires_grad_(False)
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing(True)
    return model.to(device)


def uses_bf16(config: TrainConfig, device: torch.device) -> bool:
    return config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")


def fsdp_mixed_precision(config: TrainConfig, device: torch.device):
    """FSDP2 policy of the transformer blocks when training in bf16 (on GPU, or `precision: bf16` anywhere); None
    (all fp32) otherwise.

    - Block parameters are gathered in bf16 (half the all-gather traffic and memory) and gradients reduced in
      fp32; the sharded master weights and the optimiser stay fp32.
    - `cast_forward_inputs=False`: FSDP2 would otherwise cast every floating input of a block to bf16, rounding
      the fp32 residual stream and modulation at each block (RoPE is complex and never cast). The blocks cast to
      their weights' dtype before each matmul, so they see exactly what they see without FSDP.
    The root module (embeddings, time MLPs, heads: ~2% of the parameters) is sharded without this policy, in fp32
    (see `wrap_parallel`): timesteps and the time embedding are computed in fp32 as the sampler computes them.
    """
    if not uses_bf16(config, device):
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)


def wrap_parallel(model: torch.nn.Module, config: TrainConfig, world: int, device: torch.device):
    mode = config.parallel if config.parallel != "auto" else ("ddp" if world > 1 else "none")
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids), mode
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        policy = fsdp_mixed_precision(config, device)
        options = {"mp_policy": policy} if policy is not None else {}
        block_names = set(getattr(model, "no_split_modules", ()))
        for module in model.modules():
            if type(module).__name__ in block_names:
                fully_shard(module, **options)
        fully_shard(model)  # root: fp32 parameters, inputs (timesteps, latents, motion) passed on as they are
        return model, mode
    return model, mode


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def seed_rank(seed: int, rank: int) -> torch.Generator:
    """Seed Python, NumPy and torch for this rank; returns the generator of the task / noise / dropout draws."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)
    return torch.Generator().manual_seed(seed * 1000 + rank)


class EMA:
    """Exponential moving average of the trainable parameters (kept in fp32, same sharding as the model)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = {n: p for n, p in unwrap(model).named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().clone().float() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, param in self.params.items():
            self.shadow[name].lerp_(param.detach().float(), 1 - self.decay)


def check_same_model(config: TrainConfig, dit_config, resume: ckpt.Checkpoint | None) -> None:
    """The model configuration of the checkpoint a run continues must be this config's (a resumed run changing
    e.g. its RoPE time scale would silently train another network): an error on resume, a warning when starting
    from another run's weights (`init_checkpoint`), both naming the fields that differ."""
    from humove.model.config import DiTConfig

    source = resume.path if resume is not None else \
        ckpt.resolve_checkpoint(config.init_checkpoint) if config.init_checkpoint else None
    if source is None:
        return
    saved = resume.model_config if resume is not None else \
        ckpt.read_checkpoint_json(source, "model_config.json", DiTConfig.from_dict)
    ours, theirs = dit_config.to_dict(), saved.to_dict()
    changed = {name: (theirs[name], ours[name]) for name in ours if ours[name] != theirs[name]}
    if not changed:
        return
    listed = ", ".join(f"{name} {old} → {new}" for name, (old, new) in changed.items())
    keep = "model_overrides: {" + ", ".join(f"{name}: {old}" for name, (old, _) in changed.items()) + "}"
    if resume is not None:
        raise TrainingError(f"{source} was trained with another model configuration ({listed}): to continue it, "
                            f"set {keep}; to train the new configuration, use another run_dir")
    log.warning("init_checkpoint %s was trained with another model configuration (%s); this run uses the new "
                "values (to keep the old ones: %s)", source, listed, keep)


def load_motion_stats(config: TrainConfig, resume: ckpt.Checkpoint | None):
    """The motion normalisation a run keeps for its whole life: from the checkpoint it resumes, else from the
    checkpoint it starts from (phase 2 keeps phase 1's) unless `recompute_motion_stats`, else from all valid frames
    of the shards (stored per-folder moments merged, or computed). Logs E[z²] per feature group of the data under
    it, and warns about groups outside Z2_RANGE."""
    from humove.motion.representation import MotionStats

    if resume is not None:
        stats, origin = resume.motion_stats, f"from {resume.path}"
        remedy = "a run keeps its normalisation; to take this data's, start a new run (another run_dir) from it " \
                 "with init_checkpoint and recompute_motion_stats: true"
    elif config.init_checkpoint and not config.recompute_motion_stats:
        source = ckpt.resolve_checkpoint(config.init_checkpoint)
        stats = ckpt.read_checkpoint_json(source, "motion_stats.json", MotionStats.from_dict)
        origin = f"from {source}"
        remedy = "set `recompute_motion_stats: true` to normalise this run with these shards' own statistics " \
                 "(the motion branch then sees inputs scaled unlike in the run it starts from)"
    else:
        stats = motion_stats_for(config.data)
        check_normalisation(stats, stats.moments, "from the shards", remedy=None)  # ≈ 1 by construction
        return stats
    moments = dataset_moments(config.data, compute_missing=False)  # only when stored: no pass over the data
    check_normalisation(stats, moments, origin, remedy)
    return stats


def check_normalisation(stats, moments, origin: str, remedy: str | None) -> None:
    """Log E[z²] per feature group of the data (`moments`) normalised with `stats`. With a `remedy` (statistics
    from another run), warn about the groups outside Z2_RANGE, naming them: they reach the network far from unit
    scale. A group constant in the data (one body shape: β) is not "too narrow"."""
    from humove.motion.representation import FEATURE_GROUPS, normalised_second_moments

    if moments is None:
        log.info("motion normalisation %s (%d frames); E[z²] of this data not measured (its shard folders store no "
                 "feature_stats moments)", origin, stats.count)
        return
    z2 = normalised_second_moments(stats, moments)
    log.info("motion normalisation %s (%d frames): E[z²] over %d valid frames: %s", origin, stats.count,
             moments.count, " ".join(f"{name} {value:.3f}" for name, value in z2.items()))
    low, high = Z2_RANGE
    constant = {name for name, group in FEATURE_GROUPS.items()
                if (moments.variance[group] < stats.MIN_STD ** 2).all()}
    outside = {name: value for name, value in z2.items() if value > high or (value < low and name not in constant)}
    if outside and remedy:
        log.warning("motion normalisation %s does not fit this data: E[z²] of %s outside [%g, %g]; %s", origin,
                    ", ".join(f"{name} {value:.2f}" for name, value in outside.items()), low, high, remedy)


def check_data_feeds_phase(config: TrainConfig) -> None:
    """Each shard folder must hold what the phase trains on: samples with motion (its dataset.json's counts of the
    configured splits) and, in phase 2, video (an .mp4, or cached latents when `use_cached`, in its first sample).
    A folder without is an error when no folder has it (the loader would skip every sample) and a warning
    otherwise (its samples are skipped)."""
    folders = shard_folders(list_shards(config.data.shards, config.data.splits))
    video_keys = ("mp4", "latents.npy") if config.data.use_cached else ("mp4",)
    missing: dict[str, str] = {}
    for folder, urls in folders.items():
        counts = read_dataset_info(urls[0]).get("splits") or {}
        with_motion = [counts[s]["with_motion"] for s in config.data.splits if "with_motion" in counts.get(s, {})]
        if with_motion and sum(with_motion) == 0:
            missing[folder] = f"none of its {config.data.splits} samples has a motion file"
            continue
        samples = iterate_shard(urls[0])
        first = next(samples, None)
        samples.close()
        if first is None:
            missing[folder] = f"its first shard {urls[0]} is empty"
        elif config.phase == 2 and not any(k in first for k in video_keys):
            members = sorted(k for k in first if not k.startswith("__"))
            missing[folder] = (f"sample {first['__key__']!r} has no video (members {members}): motion-only shards "
                               "feed phase 1 only")
    if len(missing) == len(folders):
        need = "motion and video (.mp4 or cached .latents.npy)" if config.phase == 2 else "motion"
        raise TrainingError(f"data {config.data.shards} cannot feed phase {config.phase}, which needs {need} in its "
                            "samples: " + "; ".join(f"{folder}: {why}" for folder, why in missing.items()))
    for folder, why in missing.items():
        log.warning("shard folder %s: %s; its samples will be skipped in phase %d", folder, why, config.phase)


def _log_step(line: str) -> int | None:
    """The step of one log.jsonl line; None for a line that is not a whole JSON object with a step (a run killed
    while writing it)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if type(step) is int else None


def truncate_log(path: Path, last_step: int) -> None:
    """Keep the lines of log.jsonl up to `last_step` (a resumed run rewrites the steps after its checkpoint); a
    line that is not whole (the last one, when a run was killed while writing it) is dropped with a log line, so
    that the lines appended next start on a line of their own."""
    if not path.exists():
        return
    raw = path.read_bytes()
    lines = [line for line in raw.decode(errors="replace").splitlines() if line.strip()]
    steps = [_log_step(line) for line in lines]
    kept = [line for line, step in zip(lines, steps, strict=True) if step is not None and step <= last_step]
    broken = steps.count(None)
    if broken:
        log.warning("%s: dropped %d line(s) that are not whole JSON records (a run stopped while writing them)",
                    path, broken)
    if len(kept) != len(lines) or not raw.endswith(b"\n"):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)
        if len(lines) - len(kept) > broken:
            log.info("%s: dropped %d lines after step %d (steps that are trained again)", path,
                     len(lines) - len(kept) - broken, last_step)


@dataclass
class TrainState:
    """Where training stands; saved with every checkpoint (state.json) and read back on resume."""

    step: int = 0
    skipped_total: int = 0  # steps skipped for a non-finite loss or gradient since the run began


def resume_state(resume: ckpt.Checkpoint | None, model, optimizer, generator: torch.Generator, ema: EMA | None,
                 config: TrainConfig) -> tuple[TrainState, dict | None, EMA | None]:
    """Apply the checkpoint to resume (weights, optimiser, EMA, RNG); returns the state it holds, this rank's data
    position (None: from the start) and the EMA (restarted from the resumed weights if the checkpoint has none)."""
    if resume is None:
        return TrainState(), None, ema
    saved = ckpt.apply_checkpoint(resume, model, optimizer, generator, ema.shadow if ema else None)
    if ema is not None and not saved["ema_loaded"]:
        log.warning("checkpoint %s has no EMA weights: EMA starts from the resumed weights", resume.path)
        ema = EMA(model, config.ema_decay)
    log.info("resumed from %s at step %d", resume.path, saved["step"])
    return TrainState(saved["step"], saved.get("skipped_total", 0)), saved["data_position"], ema


@dataclass
class Run:
    """Everything the training loop works with, built once by `setup`."""

    config: TrainConfig
    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module  # wrapped for DDP / FSDP when parallel
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    generator: torch.Generator  # task / noise / dropout draws (CPU, per rank)
    vae: VideoVAE | None  # None in phase 1
    text_encoder: TextEncoder
    stats: MotionStats  # the motion normalisation of the whole run
    loader: ShardLoader
    position: DataPosition  # this rank's, saved with every checkpoint
    state: TrainState
    files: dict[str, str]  # written into every checkpoint
    extra_state: dict  # recorded in every checkpoint's state.json

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_dir)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=uses_bf16(self.config, self.device))


def setup(config: TrainConfig) -> Run:
    """Start-up, in an order that keeps runs reproducible: ranks, the model (the same initial weights on every
    rank: FSDP shards each rank's copy without a broadcast), per-rank RNG, encoders, the checkpoint to resume and
    its checks, motion statistics, parallel wrapping, optimiser and EMA, the resumed state, the data."""
    rank, world, device = setup_distributed(config)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    check_data_feeds_phase(config)
    if rank == 0:
        Path(config.run_dir).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    model = build_model(config, device)
    generator = seed_rank(config.seed, rank)
    dit_config = model.config
    vae = load_video_vae(config.vae, device, dit_config.in_channels, dit_config.vae_stride) \
        if config.phase == 2 else None
    text_encoder = load_text_encoder(config.text_encoder, dit_config.text_dim, dit_config.text_len, device)
    log.info("encoders: vae=%s text=%s (stand-ins are not learned models)",
             vae.backend if vae else "none (phase 1)", text_encoder.backend)
    resume = ckpt.find_resume_checkpoint(config.run_dir, with_ema=bool(config.ema_decay))  # checked, not applied
    check_same_model(config, dit_config, resume)
    stats = load_motion_stats(config, resume)
    model, mode = wrap_parallel(model, config, world, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay, betas=config.betas)
    ema = EMA(model, config.ema_decay) if config.ema_decay else None
    state, data_position, ema = resume_state(resume, model, optimizer, generator, ema, config)
    if rank == 0:
        truncate_log(Path(config.run_dir) / "log.jsonl", state.step)
    latent_shape = dit_config.latent_shape(config.data.num_frames, config.data.height, config.data.width) \
        if config.phase == 2 else None
    loader, position = make_loader(config.data, rank, world, resume=data_position,
                                   pin_memory=device.type == "cuda", latent_shape=latent_shape)
    files = {"train.yaml": config.to_yaml(), "model_config.json": json.dumps(dit_config.to_dict(), indent=2),
             "motion_stats.json": json.dumps(stats.to_dict())}
    extra_state = {"vae": vae.backend if vae else None, "text_encoder": text_encoder.backend, "parallel": mode}
    log.info("training phase %d, %s, %d ranks, %d trainable parameters, from step %d", config.phase, mode, world,
             sum(p.numel() for p in trainable), state.step)
    return Run(config, rank, world, device, model, trainable, optimizer, ema, generator, vae, text_encoder, stats,
               loader, position, state, files, extra_state)


# One step -----------------------------------------------------------------------------------------------------
@dataclass
class StepResult:
    """What one step reports (this rank's values)."""

    finite: bool  # loss and gradient norm finite on every rank: the step was applied
    loss: float
    grad_norm: float
    video_loss: float | None  # None when no sample of the step had its video noised
    motion_loss: float | None
    samples: int
    tokens: int  # sequence length of the step, summed over the batch


def training_inputs(run: Run, batch: dict) -> TrainingInputs:
    """The batch encoded (VAE latents, or cached ones; text embeddings), its motion normalised, and the task /
    noise / dropout draws of tasks.py."""
    device = run.device
    motion = run.stats.normalize(batch["motion"].to(device))
    with torch.no_grad():
        context = batch["text"].to(device) if "text" in batch else run.text_encoder.encode(batch["captions"])
        video = None
        if run.config.phase == 2:
            video = batch["latents"].to(device) if "latents" in batch \
                else run.vae.encode(pixels_to_video(batch["video"].to(device)))
    return build_training_inputs(run.config.tasks, video, motion, context.to(device), batch["motion_valid"],
                                 run.generator)


def train_step(run: Run, batch: dict) -> StepResult:
    """Forward, loss, backward and clipping on one batch; AdamW and EMA only when the loss and the gradient norm
    are finite on every rank (otherwise the batch is consumed without an update)."""
    inputs = training_inputs(run, batch)
    with run.autocast():
        video_pred, motion_pred = run.model(inputs.video, inputs.motion, inputs.t_video, inputs.t_motion,
                                            inputs.context, inputs.task)
    losses = flow_losses(inputs, video_pred, motion_pred, run.config.loss_weighting)
    run.optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()  # on every rank even when not finite: DDP / FSDP reduce gradients collectively
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.trainable, run.config.grad_clip))
    loss = losses["loss"].item()
    trained = {name: losses[name].item() for name, mask in (("video", inputs.video_loss_mask),
                                                             ("motion", inputs.motion_loss_mask))
               if mask is not None and bool(mask.any())}  # each modality averaged over the steps that trained it
    result = StepResult(all_ranks_finite(loss, grad_norm), loss, grad_norm, trained.get("video"),
                        trained.get("motion"), inputs.motion.shape[0], token_count(inputs, unwrap(run.model).config))
    if not result.finite:
        run.optimizer.zero_grad(set_to_none=True)
        return result
    run.optimizer.step()
    if run.ema is not None:
        run.ema.update()
    return result


def all_ranks_finite(*values: float) -> bool:
    """True when every value is finite on every rank (so that all ranks skip a step together)."""
    flag = torch.tensor([1.0 if all(math.isfinite(v) for v in values) else 0.0])
    if dist.is_initialized():
        flag = flag.to("cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() == 1.0)


def token_count(inputs: TrainingInputs, dit_config) -> int:
    """Sequence length of this step: video patches + 51 tokens per motion frame, summed over the batch."""
    total = 0
    if inputs.video is not None:
        b, _, t, h, w = inputs.video.shape
        pt, ph, pw = dit_config.patch_size
        total += b * (t // pt) * (h // ph) * (w // pw)
    if inputs.motion is not None:
        total += inputs.motion.shape[0] * inputs.motion.shape[1] * 51
    return total


@dataclass
class NonFiniteGuard:
    """Steps skipped in a row for a non-finite loss or gradient: `max_in_row` of them stop training."""

    max_in_row: int
    skipped_keys: list[list[str]] = field(default_factory=list)  # the samples of each step skipped in a row

    def skip(self, step: int, result: StepResult, keys: list[str]) -> None:
        self.skipped_keys.append(keys)
        log.warning("step %d: loss %s, gradient norm %s (this rank) not finite: batch skipped (samples %s)",
                    step, result.loss, result.grad_norm, keys)
        if len(self.skipped_keys) >= self.max_in_row:
            raise TrainingError(
                f"{len(self.skipped_keys)} batches in a row had a non-finite loss or gradient at step {step} "
                f"(max_nonfinite_steps={self.max_in_row}); their samples: {self.skipped_keys}. Check these "
                "samples' motion (e.g. huge values) and the normalisation statistics; the last checkpoint "
                "holds finite weights")

    def passed(self) -> None:
        self.skipped_keys.clear()


def gather_keys(keys: list[str]) -> list[str]:
    """The sample keys of this step's batches on all ranks."""
    if not dist.is_initialized():
        return list(keys)
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, list(keys))
    return [key for rank_keys in everyone for key in rank_keys]


# Logging and checkpoints --------------------------------------------------------------------------------------
@dataclass
class MetricWindow:
    """This rank's sums over the steps since the last log line; `record` makes them one log.jsonl record."""

    steps: int = 0
    loss: float = 0.0
    video_loss: float = 0.0
    video_steps: int = 0  # steps that trained video (its mean is over these)
    motion_loss: float = 0.0
    motion_steps: int = 0
    skipped: int = 0  # steps skipped as not finite
    samples: int = 0
    tokens: int = 0
    data_wait_s: float = 0.0
    start: float = field(default_factory=time.perf_counter)

    def next_batch(self, batches: Iterator[dict]) -> dict:
        """The next batch, its wait counted as data time."""
        start = time.perf_counter()
        batch = next(batches)
        self.data_wait_s += time.perf_counter() - start
        return batch

    def add(self, result: StepResult) -> None:
        self.steps += 1
        self.loss += result.loss
        if result.video_loss is not None:
            self.video_loss += result.video_loss
            self.video_steps += 1
        if result.motion_loss is not None:
            self.motion_loss += result.motion_loss
            self.motion_steps += 1
        self.samples += result.samples
        self.tokens += result.tokens

    def record(self, run: Run, last: StepResult) -> dict:
        """Losses averaged over every rank's steps, throughput of all ranks, this rank's last step."""
        elapsed = time.perf_counter() - self.start
        loss, steps, video, video_steps, motion, motion_steps = reduce_over_ranks(
            self.loss, self.steps, self.video_loss, self.video_steps, self.motion_loss, self.motion_steps)
        return {
            "step": run.state.step, "loss": loss / steps, "loss_video": video / max(video_steps, 1),
            "loss_motion": motion / max(motion_steps, 1), "grad_norm": last.grad_norm,
            "lr": run.optimizer.param_groups[0]["lr"], "samples_per_s": self.samples * run.world / elapsed,
            "tokens_per_s": self.tokens * run.world / elapsed, "data_wait": self.data_wait_s / elapsed,
            "last_loss": last.loss,  # this rank's, for exact comparisons
            "skipped": self.skipped, "skipped_total": run.state.skipped_total,  # non-finite steps
        }


def reduce_over_ranks(*values: float) -> list[float]:
    """Sums over all ranks (the losses logged are means over every rank's samples)."""
    summed = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized():
        summed = summed.to("cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(summed)
    return summed.cpu().tolist()


def log_metrics(run: Run, metrics: dict) -> None:
    """One log line and one log.jsonl record (rank 0)."""
    if run.rank != 0:
        return
    log.info("step %(step)d loss %(loss).4f video %(loss_video).4f motion %(loss_motion).4f grad %(grad_norm).3f "
             "%(samples_per_s).2f samples/s %(tokens_per_s).0f tokens/s data wait %(data_wait).0f%%",
             {**metrics, "data_wait": 100 * metrics["data_wait"]})
    with open(run.run_dir / "log.jsonl", "a") as handle:
        handle.write(json.dumps(metrics) + "\n")


def due(step: int, every: int, last: int) -> bool:
    """Whether something done every `every` steps (and at the last step) is due at `step`."""
    return step % every == 0 or step == last


def save_checkpoint(run: Run) -> None:
    ckpt.save_checkpoint(run.run_dir, run.state.step, run.model, run.optimizer, run.generator,
                         run.position.to_dict(), run.files, ema=run.ema.shadow if run.ema else None,
                         extra_state={**run.extra_state, "skipped_total": run.state.skipped_total},
                         keep_last=run.config.checkpoint_keep_last)


# Training -----------------------------------------------------------------------------------------------------
def train(config: TrainConfig) -> dict:
    """Run training to `config.steps`; returns the last logged metrics (for tests and scripts)."""
    run = setup(config)
    state, guard, window = run.state, NonFiniteGuard(config.max_nonfinite_steps), MetricWindow()
    metrics: dict = {}
    batches = iter(run.loader)
    run.model.train()
    while state.step < config.steps:
        batch = window.next_batch(batches)
        run.position.update(batch)
        result = train_step(run, batch)
        if not result.finite:
            state.skipped_total += 1
            window.skipped += 1
            guard.skip(state.step + 1, result, gather_keys(batch["keys"]))  # raises after too many in a row
            continue
        guard.passed()
        state.step += 1
        window.add(result)
        if due(state.step, config.log_every, config.steps):
            metrics = window.record(run, result)
            log_metrics(run, metrics)
            window = MetricWindow()
        if due(state.step, config.checkpoint_every, config.steps):
            save_checkpoint(run)
    if dist.is_initialized():
        dist.barrier()
    return metrics


def parse_overrides(items: list[str]) -> dict:
    """KEY=VALUE items (VALUE in YAML) → {key: value}; ValueError naming an item that is not one, or a key given
    twice (which value would win is a guess better not made)."""
    overrides: dict = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise ValueError(f"override {item!r} is not KEY=VALUE")
        if key in overrides:
            raise ValueError(f"override {key!r} is given twice ({key}={overrides[key]!r} and {item})")
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise ValueError(f"override {item!r}: the value is not YAML ({' '.join(str(error).split())})") from None
    return overrides


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """`python -m humove.model.train CONFIG [--set KEY=VALUE ...]`, and `humove train` (the same arguments)."""
    parser = argparse.ArgumentParser(prog=prog, description="Train EchoMotion on HuMoVe shards (one process; "
                                     "torchrun for several GPUs). Configs: model/configs/.")
    parser.add_argument("config", help="training config YAML")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config keys with YAML values, several per --set (and --set repeatable): "
                             "steps=10 data.shards=[shards/a] (data.KEY / tasks.KEY for the sections)")
    args = parser.parse_args(argv)
    try:
        train(load_train_config(args.config, **parse_overrides(args.set)))
    except (ValueError, FileNotFoundError) as error:  # a clear message, not a traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
